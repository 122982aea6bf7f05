"""Render level-0 pixels of a phantom H&E slide from its :class:`~h2gnet.synth.spec.SlideSpec`.

A region is rendered in two passes:

* a *coarse* pass on a grid of ``k`` level-0 pixels per cell (``k = round(1 µm /
  mpp)``, so about 1 µm/px) computes the tissue composition: tissue coverage,
  stroma fibres, fat cells, lobular and desmoplastic stroma, tumour nests, and
  from them haematoxylin/eosin concentrations;
* a *fine* pass at level-0 resolution upsamples those maps and draws the sharp
  detail: fat-cell membranes, glands, nuclei (with chromatin texture), then
  converts stain concentrations to RGB through the slide's stain model, adds
  mild optical blur and sensor grain.

All randomness is a function of global coordinates (see :mod:`h2gnet.synth.noise`
and :class:`~h2gnet.synth.cells.CellGrid`), so any tiling gives the same picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

from h2gnet.synth.cells import CellGrid, Nuclei, draw_nuclei, flagged_voronoi
from h2gnet.synth.fields import sample_field_grid, sample_field_points
from h2gnet.synth.noise import (
    fbm_grid,
    fbm_points,
    hash_u64,
    hash_uniform,
    noise_grid,
    noise_points,
    sub_seed,
)
from h2gnet.synth.spec import TUBULE, SlideSpec
from h2gnet.synth.structures import GlandCanvases, draw_glands, inside_glands, lining_nuclei, tumour_nuclei
from h2gnet.synth.style import STAIN_SETS

_MARGIN_PX = 8  # level-0 px rendered around a region (blur support, seamless borders)
_FBM_STD = 0.32  # standard deviation of fbm_grid (3 octaves), used to normalise it
_NOISE_STD = 0.49  # standard deviation of noise_grid
_NUCLEUS_REACH_UM = 22.0  # largest distance from a nucleus centre to its outline
_GRAIN_PERIOD = 256
_WARP_UM = 28.0  # amplitude of the domain warp that makes collagen fibres wave, µm
_WARP_SCALE_UM = 180.0
_FAT_WARP_UM = 14.0  # bends the Voronoi edges of fat cells into curved membranes, µm (x noise amplitude)
_FAT_WARP_SCALE_UM = 50.0

# Stain concentrations (optical density units before the slide's stain strengths).
_NUCLEUS_H = 2.4
_STROMA_E = 0.58
_NEST_E = 0.42
_EPITHELIUM_E, _EPITHELIUM_H = 0.34, 0.11
_WALL_E, _WALL_H = 0.78, 0.06
_LUMEN_E, _LUMEN_H = 0.035, 0.012
_RBC_E, _RBC_H = 1.15, 0.03
_FAT_E, _FAT_H, _MEMBRANE_E = 0.03, 0.01, 0.48


@dataclass(frozen=True)
class _Seeds:
    """Independent hash seeds of one slide's procedural layers."""

    edge: int
    nest: int
    theta: int
    fibre: int
    thickness: int
    chromatin: int
    fibroblast: int
    lymphocyte: int
    tumour: int
    adipocyte: int

    @staticmethod
    def of(seed: int) -> _Seeds:
        return _Seeds(*(sub_seed(seed, 1000 + i) for i in range(10)))


@dataclass
class _Coarse:
    """Coarse maps of a region: global coarse-grid origin (cx0, cy0), float32 arrays (ch, cw)."""

    cx0: int
    cy0: int
    e: np.ndarray
    h: np.ndarray
    alpha: np.ndarray
    thickness: np.ndarray
    fat_flag: np.ndarray | None
    fat_edge: np.ndarray | None
    has_tissue: bool
    has_tumour: bool


def _mix(base: np.ndarray, value: float, weight: np.ndarray) -> np.ndarray:
    return base + (value - base) * weight


class SceneRenderer:
    """Renders any level-0 rectangle of one slide; create one per slide and reuse it for every tile."""

    def __init__(self, spec: SlideSpec) -> None:
        self.spec = spec
        self.blur_px = STAIN_SETS[spec.stain_set].blur_um / spec.mpp  # the scan's optical blur (sigma, level-0 px)
        self.margin = max(_MARGIN_PX, math.ceil(3.0 * self.blur_px))
        self.k = max(1, round(1.0 / spec.mpp))
        self.cu = self.k * spec.mpp  # µm per coarse pixel
        self.seeds = _Seeds.of(spec.seed)
        style = spec.style
        self.nest_step = max(1, round(style.nest_scale_um / self.cu))
        self.nest_tau = NormalDist().inv_cdf(1.0 - style.solid_cover)
        self.fibroblasts = CellGrid(self.seeds.fibroblast, 20.0, 0.85)
        self.lymphocytes = CellGrid(self.seeds.lymphocyte, 7.5, 0.7)
        self.tumour_cells = CellGrid(self.seeds.tumour, style.cell_spacing_um, 0.75)
        self.adipocytes = CellGrid(self.seeds.adipocyte, 72.0, 0.85)
        self.od = spec.stain.od_matrix()
        self.grain = self._grain_texture()

    # ------------------------------------------------------------------ shared point/grid functions

    def _step(self, um: float) -> int:
        return max(1, round(um / self.cu))

    def _to_coarse(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous coarse-grid coordinates (cell centres at integers) of µm positions."""
        return x_um / self.cu - 0.5, y_um / self.cu - 0.5

    def _tissue_sd_points(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Signed distance to the (roughened) tissue edge at points, µm."""
        gx, gy = self._to_coarse(x_um, y_um)
        sd = sample_field_points(self.spec.tissue, self.spec.field_mpp, x_um, y_um)
        return sd + 18.0 * fbm_points(self.seeds.edge, gx, gy, self._step(60.0)) + 5.0 * fbm_points(
            self.seeds.edge + 1, gx, gy, self._step(12.0), 1
        )

    def _tissue_sd_grid(self, cx0: int, cy0: int, cw: int, ch: int, xs: np.ndarray,
                        ys: np.ndarray) -> np.ndarray:
        sd = sample_field_grid(self.spec.tissue, self.spec.field_mpp, xs, ys)
        sd += 18.0 * fbm_grid(self.seeds.edge, cx0, cy0, cw, ch, self._step(60.0))
        sd += 5.0 * fbm_grid(self.seeds.edge + 1, cx0, cy0, cw, ch, self._step(12.0), 1)
        return sd

    def _nest_score(self, z: np.ndarray, density: np.ndarray, tumour_sd: np.ndarray) -> np.ndarray:
        """> 0 inside a solid tumour nest; ``z`` is unit-variance noise, ``tumour_sd`` µm."""
        fade = np.clip((50.0 - tumour_sd) / 50.0, 0.0, 1.0)
        return z - self.nest_tau - 3.0 * (1.0 - density) - 3.0 * fade

    def _nest_points(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        spec = self.spec
        gx, gy = self._to_coarse(x_um, y_um)
        z = fbm_points(self.seeds.nest, gx, gy, self.nest_step) / _FBM_STD
        d = sample_field_points(spec.nest, spec.field_mpp, x_um, y_um)
        t = sample_field_points(spec.tumour, spec.field_mpp, x_um, y_um)
        return self._nest_score(z, d, t)

    def _fat_points(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fat flag, membrane distance µm) at points: a point is fat if its adipocyte's centre is."""
        gx, gy = self._to_coarse(x_um, y_um)
        step = self._step(_FAT_WARP_SCALE_UM)
        xw = x_um + _FAT_WARP_UM * noise_points(self.seeds.adipocyte + 1, gx, gy, step)
        yw = y_um + _FAT_WARP_UM * noise_points(self.seeds.adipocyte + 2, gx, gy, step)
        return self._adipocytes(xw, yw)

    def _adipocytes(self, xw: np.ndarray, yw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voronoi adipocytes at warped µm positions; a cell is fat if the fat field is > 0 at its centre."""
        spec = self.spec
        return flagged_voronoi(self.adipocytes, xw, yw,
                               lambda cx, cy: sample_field_points(spec.fat, spec.field_mpp, cx, cy) > 0)

    def epithelium_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Whether each point (µm from the level-0 origin) is tumour epithelium: a solid nest or a tubule."""
        x_um, y_um = np.asarray(x_um, np.float64).ravel(), np.asarray(y_um, np.float64).ravel()
        hit = self._nest_points(x_um, y_um) > 0
        if x_um.size:
            glands = self.spec.glands
            near = glands.overlapping(x_um.min(), y_um.min(), x_um.max(), y_um.max())
            hit |= inside_glands(glands, near[glands.kind[near] == TUBULE], x_um, y_um, 1.0)
        return hit

    # ------------------------------------------------------------------ coarse pass

    def _warp_grid(self, cx0: int, cy0: int, cw: int, ch: int) -> tuple[np.ndarray, np.ndarray]:
        """Domain-warped µm coordinates of the coarse cells (fibres follow this warp, so they wave)."""
        xs = (np.arange(cx0, cx0 + cw) + 0.5)[None, :] * self.cu
        ys = (np.arange(cy0, cy0 + ch) + 0.5)[:, None] * self.cu
        step = self._step(_WARP_SCALE_UM)
        wx = noise_grid(self.seeds.theta, cx0, cy0, cw, ch, step)
        wy = noise_grid(self.seeds.theta + 1, cx0, cy0, cw, ch, step)
        return xs + (_WARP_UM / _NOISE_STD) * wx, ys + (_WARP_UM / _NOISE_STD) * wy

    def _warp_points(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gx, gy = self._to_coarse(x_um, y_um)
        step = self._step(_WARP_SCALE_UM)
        wx = noise_points(self.seeds.theta, gx, gy, step)
        wy = noise_points(self.seeds.theta + 1, gx, gy, step)
        return x_um + (_WARP_UM / _NOISE_STD) * wx, y_um + (_WARP_UM / _NOISE_STD) * wy

    def _fibre_angles(self) -> tuple[float, float]:
        """The slide's two dominant collagen directions (radians)."""
        phi = float(hash_uniform(self.seeds.fibre, 0)) * math.pi
        return phi, phi + 1.2

    def _orientation_blend_grid(self, cx0: int, cy0: int, cw: int, ch: int) -> np.ndarray:
        n = noise_grid(self.seeds.fibre + 9, cx0, cy0, cw, ch, self._step(1500.0))
        return np.clip(0.5 + 2.5 * n, 0.0, 1.0)

    def _theta_points(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Local fibre direction at points: tangent of the warped fibre lines of the dominant layer."""
        gx, gy = self._to_coarse(x_um, y_um)
        blend = np.clip(0.5 + 2.5 * noise_points(self.seeds.fibre + 9, gx, gy, self._step(1500.0)), 0, 1)
        phi1, phi2 = self._fibre_angles()
        phi = np.where(blend < 0.5, phi1, phi2)
        d = 2.0
        x0, y0 = self._warp_points(x_um, y_um)
        xa, ya = self._warp_points(x_um + d, y_um)
        xc, yc = self._warp_points(x_um, y_um + d)
        c, s = np.cos(phi), np.sin(phi)
        # gradient of the across-fibre coordinate q = -X sin(phi) + Y cos(phi); fibres run perpendicular to it
        qx = (-(xa - x0) * s + (ya - y0) * c) / d
        qy = (-(xc - x0) * s + (yc - y0) * c) / d
        return np.arctan2(qy, qx) + np.pi / 2

    def _stretched(self, seed: int, phi: float, along: float, across: float, wx: np.ndarray,
                   wy: np.ndarray) -> np.ndarray:
        """Value noise of ``along`` x ``across`` µm features in direction ``phi``, at warped µm positions."""
        c, s = math.cos(phi), math.sin(phi)
        p = (wx * c + wy * s) / along
        q = (-wx * s + wy * c) / across
        p0, q0 = int(math.floor(p.min())) - 2, int(math.floor(q.min())) - 2
        nx, ny = int(math.ceil(p.max())) - p0 + 3, int(math.ceil(q.max())) - q0 + 3
        nodes_p = np.arange(p0, p0 + nx)[None, :]
        nodes_q = np.arange(q0, q0 + ny)[:, None]
        lattice = hash_uniform(seed, nodes_p, nodes_q) * 2 - 1
        return cv2.remap(lattice.astype(np.float32), (p - p0).astype(np.float32), (q - q0).astype(np.float32),
                         cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)

    def _fibres(self, cx0: int, cy0: int, cw: int, ch: int) -> np.ndarray:
        """Collagen texture (about 0..1): fine fibres and coarser bundles along two wavy directions."""
        wx, wy = self._warp_grid(cx0, cy0, cw, ch)
        blend = self._orientation_blend_grid(cx0, cy0, cw, ch)
        out = np.zeros((ch, cw), np.float32)
        for n, (phi, weight) in enumerate(zip(self._fibre_angles(), (1.0 - blend, blend))):
            if not weight.any():
                continue
            fine = self._stretched(self.seeds.fibre + 2 * n, phi, 45.0, 2.4, wx, wy)
            bundle = self._stretched(self.seeds.fibre + 2 * n + 1, phi, 160.0, 12.0, wx, wy)
            out += weight * (0.5 + 0.45 * fine + 0.55 * bundle)
        return np.clip(out, 0.0, 1.2)

    def _coarse(self, x0: int, y0: int, w: int, h: int) -> _Coarse:
        """Coarse maps of level-0 ``[x0, x0+w) x [y0, y0+h)`` (multiples of k) plus a one-cell border."""
        spec, k, cu = self.spec, self.k, self.cu
        cx0, cy0 = x0 // k - 1, y0 // k - 1
        cw, ch = w // k + 2, h // k + 2
        xs = (np.arange(cx0, cx0 + cw) + 0.5) * cu
        ys = (np.arange(cy0, cy0 + ch) + 0.5) * cu
        tissue_sd = self._tissue_sd_grid(cx0, cy0, cw, ch, xs, ys)
        alpha = np.clip(tissue_sd / cu + 0.5, 0.0, 1.0)
        thickness = 1.0 + 0.08 * noise_grid(self.seeds.thickness, cx0, cy0, cw, ch, self._step(900.0))
        zeros = np.zeros((ch, cw), np.float32)
        if not alpha.any():
            return _Coarse(cx0, cy0, zeros, zeros, alpha, thickness, None, None, False, False)
        fib = self._fibres(cx0, cy0, cw, ch)
        e = _STROMA_E * (0.3 + 0.85 * fib)
        hh = 0.025 + 0.02 * fib
        lob = sample_field_grid(spec.lobule, spec.field_mpp, xs, ys)
        e *= 1.0 - 0.45 * lob
        hh += 0.05 * lob
        tumour_sd = sample_field_grid(spec.tumour, spec.field_mpp, xs, ys)
        desmo = np.clip(tumour_sd / 25.0 + 0.5, 0.0, 1.0)
        e *= 1.0 - 0.15 * desmo
        hh += 0.04 * desmo + 0.08 * sample_field_grid(spec.lymph, spec.field_mpp, xs, ys)
        has_tumour = bool((tumour_sd > -_NUCLEUS_REACH_UM).any())
        if has_tumour:
            z = fbm_grid(self.seeds.nest, cx0, cy0, cw, ch, self.nest_step) / _FBM_STD
            density = sample_field_grid(spec.nest, spec.field_mpp, xs, ys)
            nest = np.clip(self._nest_score(z, density, tumour_sd) * 4.0 + 0.5, 0.0, 1.0)
            e = _mix(e, _NEST_E, nest)
            hh = _mix(hh, spec.style.cytoplasm_h, nest)
        e *= 1.0 + 0.3 * np.exp(-np.maximum(tissue_sd, 0.0) / 20.0)
        fat_flag, fat_edge = self._fat_grid(cx0, cy0, xs, ys)
        return _Coarse(cx0, cy0, e.astype(np.float32), hh.astype(np.float32), alpha.astype(np.float32),
                       thickness, fat_flag, fat_edge, True, has_tumour)

    def _fat_grid(self, cx0: int, cy0: int, xs: np.ndarray,
                  ys: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Adipocyte flag (0/1) and membrane distance (µm) on the coarse grid; None where no fat is near.

        Same function as :meth:`_fat_points` (the warp noise is evaluated on the grid instead).
        """
        spec = self.spec
        candidate = sample_field_grid(spec.fat, spec.field_mpp, xs, ys) > -0.6
        if not candidate.any():
            return None, None
        rows, cols = np.nonzero(candidate)
        step = self._step(_FAT_WARP_SCALE_UM)
        ch, cw = candidate.shape
        wx = noise_grid(self.seeds.adipocyte + 1, cx0, cy0, cw, ch, step)[rows, cols]
        wy = noise_grid(self.seeds.adipocyte + 2, cx0, cy0, cw, ch, step)[rows, cols]
        flag, edge = self._adipocytes(xs[cols] + _FAT_WARP_UM * wx, ys[rows] + _FAT_WARP_UM * wy)
        if not flag.any():
            return None, None
        fat_flag = np.zeros(candidate.shape, np.float32)
        fat_edge = np.full(candidate.shape, 100.0, np.float32)
        fat_flag[rows, cols] = flag
        fat_edge[rows, cols] = np.minimum(edge, 100.0)
        return fat_flag, fat_edge

    # ------------------------------------------------------------------ nuclei of a region

    def _nuclei(self, x0_um: float, y0_um: float, x1_um: float, y1_um: float, gland_idx: np.ndarray,
                *, has_tumour: bool) -> Nuclei:
        """All nuclei whose outline may reach the µm box: stroma, lymphocytes, gland linings, tumour."""
        r = _NUCLEUS_REACH_UM
        box = (x0_um - r, y0_um - r, x1_um + r, y1_um + r)
        spec, glands = self.spec, self.spec.glands
        parts = self._stroma_nuclei(box, gland_idx)
        parts.append(lining_nuclei(glands, gland_idx, spec.style))
        if has_tumour:
            x, y, i, j = self.tumour_cells.centres(*box)
            keep = self._nest_points(x, y) > 0
            x, y, i, j = x[keep], y[keep], i[keep], j[keep]
            keep = ~inside_glands(glands, gland_idx, x, y, 1.0)
            key = (hash_u64(self.seeds.tumour, i[keep], j[keep]) >> np.uint64(2)).astype(np.int64)
            parts.append(tumour_nuclei(spec.style, self.seeds.tumour, key, x[keep], y[keep]))
        return Nuclei.concat(parts)

    def _in_tissue_stroma(self, x: np.ndarray, y: np.ndarray, gland_idx: np.ndarray) -> np.ndarray:
        """Points in tissue, outside fat cells, tumour nests and glands."""
        ok = self._tissue_sd_points(x, y) > 3.0
        if ok.any():
            ok[ok] = ~self._fat_points(x[ok], y[ok])[0]
        if ok.any():
            ok[ok] = self._nest_points(x[ok], y[ok]) < -0.3
        if ok.any():
            ok[ok] = ~inside_glands(self.spec.glands, gland_idx, x[ok], y[ok], 1.1)
        return ok

    def _stroma_nuclei(self, box: tuple[float, ...], gland_idx: np.ndarray) -> list[Nuclei]:
        """Fibroblasts (along the collagen) and lymphocytes, in stroma only (not fat cells, nests, glands)."""
        spec = self.spec
        fx, fy, fi, fj = self.fibroblasts.centres(*box)
        desmo = np.clip(sample_field_points(spec.tumour, spec.field_mpp, fx, fy) / 25.0 + 0.5, 0, 1)
        lob = sample_field_points(spec.lobule, spec.field_mpp, fx, fy)
        fkeep = self.fibroblasts.attribute(fi, fj, 2) < 0.2 + 0.3 * desmo + 0.25 * lob
        lx, ly, li, lj = self.lymphocytes.centres(*box)
        density = sample_field_points(spec.lymph, spec.field_mpp, lx, ly)
        lkeep = self.lymphocytes.attribute(li, lj, 2) < density
        xs = np.concatenate([fx[fkeep], lx[lkeep]])
        ys = np.concatenate([fy[fkeep], ly[lkeep]])
        ok = self._in_tissue_stroma(xs, ys, gland_idx)
        n = int(fkeep.sum())
        fkeep[fkeep] = ok[:n]
        lkeep[lkeep] = ok[n:]
        return [
            self._fibroblasts(fx[fkeep], fy[fkeep], fi[fkeep], fj[fkeep], desmo[fkeep]),
            self._lymphocytes(lx[lkeep], ly[lkeep], li[lkeep], lj[lkeep]),
        ]

    def _fibroblasts(self, x, y, i, j, desmo) -> Nuclei:
        grid = self.fibroblasts
        u = grid.attributes(i, j, 3, 4)
        angle = self._theta_points(x, y) + 0.4 * (u[0] - 0.5)
        a = 3.5 + 3.0 * u[1]
        b = 1.0 + 0.8 * u[2] + 0.7 * desmo
        seed = (hash_u64(grid.seed, i, j) >> np.uint64(2)).astype(np.int64)
        return Nuclei.build(x, y, a, b, angle, 0.5 + 0.3 * u[3], 0.08, shape_seed=seed)

    def _lymphocytes(self, x, y, i, j) -> Nuclei:
        grid = self.lymphocytes
        u = grid.attributes(i, j, 3, 3)
        a = 2.7 + 0.8 * u[0]
        seed = (hash_u64(grid.seed, i, j) >> np.uint64(2)).astype(np.int64)
        return Nuclei.build(x, y, a, a * (0.85 + 0.15 * u[1]), 2 * np.pi * u[2], 0.85 + 0.15 * u[1], 0.06,
                            shape_seed=seed)

    # ------------------------------------------------------------------ fine pass

    def _grain_texture(self) -> np.ndarray:
        """Periodic sensor grain (RGB, σ ≈ 1.6 grey levels), tiled so any 512+ px window is a slice."""
        rng = np.random.default_rng(sub_seed(self.spec.seed, 77))
        base = rng.normal(0.0, 1.6, (_GRAIN_PERIOD, _GRAIN_PERIOD, 3)).astype(np.float32)
        return np.tile(base, (5, 5, 1))

    def _upsample(self, coarse: np.ndarray, w: int, h: int) -> np.ndarray:
        """Coarse map (with its 1-cell border) to the level-0 region it covers."""
        k = self.k
        if k == 1:
            return coarse[1 : 1 + h, 1 : 1 + w]
        up = cv2.resize(coarse, (coarse.shape[1] * k, coarse.shape[0] * k), interpolation=cv2.INTER_LINEAR)
        return up[k : k + h, k : k + w]

    def render(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of level-0 pixels ``[x, x+w) x [y, y+h)``; may extend past the slide edge."""
        k = self.k
        x0 = (x - self.margin) // k * k
        y0 = (y - self.margin) // k * k
        pw = -(-(x + w + self.margin - x0) // k) * k
        ph = -(-(y + h + self.margin - y0) // k) * k
        coarse = self._coarse(x0, y0, pw, ph)
        e = self._upsample(coarse.e, pw, ph)
        hh = self._upsample(coarse.h, pw, ph)
        if coarse.has_tissue:
            e, hh = self._fine_detail(coarse, e.copy(), hh.copy(), x0, y0, pw, ph)
            scale = self._upsample(coarse.alpha * coarse.thickness, pw, ph)
            e *= scale
            hh *= scale
        rgb = self._to_rgb(e, hh, x0, y0, pw, ph)
        ox, oy = x - x0, y - y0
        return rgb[oy : oy + h, ox : ox + w]

    def _fine_detail(self, coarse: _Coarse, e: np.ndarray, hh: np.ndarray, x0: int, y0: int, pw: int,
                     ph: int) -> tuple[np.ndarray, np.ndarray]:
        """Fat membranes, glands and nuclei at level-0 resolution."""
        spec, mpp = self.spec, self.spec.mpp
        if coarse.fat_flag is not None and coarse.fat_edge is not None:
            flag = self._upsample(coarse.fat_flag, pw, ph)
            edge = self._upsample(coarse.fat_edge, pw, ph)
            membrane = np.clip(1.0 - (edge - 0.3) / 0.7, 0.0, 1.0)
            e = e + flag * (_FAT_E + _MEMBRANE_E * membrane - e)
            hh = hh + flag * (_FAT_H + 0.015 * membrane - hh)
        bx0, by0, bx1, by1 = x0 * mpp, y0 * mpp, (x0 + pw) * mpp, (y0 + ph) * mpp
        gland_idx = spec.glands.overlapping(bx0 - 2, by0 - 2, bx1 + 2, by1 + 2)
        if gland_idx.size:
            canv = GlandCanvases.empty((ph, pw))
            draw_glands(canv, spec.glands, gland_idx, x0, y0, mpp)
            e, hh = self._composite_glands(canv, e, hh)
        nuclei = self._nuclei(bx0, by0, bx1, by1, gland_idx, has_tumour=coarse.has_tumour)
        if len(nuclei):
            cover = np.zeros((ph, pw), np.uint8)
            dark = np.zeros((ph, pw), np.uint8)
            draw_nuclei(cover, dark, nuclei, x0, y0, mpp)
            chroma = noise_grid(self.seeds.chromatin, x0, y0, pw, ph, max(1, round(0.9 / mpp)))
            amp = 0.22 + 0.06 * spec.grade
            c = cover.astype(np.float32) * (1.0 / 255.0)
            hh = hh * (1.0 - c) + dark.astype(np.float32) * (_NUCLEUS_H / 255.0) * (1.0 + amp * chroma)
            e = e * (1.0 - 0.8 * c) + 0.12 * c
        return e, hh

    def _composite_glands(self, canv: GlandCanvases, e: np.ndarray,
                          hh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        layers = [
            (canv.epithelium, _EPITHELIUM_E, _EPITHELIUM_H),
            (canv.tumour, _NEST_E, self.spec.style.cytoplasm_h),
            (canv.wall, _WALL_E, _WALL_H),
            (canv.lumen, _LUMEN_E, _LUMEN_H),
            (canv.rbc, _RBC_E, _RBC_H),
        ]
        for canvas, ev, hv in layers:
            if cv2.countNonZero(canvas):
                wgt = canvas.astype(np.float32) * (1.0 / 255.0)
                e = _mix(e, ev, wgt)
                hh = _mix(hh, hv, wgt)
        return e, hh

    def _to_rgb(self, e: np.ndarray, hh: np.ndarray, x0: int, y0: int, pw: int, ph: int) -> np.ndarray:
        """Beer-Lambert: concentrations -> RGB, optical blur, grain, uint8."""
        od_h, od_e = self.od
        glass = self.spec.stain.glass_od
        # minus optical density per channel = -(cH * h_od + cE * e_od + glass_od)
        hh, e = hh.astype(np.float32, copy=False), e.astype(np.float32, copy=False)
        neg_od = [hh * float(-od_h[c]) + (e * float(-od_e[c]) - float(glass[c])) for c in range(3)]
        rgb = cv2.exp(cv2.merge(neg_od))
        sigma = self.blur_px
        if sigma > 0.25:
            rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
        rgb = cv2.scaleAdd(rgb, 255.0, self._grain_window(x0, y0, pw, ph))
        return cv2.convertScaleAbs(rgb)

    def _grain_window(self, x0: int, y0: int, pw: int, ph: int) -> np.ndarray:
        """The grain of level-0 pixels ``[x0, x0+pw) x [y0, y0+ph)`` (periodic in both axes)."""
        gy, gx = y0 % _GRAIN_PERIOD, x0 % _GRAIN_PERIOD
        if gy + ph <= self.grain.shape[0] and gx + pw <= self.grain.shape[1]:
            return self.grain[gy : gy + ph, gx : gx + pw]
        rows = (gy + np.arange(ph)) % _GRAIN_PERIOD
        cols = (gx + np.arange(pw)) % _GRAIN_PERIOD
        return self.grain[np.ix_(rows, cols)]
