"""A whole-slide raster: a 2-D array aligned with the slide's level-0 frame.

Every low-resolution picture of a slide in h2gnet (tissue mask, annotation mask,
heatmap, segmentation) is a :class:`Raster`: pixel ``(row, col)`` covers the
level-0 box ``[col * d, (col + 1) * d) x [row * d, (row + 1) * d)`` where
``d = mpp / slide_mpp`` is the raster's downsample relative to level 0.
The origin is always the slide's level-0 origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.io.canvas import check_canvas

#: Extent mismatch tolerated between a raster and its slide: pixels, plus a fraction of the side.
EXTENT_SLACK_PX = 2
EXTENT_SLACK = 0.005


@dataclass(frozen=True)
class Raster:
    """``array`` (rows x cols) at ``mpp`` µm per pixel, level-0 origin.

    ``slide_mpp`` is the level-0 µm/px of the slide it belongs to, so the
    raster can be mapped to level-0 pixels without the slide at hand.
    """

    array: np.ndarray
    mpp: float
    slide_mpp: float

    @property
    def downsample(self) -> float:
        """Level-0 pixels per raster pixel."""
        return self.mpp / self.slide_mpp

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the array, in pixels at ``mpp``."""
        return int(self.array.shape[0]), int(self.array.shape[1])

    def check_extent(self, extent_l0: tuple[int, int], path: str | Path | None = None) -> None:
        """Raise :class:`H2GNetError` (naming ``path`` when given) unless this raster covers a slide of
        ``extent_l0`` = (width, height) level-0 px: a raster of another slide is never stretched to fit.

        Tolerance: 2 raster pixels plus 0.5 % per side (rounding of sizes and of µm/px tags).
        """
        d = self.downsample
        want_rows, want_cols = extent_l0[1] / d, extent_l0[0] / d
        rows, cols = self.shape
        if (abs(rows - want_rows) > EXTENT_SLACK_PX + EXTENT_SLACK * want_rows
                or abs(cols - want_cols) > EXTENT_SLACK_PX + EXTENT_SLACK * want_cols):
            raise H2GNetError(path, f"a {cols}×{rows} px raster at {self.mpp:g} µm/px covers "
                                    f"{cols * d:.0f}×{rows * d:.0f} level-0 px, but the slide is "
                                    f"{extent_l0[0]}×{extent_l0[1]}: it belongs to another slide")

    def to_mpp(self, mpp: float, extent_l0: tuple[int, int], interpolation: int | None = None) -> Raster:
        """Resample to ``mpp`` µm/px covering a slide of ``extent_l0`` = (width, height) level-0 px.

        Area averaging when downsampling, bilinear when upsampling (or the given
        OpenCV ``interpolation``); boolean masks are interpolated as 0/1 and
        thresholded at 0.5.
        """
        w0, h0 = extent_l0
        self.check_extent(extent_l0)
        d = mpp / self.slide_mpp
        shape = (max(1, round(h0 / d)), max(1, round(w0 / d)))
        check_canvas(shape, 4, None, f"a raster resampled to {mpp:g} µm/px")
        is_bool = self.array.dtype == bool
        if interpolation is None:
            interpolation = cv2.INTER_AREA if mpp >= self.mpp else cv2.INTER_LINEAR
        src = self.array.astype(np.float32) if is_bool or self.array.dtype == np.uint8 else self.array
        out: np.ndarray = cv2.resize(src, (shape[1], shape[0]), interpolation=interpolation)
        if is_bool:
            out = out > 0.5
        return Raster(out, mpp, self.slide_mpp)
