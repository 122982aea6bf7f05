"""Stage-2 input and inference: low-resolution slide + heatmap → refined segmentation (section 2.5).

The low-resolution image is the slide's smallest pyramid level of at least
``size``×``size`` px (paper: 1024), read at most ``MAX_OVERSAMPLE``× ``size``
per side (area resampling) and kept as uint8 so memory does not grow with the
slide; it and the heatmap are resized to ``size``×``size`` bilinearly,
normalised to [0, 1] and stacked as 4 channels (RGB + heatmap). The network's tumour probability is resized back to the
low-resolution image's grid (aspect preserved) and thresholded at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.infer.runtime import OnnxModel, check_probabilities
from h2gnet.io.raster import Raster
from h2gnet.io.slides import Slide

REFINE_SIZE = 1024
#: The low-resolution image is read at most this many times larger than ``size`` per side:
#: bilinear resizing from 2× already sees every pixel, and a cap keeps memory flat for big slides.
MAX_OVERSAMPLE = 2


@dataclass(frozen=True)
class LowRes:
    """The slide at low resolution: RGB uint8 on a grid of ``mpp`` µm/px."""

    image: np.ndarray
    mpp: float
    slide_mpp: float


def low_resolution(slide: Slide, size: int = REFINE_SIZE) -> LowRes:
    """The smallest pyramid level with both sides ≥ ``size`` px, read at no more than
    :data:`MAX_OVERSAMPLE`×``size`` px on the long side, as uint8 RGB."""
    level = slide.smallest_level_at_least(size)
    cap_mpp = max(slide.extent_um()) / (MAX_OVERSAMPLE * size)
    mpp = max(level.mpp, cap_mpp)
    return LowRes(slide.read_whole(mpp), mpp, slide.mpp)


def network_input(low: LowRes, heatmap: Raster | None, size: int = REFINE_SIZE) -> np.ndarray:
    """(C, size, size) float32: RGB, plus the heatmap channel when given (C = 4, else 3 for UNet-LR)."""
    img = cv2.resize(low.image.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR) / np.float32(255)
    channels: list[np.ndarray] = [img.transpose(2, 0, 1)]
    if heatmap is not None:
        heat = cv2.resize(heatmap.array.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        channels.append(heat[None])
    return np.concatenate(channels, axis=0).astype(np.float32)


def target_mask(low: LowRes, truth: Raster, size: int = REFINE_SIZE) -> np.ndarray:
    """Ground truth resized to the network's ``size``×``size`` grid (uint8 0/1, nearest)."""
    rows, cols = low.image.shape[:2]
    on_grid = cv2.resize(truth.array.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(on_grid, (size, size), interpolation=cv2.INTER_NEAREST)


def probability_to_raster(prob: np.ndarray, low: LowRes) -> Raster:
    """A ``size``×``size`` probability map resized back onto the low-resolution grid (float32)."""
    rows, cols = low.image.shape[:2]
    back = cv2.resize(prob.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    return Raster(back, low.mpp, low.slide_mpp)


def refine(model: OnnxModel, low: LowRes, heatmap: Raster | None) -> Raster:
    """Tumour probability (float32 Raster on the low-resolution grid) from the refinement network.

    ``heatmap`` is ignored by 3-channel networks (UNet-LR) and required by 4-channel ones.
    """
    size = model.input_size or REFINE_SIZE
    if model.in_channels == 4 and heatmap is None:
        raise ValueError("this refinement network needs the stage-1 heatmap")
    x = network_input(low, heatmap if model.in_channels == 4 else None, size)
    probs = check_probabilities(model(x[None]), model.path)[0]
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise H2GNetError(model.path, f"returned an output of shape {tuple(probs.shape)}; a refiner returns "
                                      "(N, classes >= 2, H, W) with the tumour class at index 1")
    return probability_to_raster(probs[1], low)
