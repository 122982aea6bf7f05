"""Stage-2 input and inference: low-resolution slide + heatmap → refined segmentation (section 2.5).

The low-resolution image is the slide's smallest pyramid level of at least
``size``×``size`` px (paper: 1024), read at most ``MAX_OVERSAMPLE``× ``size``
per side (area resampling) and kept as uint8 so memory does not grow with the
slide; it and the heatmap are resized to ``size``×``size`` bilinearly,
normalised to [0, 1] and stacked as 4 channels (RGB + heatmap). The network's tumour probability is resized back to the
low-resolution image's grid (aspect preserved) and thresholded at 0.5.
"""

from __future__ import annotations

import warnings
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
#: With the "smallest-level" source, a lowest level shorter than ``size`` / this is skipped.
MIN_LOWEST_FRACTION = 4


@dataclass(frozen=True)
class LowRes:
    """The slide at low resolution: RGB uint8 on a grid of ``mpp`` µm/px."""

    image: np.ndarray
    mpp: float
    slide_mpp: float


def low_resolution(slide: Slide, size: int = REFINE_SIZE, source: str = "h2gnet") -> LowRes:
    """The smallest pyramid level with both sides ≥ ``size`` px, read at no more than
    :data:`MAX_OVERSAMPLE`×``size`` px on the long side, as uint8 RGB.

    ``source`` "smallest-level": the pyramid's lowest level as it is (FAST's ``ImagePyramidLevelExtractor``
    level -1, the published H2G-Net pipeline's input), unless its long side is under ``size`` /
    :data:`MIN_LOWEST_FRACTION` px (pyramids that go down to a few pixels, as DICOM's do): then the
    smallest level at least that long, or the slide read at that size.
    """
    if source == "smallest-level":
        floor = size / MIN_LOWEST_FRACTION
        usable = [lv for lv in slide.levels if max(lv.dimensions) >= floor]
        mpp = slide.mpp * usable[-1].downsample if usable else max(slide.extent_um()) / floor
        return LowRes(slide.read_whole(mpp), mpp, slide.mpp)
    level = slide.smallest_level_at_least(size)
    cap_mpp = max(slide.extent_um()) / (MAX_OVERSAMPLE * size)
    mpp = max(level.mpp, cap_mpp)
    return LowRes(slide.read_whole(mpp), mpp, slide.mpp)


def _fit(array: np.ndarray, size: int, resize: str) -> np.ndarray:
    """``array`` (H, W[, C]) resized bilinearly to ``size``×``size`` ("stretch") or with its long side
    ``size`` and zero-padded at the bottom/right ("keep-aspect")."""
    if resize == "stretch":
        return cv2.resize(array, (size, size), interpolation=cv2.INTER_LINEAR)
    h, w = array.shape[:2]
    scale = size / max(h, w)
    inner = cv2.resize(array, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((size, size, *array.shape[2:]), np.float32)
    out[: inner.shape[0], : inner.shape[1]] = inner
    return out


def network_input(low: LowRes, heatmap: Raster | None, size: int = REFINE_SIZE, normalisation: str = "fixed",
                  resize: str = "stretch") -> np.ndarray:
    """(C, size, size) float32: RGB, plus the heatmap channel when given (C = 4, else 3 for UNet-LR).

    ``normalisation`` "fixed": RGB / 255; "minmax": (RGB − min) / (max − min) over the whole
    low-resolution image, all channels (FAST's ``IntensityNormalization`` as documented, and as FAST computes
    it for images in host memory); "minmax-red": min and max of the red channel only, applied to all three
    (what FAST 4.18 computes for a slide read by OpenSlide: its GPU min/max kernel reads the first channel
    only, so green and blue can leave [0, 1]). ``resize``: "stretch" (aspect not kept)
    or "keep-aspect" (see :func:`_fit`); the heatmap is resized the same way.
    """
    img = low.image.astype(np.float32)
    if normalisation in ("minmax", "minmax-red"):
        ref = img[..., 0] if normalisation == "minmax-red" else img
        lo, hi = float(ref.min()), float(ref.max())
        img = (img - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(img)
    else:
        img = img / np.float32(255)
    channels: list[np.ndarray] = [_fit(img, size, resize).transpose(2, 0, 1)]
    if heatmap is not None:
        channels.append(_fit(heatmap.array.astype(np.float32), size, resize)[None])
    return np.concatenate(channels, axis=0).astype(np.float32)


def target_mask(low: LowRes, truth: Raster, size: int = REFINE_SIZE, resize: str = "stretch") -> np.ndarray:
    """Ground truth resized to the network's ``size``×``size`` grid (uint8 0/1, nearest), the way
    :func:`network_input` resizes the image (``resize`` "stretch" or "keep-aspect", zero-padded)."""
    rows, cols = low.image.shape[:2]
    on_grid = cv2.resize(truth.array.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST)
    if resize == "stretch":
        return cv2.resize(on_grid, (size, size), interpolation=cv2.INTER_NEAREST)
    scale = size / max(rows, cols)
    inner = cv2.resize(on_grid, (max(1, round(cols * scale)), max(1, round(rows * scale))),
                       interpolation=cv2.INTER_NEAREST)
    out = np.zeros((size, size), np.uint8)
    out[: inner.shape[0], : inner.shape[1]] = inner
    return out


def probability_to_raster(prob: np.ndarray, low: LowRes, resize: str = "stretch", *,
                          upsample: bool = False) -> Raster:
    """A ``size``×``size`` probability map resized back onto the low-resolution grid (float32);
    with "keep-aspect" the padding is cut off first. ``upsample``: when the low-resolution image is
    smaller than the network's output, use a finer grid whose long side is the output's (the
    segmentation keeps the network's resolution, as FAST's does)."""
    rows, cols = low.image.shape[:2]
    mpp = low.mpp
    factor = prob.shape[0] / max(rows, cols)
    if upsample and factor > 1:
        rows, cols, mpp = max(1, round(rows * factor)), max(1, round(cols * factor)), low.mpp / factor
    if resize == "keep-aspect":
        scale = prob.shape[0] / max(rows, cols)
        prob = prob[: max(1, round(rows * scale)), : max(1, round(cols * scale))]
    back = cv2.resize(prob.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    return Raster(back, mpp, low.slide_mpp)


def _checked(model: OnnxModel, x: np.ndarray) -> np.ndarray:
    """The refiner's (N, classes, H, W) probabilities for ``x``, checked."""
    probs = check_probabilities(model(x), model.path)
    if probs.ndim != 4 or probs.shape[1] < 2:
        raise H2GNetError(model.path, f"returned an output of shape {tuple(probs.shape)}; a refiner returns "
                                      "(N, classes >= 2, H, W) with the tumour class at index 1")
    (rows, cols), (in_rows, in_cols) = probs.shape[-2:], x.shape[-2:]
    if rows != cols:
        raise H2GNetError(model.path, f"returned a {rows}×{cols} px output for a {in_rows}×{in_cols} px input; "
                                      "a refiner's output must be square (the same size as its input)")
    if (rows, cols) != (in_rows, in_cols):  # stretched back to the low-resolution grid: say so, once per model
        warnings.warn(f"{model.path}: the refiner returned a {rows}×{cols} px output for its {in_rows}×{in_cols} px "
                      "input; the output is resized to the input's grid (check that the model or its card's input "
                      "size is the intended one)", UserWarning, stacklevel=3)
    return probs


def _dihedral(x: np.ndarray, k: int, *, flip: bool) -> np.ndarray:
    """``x`` (..., S, S) turned ``k`` quarter turns, then mirrored left-right when ``flip``."""
    out = np.rot90(x, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def _undo_dihedral(x: np.ndarray, k: int, *, flip: bool) -> np.ndarray:
    """The inverse of :func:`_dihedral` with the same ``k`` and ``flip``."""
    out = x[..., ::-1] if flip else x
    return np.rot90(out, -k, axes=(-2, -1))


#: Test-time augmentation: the eight flips and quarter turns of the square network input.
TTA_TRANSFORMS = tuple((k, flip) for k in range(4) for flip in (False, True))


def refine(model: OnnxModel, low: LowRes, heatmap: Raster | None, *, tta: bool = False) -> Raster:
    """Tumour probability (float32 Raster on the low-resolution grid) from the refinement network.

    ``heatmap`` is ignored by 3-channel networks (UNet-LR) and required by 4-channel ones. The model's
    card says how its input is normalised and resized (h2gnet's own: RGB / 255, stretched). ``tta``:
    average the probabilities of the eight flips and quarter turns of the input (:data:`TTA_TRANSFORMS`),
    each turned back (8 network passes; a refiner pass is milliseconds next to the patch stage).
    """
    size = model.input_size or REFINE_SIZE
    if model.in_channels == 4 and heatmap is None:
        raise ValueError("this refinement network needs the stage-1 heatmap")
    card = model.card
    normalisation, resize = (card.image_normalisation, card.resize) if card is not None else ("fixed", "stretch")
    x = network_input(low, heatmap if model.in_channels == 4 else None, size, normalisation, resize)
    transforms = TTA_TRANSFORMS if tta else TTA_TRANSFORMS[:1]  # the first is the identity
    probs = np.mean([_undo_dihedral(_checked(model, np.ascontiguousarray(_dihedral(x, k, flip=flip))[None])[0], k,
                                    flip=flip) for k, flip in transforms], axis=0)
    upsample = card is not None and card.image_source == "smallest-level"
    return probability_to_raster(probs[model.tumour_channel], low, resize, upsample=upsample)
