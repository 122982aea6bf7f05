"""Deterministic, tiling-independent randomness: integer hashing and lattice value noise.

Everything random in a phantom slide below the scale of the scene fields
(:mod:`h2gnet.synth.spec`) is a pure function of a seed and of *global*
coordinates, so a pixel gets the same value whichever tile renders it.

Two evaluation paths give the same noise:

* :func:`noise_grid` fills a rectangle of an integer pixel grid (fast: a small
  hashed lattice is upsampled with OpenCV's bicubic resize);
* :func:`noise_points` evaluates the same function at arbitrary continuous grid
  positions (used to decide where cells go, so decisions match the drawn masks).

Grid coordinates: pixel ``i`` of a grid has its centre at continuous position ``i``.
A lattice of step ``s`` pixels has node ``j`` at continuous position
``(j + 0.5) * s - 0.5`` (OpenCV's half-pixel convention for an ``s``-fold upscale).
"""

from __future__ import annotations

import cv2
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_KEY_MULT = (np.uint64(0xD6E8FEB86659FD93), np.uint64(0xA0761D6478BD642F), np.uint64(0xE7037ED1A0B428DB))
_CUBIC_A = -0.75  # OpenCV's bicubic kernel parameter
_RESIZE_MAX_STEP = 16  # larger lattice steps are interpolated separably instead of by cv2.resize


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _MIX1
    z = z ^ (z >> np.uint64(27))
    z = z * _MIX2
    return z ^ (z >> np.uint64(31))


def _splitmix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (for scalar seeds)."""
    mask = 0xFFFFFFFFFFFFFFFF
    z = (z + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def hash_u64(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """A well-mixed uint64 hash of ``seed`` and up to three integer key arrays (broadcast).

    The keys are combined linearly with large odd multipliers, then SplitMix64
    scrambles the sum; distinct small keys cannot collide in practice.
    """
    if len(keys) > len(_KEY_MULT):
        raise ValueError("at most three hash keys")
    acc: np.ndarray = np.asarray(np.uint64(_splitmix_int(int(seed) & 0xFFFFFFFFFFFFFFFF)))
    with np.errstate(over="ignore"):
        for key, mult in zip(keys, _KEY_MULT):
            acc = acc + np.asarray(key, dtype=np.int64).astype(np.uint64) * mult
        return _splitmix(np.asarray(acc))


def hash_uniform(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform float64 values in [0, 1) from :func:`hash_u64`."""
    return (hash_u64(seed, *keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sub_seed(seed: int, *labels: int) -> int:
    """A derived 63-bit seed, e.g. one per noise layer or cell population."""
    return int(hash_u64(seed, *labels)) >> 1


def _lattice(seed: int, j0: int, i0: int, nx: int, ny: int) -> np.ndarray:
    """Lattice values in [-1, 1) for nodes ``i0..i0+ny-1`` (rows) x ``j0..j0+nx-1`` (cols)."""
    jj = np.arange(j0, j0 + nx, dtype=np.int64)[None, :]
    ii = np.arange(i0, i0 + ny, dtype=np.int64)[:, None]
    return (hash_uniform(seed, jj, ii) * 2.0 - 1.0).astype(np.float32)


def noise_grid(seed: int, x0: int, y0: int, width: int, height: int, step: int) -> np.ndarray:
    """Smooth value noise on grid pixels ``[x0, x0+width) x [y0, y0+height)``, float32 about [-1, 1].

    ``step`` is the lattice spacing in grid pixels (the feature size). The result
    for a pixel depends only on ``seed``, ``step`` and its global grid position.
    Small steps upsample the lattice exactly (bicubic); large steps are evaluated
    on a globally aligned sub-grid of ``step // 16`` px and upsampled linearly
    (deviation from :func:`noise_points` below about 5e-3).
    """
    step = max(1, int(step))
    if step > _RESIZE_MAX_STEP:
        return _noise_grid_subsampled(seed, x0, y0, width, height, step)
    j0 = x0 // step - 2
    i0 = y0 // step - 2
    nx = (x0 + width) // step - j0 + 3
    ny = (y0 + height) // step - i0 + 3
    lat = _lattice(seed, j0, i0, nx, ny)
    if step == 1:
        up = lat
    else:
        up = cv2.resize(lat, (nx * step, ny * step), interpolation=cv2.INTER_CUBIC)
    ox, oy = x0 - j0 * step, y0 - i0 * step
    return np.ascontiguousarray(up[oy : oy + height, ox : ox + width])


def _axis_weights(coords: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice indices (n, 4) and bicubic weights (n, 4) at continuous grid coordinates ``coords``."""
    lat = (np.asarray(coords, np.float64) + 0.5) / step - 0.5
    base = np.floor(lat)
    return base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], _cubic_weights(lat - base)


def _separable(seed: int, xs: np.ndarray, ys: np.ndarray, step: int) -> np.ndarray:
    """Noise at the grid ``ys x xs`` (continuous coordinates): interpolate along x on the small lattice,
    then along y with whole-row gathers."""
    ix, wx = _axis_weights(xs, step)
    iy, wy = _axis_weights(ys, step)
    j0, i0 = int(ix.min()), int(iy.min())
    lat = _lattice(seed, j0, i0, int(ix.max()) - j0 + 1, int(iy.max()) - i0 + 1)
    cols = sum(wx[None, :, t].astype(np.float32) * lat[:, ix[:, t] - j0] for t in range(4))
    wy32 = wy.astype(np.float32)
    out = wy32[:, 0, None] * cols[iy[:, 0] - i0]
    for t in range(1, 4):
        out += wy32[:, t, None] * cols[iy[:, t] - i0]
    return out


def _noise_grid_subsampled(seed: int, x0: int, y0: int, width: int, height: int, step: int) -> np.ndarray:
    """:func:`noise_grid` for large steps: exact values every ``f = step // 16`` px, linear in between."""
    f = max(1, step // 16)
    if f == 1:
        return _separable(seed, np.arange(x0, x0 + width), np.arange(y0, y0 + height), step)
    m0, n0 = x0 // f - 1, y0 // f - 1
    nx, ny = (x0 + width) // f - m0 + 2, (y0 + height) // f - n0 + 2
    # sub-grid cell m covers grid pixels [m f, (m + 1) f); its value is taken at the cell centre
    xs = (np.arange(m0, m0 + nx) * f) + (f - 1) / 2.0
    ys = (np.arange(n0, n0 + ny) * f) + (f - 1) / 2.0
    sub = _separable(seed, xs, ys, step)
    up = cv2.resize(sub, (nx * f, ny * f), interpolation=cv2.INTER_LINEAR)
    ox, oy = x0 - m0 * f, y0 - n0 * f
    return np.ascontiguousarray(up[oy : oy + height, ox : ox + width])


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """OpenCV bicubic weights for fractional offsets ``t`` (shape (N,)) -> (N, 4)."""
    a = _CUBIC_A
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    s = 1 - t
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    return np.stack([w0, w1, w2, 1.0 - w0 - w1 - w2], axis=-1)


def noise_points(seed: int, gx: np.ndarray, gy: np.ndarray, step: int) -> np.ndarray:
    """:func:`noise_grid`'s function at continuous grid positions ``(gx, gy)`` (same shape), float64."""
    step = max(1, int(step))
    gx = np.asarray(gx, dtype=np.float64)
    gy = np.asarray(gy, dtype=np.float64)
    shape = np.broadcast(gx, gy).shape
    lx = ((np.broadcast_to(gx, shape).ravel() + 0.5) / step) - 0.5
    ly = ((np.broadcast_to(gy, shape).ravel() + 0.5) / step) - 0.5
    if step == 1:
        lx, ly = np.round(lx), np.round(ly)
    fx, fy = np.floor(lx), np.floor(ly)
    wx, wy = _cubic_weights(lx - fx), _cubic_weights(ly - fy)
    jx = fx.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    iy = fy.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    vals = hash_uniform(seed, jx[:, None, :], iy[:, :, None]) * 2.0 - 1.0  # (N, 4 rows, 4 cols)
    out = np.einsum("nij,ni,nj->n", vals, wy, wx)
    return out.reshape(shape)


def fbm_grid(seed: int, x0: int, y0: int, width: int, height: int, step: int, octaves: int = 3) -> np.ndarray:
    """Fractal (multi-octave) value noise: octave ``o`` has step ``step / 2**o`` and weight ``0.5**o``."""
    total = np.zeros((height, width), np.float32)
    norm = 0.0
    for o in range(octaves):
        s = max(1, round(step / 2**o))
        total += (0.5**o) * noise_grid(sub_seed(seed, o), x0, y0, width, height, s)
        norm += 0.5**o
    return total / norm


def fbm_points(seed: int, gx: np.ndarray, gy: np.ndarray, step: int, octaves: int = 3) -> np.ndarray:
    """:func:`fbm_grid`'s function at continuous grid positions."""
    total = np.zeros(np.broadcast(np.asarray(gx), np.asarray(gy)).shape)
    norm = 0.0
    for o in range(octaves):
        s = max(1, round(step / 2**o))
        total += (0.5**o) * noise_points(sub_seed(seed, o), gx, gy, s)
        norm += 0.5**o
    return total / norm
