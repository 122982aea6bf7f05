"""Drawing round structures (acini, ducts, tumour tubules, vessels) and the nuclei lining them."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from h2gnet.synth.cells import Nuclei
from h2gnet.synth.noise import hash_u64, hash_uniform
from h2gnet.synth.spec import ACINUS, DUCT, TUBULE, VESSEL, Glands
from h2gnet.synth.style import GradeStyle

_SHIFT = 4
_OUTLINE_VERTICES = 48


@dataclass
class GlandCanvases:
    """uint8 coverage canvases (0..255) of one tile, all the same shape.

    ``epithelium``: normal epithelial cytoplasm; ``tumour``: tubule cytoplasm;
    ``wall``: vessel wall; ``lumen``: empty lumina; ``rbc``: red blood cells.
    """

    epithelium: np.ndarray
    tumour: np.ndarray
    wall: np.ndarray
    lumen: np.ndarray
    rbc: np.ndarray

    @staticmethod
    def empty(shape: tuple[int, int]) -> GlandCanvases:
        """Blank canvases of ``shape`` (rows, columns)."""
        return GlandCanvases(*(np.zeros(shape, np.uint8) for _ in range(5)))


def _wobble(seed: np.ndarray, theta: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """Radial multiplier (N, K) of a gland outline at parametric angles ``theta`` (K,)."""
    h = hash_uniform(11, seed[:, None], np.arange(6)[None, :])
    t = theta[None, :]
    w = (h[:, 0:1] - 0.5) * np.cos(2 * t + 6.283 * h[:, 1:2]) + (h[:, 2:3] - 0.5) * np.cos(
        3 * t + 6.283 * h[:, 3:4]
    ) + 0.7 * (h[:, 4:5] - 0.5) * np.cos(5 * t + 6.283 * h[:, 5:6])
    return 1.0 + amplitude[:, None] * w


def _amplitude(glands: Glands, idx: np.ndarray) -> np.ndarray:
    """Outline irregularity: tumour tubules are angulated, normal structures smooth."""
    return np.where(glands.kind[idx] == TUBULE, 0.45, 0.12)


def gland_points(glands: Glands, idx: np.ndarray, theta: np.ndarray,
                 frac: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """µm positions (N, K) at parametric angles ``theta`` and radial fraction ``frac`` of the outline."""
    rad = _wobble(glands.seed[idx], theta, _amplitude(glands, idx)) * np.asarray(frac)
    ex = glands.ra[idx, None] * np.cos(theta)[None, :] * rad
    ey = glands.rb[idx, None] * np.sin(theta)[None, :] * rad
    c, s = np.cos(glands.angle[idx])[:, None], np.sin(glands.angle[idx])[:, None]
    return glands.x[idx, None] + ex * c - ey * s, glands.y[idx, None] + ex * s + ey * c


def inside_glands(glands: Glands, idx: np.ndarray, x_um: np.ndarray, y_um: np.ndarray,
                  scale: float = 1.05) -> np.ndarray:
    """Whether each point lies within ``scale`` x the plain outer ellipse of any gland in ``idx``."""
    hit = np.zeros(x_um.shape, bool)
    if idx.size == 0 or x_um.size == 0:
        return hit
    dx = x_um[:, None] - glands.x[idx][None, :]
    dy = y_um[:, None] - glands.y[idx][None, :]
    c, s = np.cos(glands.angle[idx])[None, :], np.sin(glands.angle[idx])[None, :]
    u = (dx * c + dy * s) / glands.ra[idx][None, :]
    v = (-dx * s + dy * c) / glands.rb[idx][None, :]
    return ((u * u + v * v) < scale * scale).any(axis=1)


def _to_canvas(x_um: np.ndarray, y_um: np.ndarray, ox: float, oy: float, mpp: float) -> np.ndarray:
    """Vertex coordinates << 4 (int32, (..., 2)) on a canvas whose corner is level-0 (ox, oy)."""
    px = (x_um / mpp - ox - 0.5) * (1 << _SHIFT)
    py = (y_um / mpp - oy - 0.5) * (1 << _SHIFT)
    return np.round(np.stack([px, py], axis=-1)).astype(np.int32)


def draw_glands(canvases: GlandCanvases, glands: Glands, idx: np.ndarray, ox: float, oy: float,
                mpp: float) -> None:
    """Draw the outlines, lumina and red cells of glands ``idx`` into ``canvases``."""
    if idx.size == 0:
        return
    theta = np.linspace(0, 2 * np.pi, _OUTLINE_VERTICES, endpoint=False)
    outer = _to_canvas(*gland_points(glands, idx, theta, 1.0), ox, oy, mpp)
    inner = _to_canvas(*gland_points(glands, idx, theta, glands.lumen[idx][:, None]), ox, oy, mpp)
    target = {ACINUS: canvases.epithelium, DUCT: canvases.epithelium, TUBULE: canvases.tumour,
              VESSEL: canvases.wall}
    for n, g in enumerate(idx):
        cv2.fillPoly(target[int(glands.kind[g])], [outer[n]], 255, cv2.LINE_AA, _SHIFT)
    for n, g in enumerate(idx):
        if glands.lumen[g] > 0.05:
            cv2.fillPoly(canvases.lumen, [inner[n]], 255, cv2.LINE_AA, _SHIFT)
    _draw_red_cells(canvases.rbc, glands, idx[glands.kind[idx] == VESSEL], ox, oy, mpp)


def _draw_red_cells(canvas: np.ndarray, glands: Glands, idx: np.ndarray, ox: float, oy: float,
                    mpp: float) -> None:
    """Erythrocytes (radius 3.4 µm) scattered in vessel lumina, 20-70 % filled."""
    rad = max(1, round(3.4 / mpp * (1 << _SHIFT)))
    for g in idx:
        seed = int(glands.seed[g])
        la, lb = glands.ra[g] * glands.lumen[g], glands.rb[g] * glands.lumen[g]
        fill = 0.2 + 0.5 * float(hash_uniform(seed, 0))
        n = int(min(80, fill * la * lb / 3.5**2))
        if n == 0:
            continue
        u = hash_uniform(seed, np.arange(n)[None, :], np.array([[1], [2]]))
        t, r = 2 * np.pi * u[0], 0.8 * np.sqrt(u[1])
        ex, ey = la * r * np.cos(t), lb * r * np.sin(t)
        c, s = np.cos(glands.angle[g]), np.sin(glands.angle[g])
        pts = _to_canvas(glands.x[g] + ex * c - ey * s, glands.y[g] + ex * s + ey * c, ox, oy, mpp)
        for p in pts:
            cv2.circle(canvas, (int(p[0]), int(p[1])), rad, 255, -1, cv2.LINE_AA, _SHIFT)


def _ring(glands: Glands, g: int, frac: float, spacing_um: float,
          channel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Evenly spaced points along a ring at radial ``frac``: (x µm, y µm, outward angle, index)."""
    mean_r = 0.5 * (glands.ra[g] + glands.rb[g]) * frac
    n = max(4, int(round(2 * np.pi * mean_r / spacing_um)))
    k = np.arange(n)
    jit = hash_uniform(int(glands.seed[g]), k, channel) - 0.5
    theta = 2 * np.pi * (k + 0.3 * jit) / n
    x, y = gland_points(glands, np.array([g]), theta, frac)
    outward = np.arctan2(y[0] - glands.y[g], x[0] - glands.x[g])
    return x[0], y[0], outward, k


def _normal_epithelium(glands: Glands, g: int) -> list[Nuclei]:
    """Luminal cells (one row in acini, two in ducts; radially oriented) and flat myoepithelial cells."""
    lum, seed = float(glands.lumen[g]), int(glands.seed[g])
    fracs = (0.5,) if glands.kind[g] == ACINUS else (0.28, 0.62)
    parts = []
    for row, f in enumerate(fracs):
        x, y, out, k = _ring(glands, g, lum + f * (1 - lum), 7.0, 10 + row)
        u = hash_uniform(seed, k[None, :], np.arange(20, 23)[:, None] + 10 * row)
        a = 3.3 + 0.8 * u[0]
        parts.append(Nuclei.build(x, y, a, a * (0.6 + 0.2 * u[1]), out, 0.55 + 0.18 * u[2], 0.05,
                                  shape_seed=seed + 100 * row + k))
    x, y, out, k = _ring(glands, g, 0.93, 15.0, 50)
    parts.append(Nuclei.build(x, y, 4.2, 1.4, out + np.pi / 2, 0.8, 0.03, shape_seed=seed + 1000 + k))
    return parts


def lining_nuclei(glands: Glands, idx: np.ndarray, style: GradeStyle) -> Nuclei:
    """Nuclei lining glands ``idx``: normal epithelium, tumour tubule cells, vessel endothelium."""
    parts: list[Nuclei] = [Nuclei.build(np.zeros(0), np.zeros(0), 0, 0, 0, 0)]
    for g in idx:
        kind, lum, seed = int(glands.kind[g]), float(glands.lumen[g]), int(glands.seed[g])
        if kind in (ACINUS, DUCT):
            parts.extend(_normal_epithelium(glands, g))
        elif kind == TUBULE:
            frac = lum + 0.5 * (1 - lum) if lum > 0.05 else 0.5
            x, y, out, k = _ring(glands, g, frac, 0.85 * style.cell_spacing_um, 60)
            parts.append(tumour_nuclei(style, seed, k, x, y, out))
        else:
            x, y, out, k = _ring(glands, g, lum, 20.0, 70)
            parts.append(Nuclei.build(x, y, 4.5, 1.2, out + np.pi / 2, 0.75, 0.02, shape_seed=seed + k))
    return Nuclei.concat(parts)


def tumour_nuclei(style: GradeStyle, seed: int, key: np.ndarray, x: np.ndarray, y: np.ndarray,
                  angle: np.ndarray | None = None) -> Nuclei:
    """Atypical tumour nuclei at (x, y) µm with the grade's size, pleomorphism, chromatin and mitoses.

    ``key`` (int array) identifies each cell for hashing; ``angle`` orients them
    (random if None).
    """
    u = hash_uniform(seed, key[None, :], np.arange(100, 108)[:, None])
    gauss = np.sqrt(-2 * np.log(np.maximum(u[0], 1e-12))) * np.cos(2 * np.pi * u[1])
    a = style.nucleus_radius_um * np.exp(style.size_sd * np.clip(gauss, -2.5, 2.5))
    aspect = 1.0 + (style.max_aspect - 1.0) * u[2]
    ang = 2 * np.pi * u[3] if angle is None else angle + 0.3 * (u[3] - 0.5)
    lo, hi = style.darkness
    dark = lo + (hi - lo) * u[4] * (0.6 + 0.4 * np.minimum(a / style.nucleus_radius_um, 1.5))
    mitosis = u[5] < style.mitosis_rate
    vesicular = (u[6] < style.vesicular) & ~mitosis
    irregular = np.where(mitosis, 0.6, style.irregularity * (0.5 + u[7]))
    dark = np.where(mitosis, 1.0, np.clip(dark, 0, 1))
    a = np.where(mitosis, a * 0.85, a)
    shape_seed = (hash_u64(seed, key, 99) >> np.uint64(2)).astype(np.int64)
    nucleolus = vesicular & (u[7] > 0.3)
    return Nuclei.build(x, y, a, a / aspect, ang, dark, irregular, rim=vesicular, nucleolus=nucleolus,
                        shape_seed=shape_seed)
