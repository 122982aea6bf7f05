"""Tissue detection (paper section 2.2) and the Otsu baseline (design I).

The paper's method: take the ×1.25 plane (8 µm/px: a 1.25× objective
equivalent), convert RGB to HSV, threshold the saturation channel at 20 on
OpenCV's **0–255** uint8 scale, then close with a 5×5 and a 3×3 kernel.
The scale is pinned here by always converting uint8 images; the authors'
reference code rescales uint8 saturation as if it were 0–1, which wraps.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from h2gnet.conventions import LOW_MPP
from h2gnet.errors import H2GNetError
from h2gnet.io.raster import Raster
from h2gnet.io.slides import Slide

#: The paper's "×1.25" plane in µm/px (10 µm/px objective-equivalent scale: 10 / 1.25).
#: Saturation threshold on the 0–255 scale.
SATURATION_THRESHOLD = 20
#: Morphological closings, kernel sides in pixels of the tissue plane.
CLOSING_KERNELS = (5, 3)
#: Side of the square image Otsu's baseline thresholds (design I).
OTSU_SIZE = 1024


@dataclass(frozen=True)
class TissueConfig:
    """Parameters of :func:`detect_tissue` (defaults: the paper's)."""

    mpp: float = LOW_MPP
    threshold: int = SATURATION_THRESHOLD
    closings: tuple[int, ...] = CLOSING_KERNELS


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an RGB image on the 0–255 scale (uint8).

    Float images must be in [0, 1]; they are converted to uint8 first so the
    scale never depends on the input dtype.
    """
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.asarray(rgb, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[..., 1]


def tissue_from_rgb(rgb: np.ndarray, config: TissueConfig = TissueConfig()) -> np.ndarray:
    """Boolean tissue mask of an RGB image already at the tissue plane."""
    mask: np.ndarray = (saturation(rgb) > config.threshold).astype(np.uint8)
    for side in config.closings:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((side, side), np.uint8))
    return mask.astype(bool)


def detect_tissue(slide: Slide, config: TissueConfig = TissueConfig(), *, require: bool = True) -> Raster:
    """Tissue mask of ``slide`` at ``config.mpp`` µm/px (the paper's ×1.25 plane).

    Raises :class:`H2GNetError` naming the slide when no tissue is found and
    ``require`` is true, so nothing downstream silently runs on zero patches.
    """
    rgb = slide.read_whole(config.mpp)
    mask = tissue_from_rgb(rgb, config)
    if require and not mask.any():
        raise H2GNetError(
            slide.path,
            f"no tissue found: no pixel at {config.mpp} µm/px has HSV saturation > {config.threshold} "
            "(blank slide, greyscale image, or a very faint stain?)",
        )
    return Raster(mask, config.mpp, slide.mpp)


#: FAST reads a pyramid level as one image only up to this many pixels per side (``getLevelAsImage``).
FAST_MAX_LEVEL_SIDE = 16384


def _disk(size: int) -> np.ndarray:
    """FAST's morphology element for a kernel ``size``: the pixels within radius ``size // 2`` (Euclidean)."""
    r = size // 2
    ys, xs = np.mgrid[-r:r + 1, -r:r + 1]
    return (xs * xs + ys * ys <= r * r).astype(np.uint8)


def rgb_distance_tissue(rgb: np.ndarray, threshold: float, dilation: int, erosion: int) -> np.ndarray:
    """FAST's colour-threshold tissue rule on an RGB uint8 image: Euclidean distance from white
    (255, 255, 255) > ``threshold`` (0–255 scale), black (0, 0, 0: an empty scan area) excluded, then a
    dilation and an erosion with discs of radius ``dilation // 2`` / ``erosion // 2`` px (sizes ≤ 1: none).

    As FAST's ``TissueSegmentation`` kernels do it: the dilation sees nothing beyond the image's edge, the
    erosion repeats the edge pixels (pyFAST 4.18 gave the same mask to the pixel on two slides).
    """
    diff = 255.0 - rgb.astype(np.float32)
    mask = (np.sqrt((diff * diff).sum(axis=2)) > threshold) & rgb.any(axis=2)
    out = mask.astype(np.uint8)
    if dilation > 1:
        out = cv2.dilate(out, _disk(dilation), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if erosion > 1:
        out = cv2.erode(out, _disk(erosion), borderType=cv2.BORDER_REPLICATE)
    return out.astype(bool)


def detect_tissue_rgb_distance(slide: Slide, threshold: float, dilation: int, erosion: int,
                               max_mpp: float | None = None, *, require: bool = True) -> Raster:
    """FAST's tissue detection: :func:`rgb_distance_tissue` on the slide's smallest pyramid level
    (at that level's µm/px); :class:`H2GNetError` naming the slide when nothing is tissue and ``require``.

    ``max_mpp``: the coarsest useful µm/px. Some pyramids go down to a few pixels (DICOM: 1×1), where
    FAST's rule would see no tissue; the smallest level not coarser than ``max_mpp`` is used then
    (read at ``max_mpp`` when no level is that fine, or when the level chosen is larger than FAST itself
    reads, :data:`FAST_MAX_LEVEL_SIDE`).
    """
    usable = [lv for lv in slide.levels if max_mpp is None or slide.mpp * lv.downsample <= max_mpp]
    mpp = slide.mpp * usable[-1].downsample if usable else float(max_mpp or slide.mpp)
    if usable and max_mpp is not None and max(usable[-1].dimensions) > FAST_MAX_LEVEL_SIDE:
        mpp = float(max_mpp)
    mask = rgb_distance_tissue(slide.read_whole(mpp), threshold, dilation, erosion)
    if require and not mask.any():
        raise H2GNetError(slide.path, f"no tissue found: no pixel of the smallest level is further than {threshold:g} "
                                      "from white (blank slide?)")
    return Raster(mask, mpp, slide.mpp)


def otsu_tissue(slide: Slide, size: int = OTSU_SIZE, *, require: bool = True) -> Raster:
    """Design I baseline: whole slide resized to ``size``×``size``, Otsu on HSV saturation.

    The thumbnail is read at the resolution whose longer side is ``size`` px;
    the mask is mapped back to that thumbnail's (aspect-preserving) grid.
    A blank slide (no saturation contrast: Otsu has nothing to split, or
    nothing above the paper's threshold) raises :class:`H2GNetError` when
    ``require``, as :func:`detect_tissue` does.
    """
    mpp = max(slide.dimensions) * slide.mpp / size
    thumb = slide.read_whole(mpp)
    square = cv2.resize(thumb, (size, size), interpolation=cv2.INTER_AREA)
    sat = saturation(square)
    if require and int(sat.max()) <= SATURATION_THRESHOLD:
        raise H2GNetError(slide.path, f"no tissue found: no pixel has HSV saturation > {SATURATION_THRESHOLD} "
                                      "(blank slide, greyscale image, or a very faint stain?)")
    _, binary = cv2.threshold(sat, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    back = cv2.resize(binary, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_NEAREST)
    return Raster(back.astype(bool), mpp, slide.mpp)


def tissue_area_mm2(mask: Raster) -> float:
    """Area of a boolean mask in mm²."""
    return float(np.count_nonzero(mask.array)) * (mask.mpp * 1e-3) ** 2
