"""Cells: jittered-grid cell centres, Voronoi adipocytes, and nuclei drawn as polygons.

Cell centres come from a global jittered grid in µm (one candidate per grid
cell, position and attributes hashed from the cell's indices), so a nucleus is
the same whichever tile draws it and tiles agree at their borders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import cv2
import numpy as np

from h2gnet.synth.noise import hash_uniform

_SHIFT = 4  # OpenCV fractional bits for drawing coordinates
_VERTICES = 16


@dataclass(frozen=True)
class CellGrid:
    """Candidate cell centres on a grid of ``spacing`` µm, jittered by ``jitter`` (fraction of a cell)."""

    seed: int
    spacing: float
    jitter: float = 0.8

    def centres(self, x0_um: float, y0_um: float, x1_um: float, y1_um: float) -> tuple[np.ndarray, ...]:
        """Candidates with centre in ``[x0, x1) x [y0, y1)`` µm: (x, y, i, j) flat arrays."""
        s = self.spacing
        i = np.arange(int(np.floor(x0_um / s)) - 1, int(np.floor(x1_um / s)) + 2)[None, :]
        j = np.arange(int(np.floor(y0_um / s)) - 1, int(np.floor(y1_um / s)) + 2)[:, None]
        i, j = np.broadcast_arrays(i, j)
        x, y = self.position(i.ravel(), j.ravel())
        inside = (x >= x0_um) & (x < x1_um) & (y >= y0_um) & (y < y1_um)
        return x[inside], y[inside], i.ravel()[inside], j.ravel()[inside]

    def position(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Jittered centre (µm) of grid cell (i, j)."""
        s, jit = self.spacing, self.jitter
        i, j = np.asarray(i), np.asarray(j)
        channel = np.arange(2).reshape((2,) + (1,) * i.ndim)
        u = hash_uniform(self.seed, i[None], j[None], channel)
        return (i + 0.5 + jit * (u[0] - 0.5)) * s, (j + 0.5 + jit * (u[1] - 0.5)) * s

    def attribute(self, i: np.ndarray, j: np.ndarray, channel: int) -> np.ndarray:
        """Per-cell uniform [0, 1) attribute number ``channel`` (>= 2; 0 and 1 are the jitter)."""
        return hash_uniform(self.seed, i, j, channel)

    def attributes(self, i: np.ndarray, j: np.ndarray, first: int, count: int) -> np.ndarray:
        """Attributes ``first .. first+count-1`` of each cell, shape (count, N), in one hash pass."""
        return hash_uniform(self.seed, i[None, :], j[None, :], np.arange(first, first + count)[:, None])


def _centre_table(grid: CellGrid, ci: np.ndarray, cj: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Jittered centres (µm) of the cells spanned by ``ci``/``cj`` plus one ring: (i0, j0, tx, ty)."""
    i0, j0 = int(ci.min()) - 1, int(cj.min()) - 1
    ii = np.arange(i0, int(ci.max()) + 2)[None, :]
    jj = np.arange(j0, int(cj.max()) + 2)[:, None]
    tx, ty = grid.position(*np.broadcast_arrays(ii, jj))
    return i0, j0, tx, ty


def _nearest_in_table(s: float, ci, cj, i0, j0, tx, ty, x_um, y_um) -> tuple[np.ndarray, ...]:  # noqa: PLR0913 - arrays of one vectorised step
    """Nearest centre (index into the table, flat) and the two smallest distances, over the 3 x 3 cells."""
    # offsets from each point's cell corner keep float32 precise anywhere on a slide
    rel_x = (x_um - ci * s).astype(np.float32)
    rel_y = (y_um - cj * s).astype(np.float32)
    cand_x = np.empty((9,) + x_um.shape, np.float32)
    cand_y = np.empty((9,) + x_um.shape, np.float32)
    cand_k = np.empty((9,) + x_um.shape, np.int64)
    width = tx.shape[1]
    for n, (di, dj) in enumerate((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)):
        k = (cj + dj - j0) * width + (ci + di - i0)
        cand_k[n] = k
        cand_x[n] = tx.ravel()[k] - ci * s
        cand_y[n] = ty.ravel()[k] - cj * s
    dist2 = (cand_x - rel_x) ** 2 + (cand_y - rel_y) ** 2
    nearest = np.take_along_axis(cand_k, np.argmin(dist2, axis=0)[None], 0)[0]
    two = np.sqrt(np.partition(dist2, 1, axis=0)[:2]).astype(np.float64)
    return nearest, two[0], two[1]


def nearest_two(grid: CellGrid, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, ...]:
    """Voronoi query: nearest and second-nearest grid centre of each point.

    Returns (cx, cy, d1, d2): the nearest centre (µm) and the distances (µm) to
    the nearest and second-nearest centres. Points and result are flat arrays.
    """
    ci = np.floor(x_um / grid.spacing).astype(np.int64)
    cj = np.floor(y_um / grid.spacing).astype(np.int64)
    i0, j0, tx, ty = _centre_table(grid, ci, cj)
    k, d1, d2 = _nearest_in_table(grid.spacing, ci, cj, i0, j0, tx, ty, x_um, y_um)
    return tx.ravel()[k], ty.ravel()[k], d1, d2


def flagged_voronoi(grid: CellGrid, x_um: np.ndarray, y_um: np.ndarray,
                    flag: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Whether each point's nearest centre is flagged, and ``(d2 - d1) / 2`` (µm), its gap to the cell edge.

    ``flag(cx, cy)`` marks centres (µm). Points with no flagged centre among
    their 3 x 3 neighbouring cells are not flagged without a distance query
    (their gap is reported as +inf).
    """
    flagged = np.zeros(x_um.shape, bool)
    gap = np.full(x_um.shape, np.inf)
    if x_um.size == 0:
        return flagged, gap
    s = grid.spacing
    ci = np.floor(x_um / s).astype(np.int64)
    cj = np.floor(y_um / s).astype(np.int64)
    i0, j0, tx, ty = _centre_table(grid, ci, cj)
    table_flag = flag(tx, ty).astype(np.uint8)
    near_flag = cv2.dilate(table_flag, np.ones((3, 3), np.uint8))
    sel = near_flag[cj - j0, ci - i0] > 0
    if sel.any():
        k, d1, d2 = _nearest_in_table(s, ci[sel], cj[sel], i0, j0, tx, ty, x_um[sel], y_um[sel])
        flagged[sel] = table_flag.ravel()[k] > 0
        gap[sel] = 0.5 * (d2 - d1)
    return flagged, gap


@dataclass
class Nuclei:
    """A batch of nuclei to draw (flat arrays of one length). Lengths in µm, angles in radians.

    ``darkness`` in 0..1 scales haematoxylin; ``irregularity`` the amplitude of
    the shape harmonics; ``rim`` marks vesicular nuclei (pale centre, dark
    membrane); ``nucleolus`` adds a dark dot; ``shape_seed`` drives the harmonics.
    """

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    darkness: np.ndarray
    irregularity: np.ndarray
    rim: np.ndarray
    nucleolus: np.ndarray
    shape_seed: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)

    @staticmethod
    def build(x, y, a, b, angle, darkness, irregularity=0.0, *, rim=False, nucleolus=False,  # noqa: PLR0913 - one per field
              shape_seed=0) -> Nuclei:
        """Broadcast scalars to the length of ``x``."""
        n = np.asarray(x).size
        vals = [x, y, a, b, angle, darkness, irregularity, rim, nucleolus, shape_seed]
        dtypes = [float] * 7 + [bool, bool, np.int64]
        return Nuclei(*(np.broadcast_to(np.asarray(v, dt), (n,)).copy() for v, dt in zip(vals, dtypes)))

    @staticmethod
    def concat(parts: list[Nuclei]) -> Nuclei:
        """All nuclei of ``parts`` in one set."""
        return Nuclei(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Nuclei)))


def nucleus_polygons(nuc: Nuclei, origin_x_px: float, origin_y_px: float, mpp: float) -> np.ndarray:
    """(N, 16, 2) int32 outline vertices in canvas pixels << 4 (OpenCV ``shift=4``).

    ``origin_*_px`` is the level-0 continuous coordinate of the canvas's top-left
    corner; canvas pixel ``(0, 0)`` has its centre at ``origin + 0.5``.
    """
    theta = np.linspace(0.0, 2 * np.pi, _VERTICES, endpoint=False)[None, :]
    h1 = hash_uniform(7, nuc.shape_seed[:, None], np.arange(6)[None, :])  # (N, 6) harmonic coefficients
    wobble = (
        (h1[:, 0:1] - 0.5) * np.cos(2 * theta + 6.283 * h1[:, 1:2])
        + (h1[:, 2:3] - 0.5) * np.cos(3 * theta + 6.283 * h1[:, 3:4])
        + 0.6 * (h1[:, 4:5] - 0.5) * np.cos(5 * theta + 6.283 * h1[:, 5:6])
    )
    a, b = nuc.a[:, None] / mpp, nuc.b[:, None] / mpp
    rad = np.maximum(1.0 + 1.6 * nuc.irregularity[:, None] * wobble, 0.35)
    px = a * np.cos(theta) * rad
    py = b * np.sin(theta) * rad
    c, s = np.cos(nuc.angle)[:, None], np.sin(nuc.angle)[:, None]
    cx = nuc.x[:, None] / mpp - origin_x_px - 0.5
    cy = nuc.y[:, None] / mpp - origin_y_px - 0.5
    vx = cx + px * c - py * s
    vy = cy + px * s + py * c
    return np.round(np.stack([vx, vy], axis=-1) * (1 << _SHIFT)).astype(np.int32)


def draw_nuclei(cover: np.ndarray, dark: np.ndarray, nuc: Nuclei, origin_x_px: float, origin_y_px: float,
                mpp: float) -> None:
    """Draw ``nuc`` into uint8 canvases: ``cover`` (coverage, 255 inside) and ``dark`` (darkness * 255).

    Later nuclei overwrite earlier ones where they overlap. Vesicular nuclei get
    a pale interior and a darker rim; nucleoli a dark dot (about 0.8-1.6 µm).
    """
    if len(nuc) == 0:
        return
    polys = nucleus_polygons(nuc, origin_x_px, origin_y_px, mpp)
    h, w = cover.shape
    lo, hi = polys.min(axis=1) >> _SHIFT, polys.max(axis=1) >> _SHIFT
    visible = (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < w) & (lo[:, 1] < h)
    dval = np.clip(nuc.darkness * 255.0, 0, 255)
    rim_px = max(1, round(0.7 / mpp))
    cx = np.round((nuc.x / mpp - origin_x_px - 0.5) * (1 << _SHIFT)).astype(np.int64)
    cy = np.round((nuc.y / mpp - origin_y_px - 0.5) * (1 << _SHIFT)).astype(np.int64)
    nucleolus_r = np.maximum(1, np.round((0.45 + 0.35 * nuc.a / 8.0) / mpp * (1 << _SHIFT))).astype(np.int64)
    for k in np.flatnonzero(visible):
        poly = [polys[k]]
        cv2.fillPoly(cover, poly, 255, cv2.LINE_AA, _SHIFT)
        if nuc.rim[k]:
            cv2.fillPoly(dark, poly, float(dval[k] * 0.62), cv2.LINE_AA, _SHIFT)
            cv2.polylines(dark, poly, True, float(min(255.0, dval[k] * 1.15)), rim_px, cv2.LINE_AA, _SHIFT)
        else:
            cv2.fillPoly(dark, poly, float(dval[k]), cv2.LINE_AA, _SHIFT)
        if nuc.nucleolus[k]:
            cv2.circle(dark, (int(cx[k]), int(cy[k])), int(nucleolus_r[k]), 255, -1, cv2.LINE_AA, _SHIFT)
