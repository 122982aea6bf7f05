"""Quality-control picture: heatmap and outlines over a slide thumbnail (OpenCV only).

* The tumour heatmap is drawn with an OpenCV colour map (inferno by default),
  blended with per-pixel opacity ``alpha * p`` so low probabilities leave the
  tissue visible.
* The predicted mask is outlined in green, the ground-truth annotation (if
  given) in azure, and a small legend in the top-left corner names them.

All rasters are assumed to cover the whole slide, like the thumbnail, and are
resized to the thumbnail (bilinear for the heatmap, nearest for masks).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import LOW_SPACE, atomic_path, disk_full_error, free_bytes
from h2gnet.io.raster import Raster

PRED_COLOR = (0, 255, 0)
TRUTH_COLOR = (0, 200, 255)


def _check_thumbnail(thumbnail_rgb: np.ndarray) -> np.ndarray:
    """The thumbnail as a contiguous (H, W, 3) uint8 copy (an alpha channel is dropped)."""
    img = np.asarray(thumbnail_rgb)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img[..., :3]).copy()


def _fit(raster: Raster, shape: tuple[int, int], interpolation: int) -> np.ndarray:
    """``raster.array`` resized to ``shape`` (rows, cols) as float32 (NaN -> 0)."""
    arr = np.nan_to_num(raster.array.astype(np.float32), nan=0.0)
    return cv2.resize(arr, (shape[1], shape[0]), interpolation=interpolation)


def _colormap_rgb(prob: np.ndarray, colormap: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB colours of probabilities in [0, 1]."""
    grey = np.round(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, colormap), cv2.COLOR_BGR2RGB)


def _blend_heatmap(img: np.ndarray, heatmap: Raster, alpha: float, colormap: int) -> np.ndarray:
    """``img`` with the heatmap blended in at opacity ``alpha * p`` per pixel."""
    prob = np.clip(_fit(heatmap, img.shape[:2], cv2.INTER_LINEAR), 0.0, 1.0)
    weight = np.float32(alpha) * prob
    colours = _colormap_rgb(prob, colormap)
    # per-pixel weighted sum, rounded (OpenCV: one pass instead of several float32 copies)
    return cv2.blendLinear(img, colours, np.float32(1.0) - weight, weight)


def _line_width(shape: tuple[int, ...]) -> int:
    """Outline thickness in px: about 1/500 of the longer side, at least 1."""
    return max(1, round(max(shape[:2]) / 500))


def _draw_outline(img: np.ndarray, mask: Raster, color: tuple[int, int, int]) -> None:
    """Draw the boundary of ``mask`` (resized to ``img``) on ``img`` in place."""
    fitted = (_fit(mask, img.shape[:2], cv2.INTER_NEAREST) > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(fitted, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, color, _line_width(img.shape), lineType=cv2.LINE_AA)


def _legend_entries(
    *, heatmap: bool, mask: bool, annotation: bool
) -> list[tuple[str, tuple[int, int, int] | None]]:
    """(label, colour) rows of the legend; colour None marks the colour bar."""
    rows: list[tuple[str, tuple[int, int, int] | None]] = []
    if heatmap:
        rows.append(("tumour probability 0-1", None))
    if mask:
        rows.append(("prediction", PRED_COLOR))
    if annotation:
        rows.append(("annotation", TRUTH_COLOR))
    return rows


def _draw_legend(img: np.ndarray, rows: list[tuple[str, tuple[int, int, int] | None]], colormap: int) -> None:
    """Draw a legend box in the top-left corner of ``img`` in place."""
    if not rows:
        return
    scale = max(0.3, min(1.0, max(img.shape[:2]) / 1600))
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, text_h), _ = cv2.getTextSize("Ag", font, scale, 1)
    row_h, swatch_w, pad = int(text_h * 2), int(text_h * 3), max(2, text_h // 2)
    text_w = max(cv2.getTextSize(label, font, scale, 1)[0][0] for label, _ in rows)
    box_w, box_h = pad * 3 + swatch_w + text_w, pad * 2 + row_h * len(rows)
    region = img[:box_h, :box_w]
    region[:] = (0.25 * region + 0.75 * 255).astype(np.uint8)
    for i, (label, color) in enumerate(rows):
        y_mid = pad + row_h * i + row_h // 2
        _draw_swatch(img, (pad, y_mid), swatch_w, text_h, color, colormap)
        org = (pad * 2 + swatch_w, y_mid + text_h // 2)
        cv2.putText(img, label, org, font, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _draw_swatch(
    img: np.ndarray,
    left_mid: tuple[int, int],
    width: int,
    height: int,
    color: tuple[int, int, int] | None,
    colormap: int,
) -> None:
    """A line in ``color``, or (``color`` None) a colour bar from 0 to 1, at ``left_mid``."""
    x0, y_mid = left_mid
    if color is not None:
        cv2.line(img, (x0, y_mid), (x0 + width, y_mid), color, max(2, height // 3), cv2.LINE_AA)
        return
    y0 = max(0, y_mid - height // 2)
    bar = _colormap_rgb(np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1)), colormap)
    target = img[y0 : y0 + height, x0 : x0 + width]
    target[:] = bar[: target.shape[0], : target.shape[1]]


def render_overlay(
    thumbnail_rgb: np.ndarray,
    heatmap: Raster | None,
    mask: Raster | None,
    annotation: Raster | None = None,
    *,
    alpha: float = 0.5,
    colormap: int = cv2.COLORMAP_INFERNO,
    legend: bool = True,
) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture of the slide thumbnail with the model's outputs drawn on it.

    Args:
        thumbnail_rgb: (H, W, 3) uint8 RGB picture of the whole slide.
        heatmap: tumour probability in [0, 1] (NaN treated as 0), or None.
        mask: predicted tumour mask, outlined in green, or None.
        annotation: ground-truth mask, outlined in azure, or None.
        alpha: opacity of the heatmap colour at probability 1.
        colormap: OpenCV colour-map id for the heatmap.
        legend: draw the legend box (top-left).
    """
    img = _check_thumbnail(thumbnail_rgb)
    if heatmap is not None:
        img = _blend_heatmap(img, heatmap, alpha, colormap)
    if annotation is not None:
        _draw_outline(img, annotation, TRUTH_COLOR)
    if mask is not None:
        _draw_outline(img, mask, PRED_COLOR)
    if legend:
        rows = _legend_entries(heatmap=heatmap is not None, mask=mask is not None, annotation=annotation is not None)
        _draw_legend(img, rows, colormap)
    return img


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Atomically write an (H, W, 3) uint8 RGB (or (H, W) grey) image as PNG; returns ``Path(path)``."""
    path = Path(path)
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected (H, W, 3) or (H, W) uint8, got {arr.shape} {arr.dtype}")
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), bgr):  # OpenCV returns False, even on a full disk
            free = free_bytes(path.parent)
            if free is not None and free < LOW_SPACE:
                raise disk_full_error(path.parent, path)
            raise H2GNetError(path, "cannot write PNG")
    return path
