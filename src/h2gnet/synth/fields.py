"""Low-frequency scene fields of a phantom slide, built once per slide at ``field_mpp`` µm/px.

All fields are float32 arrays on the *field grid*: pixel ``(r, c)`` has its
centre at ``((c + 0.5) * field_mpp, (r + 0.5) * field_mpp)`` µm from the slide's
level-0 origin. They are bilinearly interpolated when a tile is rendered
(:func:`sample_field_grid`, :func:`sample_field_points`).
"""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise with feature size ``scale_px`` field pixels."""
    h, w = shape
    scale_px = max(scale_px, 1.0)
    # White noise on a grid ~4 samples per feature, cubic-upsampled then lightly blurred.
    ch, cw = max(4, int(np.ceil(h / scale_px * 4)) + 4), max(4, int(np.ceil(w / scale_px * 4)) + 4)
    base: np.ndarray = rng.standard_normal((ch, cw)).astype(np.float32)
    base = cv2.GaussianBlur(base, (0, 0), 1.2, borderType=cv2.BORDER_REFLECT)
    up = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    up -= up.mean()
    return up / max(float(up.std()), 1e-6)


def signed_distance_um(mask: np.ndarray, field_mpp: float) -> np.ndarray:
    """Signed Euclidean distance to the mask edge in µm: > 0 inside, < 0 outside, 0 on the edge."""
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 5) if m.any() else np.zeros(m.shape, np.float32)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5) if (1 - m).any() else np.zeros(m.shape, np.float32)
    return ((inside - outside) * field_mpp).astype(np.float32)


def smooth_mask(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Round off a binary mask's corners: Gaussian blur then threshold at 0.5."""
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    return blurred > 0.5


def drop_small_parts(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Remove connected components smaller than ``min_fraction`` of the mask's area."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(n, bool)
    keep[1:] = areas >= min_fraction * areas.sum()
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill background components not touching the border and smaller than ``max_area_px``."""
    inv = (~mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    h, w = mask.shape
    fill = np.zeros(n, bool)
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        touches = x == 0 or y == 0 or x + bw == w or y + bh == h
        fill[i] = (not touches) and area <= max_area_px
    return mask | fill[labels]


def field_centres_um(shape: tuple[int, int], field_mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Field pixel centre coordinates in µm: (xs (1, w), ys (h, 1))."""
    h, w = shape
    xs = ((np.arange(w) + 0.5) * field_mpp)[None, :]
    ys = ((np.arange(h) + 0.5) * field_mpp)[:, None]
    return xs, ys


def _axis(coord_um: np.ndarray, field_mpp: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear neighbours (i0, i1) and weight of i1 along one field axis; coordinates clamp at the edges."""
    u = np.clip(np.asarray(coord_um, np.float64) / field_mpp - 0.5, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(u).astype(np.int64), max(n - 2, 0))
    return i0, np.minimum(i0 + 1, n - 1), u - i0


def sample_field_grid(field: np.ndarray, field_mpp: float, xs_um: np.ndarray,
                      ys_um: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``field`` on the grid ``ys_um x xs_um`` (1-D, µm) -> float32 (len(ys), len(xs))."""
    h, w = field.shape
    x0, x1, tx = _axis(xs_um, field_mpp, w)
    y0, y1, ty = _axis(ys_um, field_mpp, h)
    c0 = int(x0.min())
    sub = field[:, c0 : int(x1.max()) + 1]
    ty32 = ty.astype(np.float32)[:, None]
    rows = sub[y0] * (1.0 - ty32) + sub[y1] * ty32
    tx32 = tx.astype(np.float32)[None, :]
    return rows[:, x0 - c0] * (1.0 - tx32) + rows[:, x1 - c0] * tx32


def sample_field_points(field: np.ndarray, field_mpp: float, x_um: np.ndarray,
                        y_um: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``field`` at points (same interpolation as :func:`sample_field_grid`)."""
    h, w = field.shape
    x_um, y_um = np.broadcast_arrays(np.asarray(x_um, np.float64), np.asarray(y_um, np.float64))
    x0, x1, tx = _axis(x_um, field_mpp, w)
    y0, y1, ty = _axis(y_um, field_mpp, h)
    f = field
    top = f[y0, x0] * (1 - tx) + f[y0, x1] * tx
    bottom = f[y1, x0] * (1 - tx) + f[y1, x1] * tx
    return top * (1 - ty) + bottom * ty
