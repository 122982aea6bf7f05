"""A whole-slide raster: a 2-D array aligned with the slide's level-0 frame.

Every low-resolution picture of a slide in h2gnet (tissue mask, annotation mask,
heatmap, segmentation) is a :class:`Raster`: pixel ``(row, col)`` covers the
level-0 box ``[col * d, (col + 1) * d) x [row * d, (row + 1) * d)`` where
``d = mpp / slide_mpp`` is the raster's downsample relative to level 0.
The origin is always the slide's level-0 origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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

    def to_mpp(self, mpp: float, extent_l0: tuple[int, int], interpolation: int | None = None) -> Raster:
        """Resample to ``mpp`` µm/px covering a slide of ``extent_l0`` = (width, height) level-0 px.

        Area averaging when downsampling, bilinear when upsampling (or the given
        OpenCV ``interpolation``); boolean masks are interpolated as 0/1 and
        thresholded at 0.5.
        """
        w0, h0 = extent_l0
        d = mpp / self.slide_mpp
        shape = (max(1, round(h0 / d)), max(1, round(w0 / d)))
        is_bool = self.array.dtype == bool
        if interpolation is None:
            interpolation = cv2.INTER_AREA if mpp >= self.mpp else cv2.INTER_LINEAR
        src = self.array.astype(np.float32) if is_bool or self.array.dtype == np.uint8 else self.array
        out: np.ndarray = cv2.resize(src, (shape[1], shape[0]), interpolation=interpolation)
        if is_bool:
            out = out > 0.5
        return Raster(out, mpp, self.slide_mpp)
