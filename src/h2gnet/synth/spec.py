"""The scene description of one phantom slide (:class:`SlideSpec`) and how it is drawn up.

A :class:`SlideSpec` holds only *low-frequency* information: fields on a coarse
grid (``field_mpp`` µm/px, 8 µm/px or coarser) and a list of round epithelial
structures (glands). All cellular detail is procedural from ``seed`` at render
time (:mod:`h2gnet.synth.scene`). Lengths are in µm unless a name says ``px``;
slide sizes are level-0 pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.synth.fields import (
    drop_small_parts,
    field_centres_um,
    fill_small_holes,
    sample_field_points,
    signed_distance_um,
    smooth_mask,
    smooth_noise,
)
from h2gnet.synth.style import STAIN_SET_RULE, GradeStyle, StainModel, grade_style, random_stain

#: Gland kinds (:attr:`Glands.kind`).
ACINUS, DUCT, TUBULE, VESSEL = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class Glands:
    """Elliptical structures, one entry per gland; all arrays have the same length.

    ``x``, ``y``: centre (µm from the level-0 origin); ``ra``, ``rb``: outer
    semi-axes (µm); ``angle``: orientation of ``ra`` (radians); ``lumen``: lumen
    semi-axes as a fraction of the outer ones; ``kind``: :data:`ACINUS` (normal
    lobular acinus), :data:`DUCT` (normal duct), :data:`TUBULE` (tumour tubule) or
    :data:`VESSEL` (small blood vessel); ``seed``: per-gland hash seed.
    """

    kind: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    angle: np.ndarray
    lumen: np.ndarray
    seed: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.size)

    def overlapping(self, x0_um: float, y0_um: float, x1_um: float, y1_um: float) -> np.ndarray:
        """Indices of glands whose bounding circle meets the box ``[x0, x1) x [y0, y1)`` (µm)."""
        r = self.ra
        hit = (self.x + r > x0_um) & (self.x - r < x1_um) & (self.y + r > y0_um) & (self.y - r < y1_um)
        return np.flatnonzero(hit)

    @staticmethod
    def concat(parts: list[Glands]) -> Glands:
        """All glands of ``parts``, in order."""
        names = ("kind", "x", "y", "ra", "rb", "angle", "lumen", "seed")
        return Glands(*(np.concatenate([getattr(p, n) for p in parts]) for n in names))


@dataclass(frozen=True, eq=False)
class SlideSpec:
    """Everything needed to render one phantom slide deterministically.

    Geometry: ``width`` x ``height`` level-0 pixels at ``mpp`` µm/px; ``pyramid``
    are the level downsamples (first 1, each a whole multiple of the one before);
    ``tile`` is the TIFF tile edge (px). Fields (float32, ``field_mpp`` µm/px):
    ``tissue`` and ``tumour`` are signed distances (µm, > 0 inside) to the tissue
    edge and to the tumour-region edge (the annotation is ``tumour > 0``);
    ``fat`` > 0 where tissue is adipose; ``lymph`` is lymphocyte density (0..1);
    ``lobule`` the weight of loose intralobular stroma (0..1); ``nest`` the tumour
    nest density inside the region (0..1; 0 = desmoplastic stroma only). ``stain_set``: the
    :data:`~h2gnet.synth.style.STAIN_SETS` entry ``stain`` was drawn from.
    """

    seed: int
    grade: int
    width: int
    height: int
    mpp: float
    pyramid: tuple[int, ...]
    tile: int
    field_mpp: float
    tissue: np.ndarray
    tumour: np.ndarray
    fat: np.ndarray
    lymph: np.ndarray
    lobule: np.ndarray
    nest: np.ndarray
    glands: Glands
    stain: StainModel
    style: GradeStyle
    jpeg_quality: int = 90
    stain_set: str = "reference"

    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each pyramid level: ``ceil(level-0 size / downsample)``."""
        return [(math.ceil(self.width / d), math.ceil(self.height / d)) for d in self.pyramid]

    def tumour_fraction_of_tissue(self) -> float:
        """Area of the tumour region over the tissue area (on the field grid)."""
        tissue = float((self.tissue > 0).sum())
        return float((self.tumour > 0).sum()) / tissue if tissue else 0.0


#: Smallest phantom slide side (level-0 px) and the pixel sizes (µm/px) the renderer draws.
MIN_SIDE = 256
MPP_RANGE = (0.05, 4.0)


def validate_geometry(width: int, height: int, mpp: float, pyramid: tuple[int, ...]) -> None:
    """Raise :class:`H2GNetError` for a slide size, pixel size or pyramid we cannot render."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise H2GNetError(None, f"slide size {width}x{height} px is too small (minimum {MIN_SIDE}x{MIN_SIDE})")
    if not (MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        raise H2GNetError(None, f"pixel size {mpp} µm/px is outside {MPP_RANGE[0]}..{MPP_RANGE[1]:g}")
    if not pyramid or pyramid[0] != 1:
        raise H2GNetError(None, f"pyramid {pyramid} must start with downsample 1")
    for a, b in zip(pyramid, pyramid[1:]):
        if b <= a or b % a:
            raise H2GNetError(None, f"pyramid {pyramid}: each downsample must be a multiple of the last")
    if math.ceil(min(width, height) / pyramid[-1]) < 16:
        raise H2GNetError(None, f"pyramid {pyramid}: smallest level of a {width}x{height} slide under 16 px")


def make_slide_spec(
    seed: int, grade: int, width: int, height: int, mpp: float, pyramid: tuple[int, ...], *,
    stain_set: str = "reference",
) -> SlideSpec:
    """Draw up the scene of one phantom H&E slide.

    ``seed`` fixes everything; ``grade`` (1, 2, 3) the tumour morphology; ``width``
    x ``height`` level-0 pixels at ``mpp`` µm/px; ``pyramid`` the level downsamples,
    e.g. ``(1, 2, 4, 8)``, ``(1, 3, 9)`` or ``(1,)``; ``stain_set`` the lab's stain
    colours (:data:`~h2gnet.synth.style.STAIN_SETS`). The stain is drawn last, so the
    same seed gives the same scene in every stain set.
    """
    stain_set = STAIN_SET_RULE.check("stain_set", stain_set)
    if grade not in (1, 2, 3):
        raise H2GNetError(None, f"grade must be 1, 2 or 3, not {grade}")
    pyramid = tuple(int(d) for d in pyramid)
    validate_geometry(width, height, mpp, pyramid)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32, 0x5EED])
    style = grade_style(grade)
    extent_um = max(width, height) * mpp
    field_mpp = max(8.0, extent_um / 1024.0)
    shape = (math.ceil(height * mpp / field_mpp), math.ceil(width * mpp / field_mpp))

    tissue = _smooth_distance(signed_distance_um(_tissue_mask(rng, shape, field_mpp), field_mpp))
    tumour = _smooth_distance(signed_distance_um(_tumour_mask(rng, tissue, field_mpp), field_mpp))
    tumour = np.minimum(tumour, tissue - 20.0)  # the region never reaches the tissue edge
    fat = _fat_field(rng, tissue, tumour, field_mpp)
    nest = _nest_density(rng, tumour, field_mpp)
    lymph = _lymph_field(rng, tissue, tumour, fat, field_mpp)
    lobules = _lobule_centres(rng, tissue, tumour, fat, field_mpp)
    lobule = _lobule_field(shape, field_mpp, lobules)
    fat = fat - 2.0 * lobule  # lobules sit in fibrous stroma, not in fat
    glands = Glands.concat(
        [
            _acini(rng, lobules),
            _ducts(rng, tissue, tumour, fat, field_mpp),
            _vessels(rng, tissue, tumour, fat, field_mpp),
            _tubules(rng, tumour, nest, field_mpp, style),
        ]
    )
    tile = 512 if min(width, height) >= 4096 else 256
    return SlideSpec(
        seed=int(seed), grade=grade, width=int(width), height=int(height), mpp=float(mpp), pyramid=pyramid,
        tile=tile, field_mpp=field_mpp, tissue=tissue, tumour=tumour, fat=fat, lymph=lymph, lobule=lobule,
        nest=nest, glands=glands, stain=random_stain(rng, stain_set), style=style, stain_set=stain_set,
    )


# ----------------------------------------------------------------------------------------------
# Tissue section and tumour region (binary masks on the field grid)


def _smooth_distance(sd: np.ndarray) -> np.ndarray:
    """Blur a signed-distance field (1.5 cells) so its zero contour is smooth, not a staircase of cells."""
    return cv2.GaussianBlur(sd, (0, 0), 1.5, borderType=cv2.BORDER_REPLICATE)


def _ellipse_score(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, a: float, b: float,
                   angle: float) -> np.ndarray:
    """1 at (cx, cy), 0 on the ellipse with semi-axes a, b (µm) rotated by ``angle``; negative outside."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xs - cx, ys - cy
    u, v = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
    return (1.0 - np.sqrt(u * u + v * v)).astype(np.float32)


def _tissue_mask(rng: np.random.Generator, shape: tuple[int, int], field_mpp: float) -> np.ndarray:
    """One to three large irregular blobs covering ~45-72 % of the slide, clear of its border."""
    h, w = shape
    xs, ys = field_centres_um(shape, field_mpp)
    wu, hu = w * field_mpp, h * field_mpp
    n = int(rng.choice([1, 1, 2, 3]))
    score = np.full(shape, -np.inf, np.float32)
    for _ in range(n):
        if n == 1:
            cx, cy = wu * rng.uniform(0.45, 0.55), hu * rng.uniform(0.45, 0.55)
            a, b = wu * rng.uniform(0.34, 0.46), hu * rng.uniform(0.34, 0.46)
        else:
            cx, cy = wu * rng.uniform(0.28, 0.72), hu * rng.uniform(0.28, 0.72)
            a, b = wu * rng.uniform(0.22, 0.34), hu * rng.uniform(0.22, 0.34)
        score = np.maximum(score, _ellipse_score(xs, ys, cx, cy, a, b, rng.uniform(-0.5, 0.5)))
    side = min(h, w)
    score += 0.30 * smooth_noise(rng, shape, 0.15 * side) + 0.10 * smooth_noise(rng, shape, 0.05 * side)
    # a smooth penalty near the slide border keeps glass around the section without cutting it straight
    border = np.minimum(np.minimum(xs, wu - xs) / wu, np.minimum(ys, hu - ys) / hu)
    score -= 3.0 * (1.0 - _smoothstep(border / 0.09))
    coverage = rng.uniform(0.45, 0.70)
    mask = score > np.quantile(score, 1.0 - coverage)
    mask = drop_small_parts(smooth_mask(mask, 1.5), 0.03)
    return fill_small_holes(mask, (300.0 / field_mpp) ** 2)


def _pick_weighted(rng: np.random.Generator, weights: np.ndarray, n: int, field_mpp: float) -> np.ndarray:
    """``n`` points (µm, shape (n, 2) as x, y) drawn with probability ∝ ``weights`` on the field grid."""
    flat = np.clip(weights.ravel().astype(np.float64), 0, None)
    total = flat.sum()
    if n <= 0 or total <= 0:
        return np.zeros((0, 2))
    idx = rng.choice(flat.size, size=n, p=flat / total)
    r, c = np.divmod(idx, weights.shape[1])
    jitter = rng.uniform(0, 1, (n, 2))
    return np.stack([(c + jitter[:, 0]) * field_mpp, (r + jitter[:, 1]) * field_mpp], axis=1)


def _tumour_mask(rng: np.random.Generator, tissue: np.ndarray, field_mpp: float) -> np.ndarray:
    """One or two smooth lobulated blobs inside the tissue, ~12-35 % of the tissue area."""
    shape = tissue.shape
    tissue_px = float((tissue > 0).sum())
    margin = float(np.clip(0.05 * min(shape) * field_mpp, 60.0, 400.0))
    while margin > 2 * field_mpp and (tissue > margin).sum() < 0.25 * tissue_px:
        margin *= 0.6
    inner = tissue > margin
    target = rng.uniform(0.12, 0.35) * tissue_px
    n_foci = 1 if rng.random() < 0.7 else 2
    radius = math.sqrt(target / math.pi / n_foci) * field_mpp
    xs, ys = field_centres_um(shape, field_mpp)
    depth = np.where(inner, tissue - margin, 0.0) ** 2
    score = np.full(shape, -np.inf, np.float32)
    for cx, cy in _pick_weighted(rng, depth, n_foci, field_mpp):
        r = radius * rng.uniform(0.8, 1.2)
        aspect = rng.uniform(0.6, 1.0)
        score = np.maximum(score, _ellipse_score(xs, ys, cx, cy, r, r * aspect, rng.uniform(0, math.pi)))
    lobe = radius / field_mpp
    score += 0.22 * smooth_noise(rng, shape, lobe / 2.0) + 0.08 * smooth_noise(rng, shape, lobe / 5.0)
    score[~inner] = -np.inf
    k = max(1, min(int(target), int(inner.sum())))
    threshold = np.partition(score.ravel(), -k)[-k]
    mask = smooth_mask(score >= threshold, 1.2) & inner
    mask = drop_small_parts(mask, 0.1)
    return fill_small_holes(mask, 0.05 * mask.sum())


# ----------------------------------------------------------------------------------------------
# Tissue-type fields


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, smooth cubic in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _fat_field(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray,
               field_mpp: float) -> np.ndarray:
    """Adipose score (> 0 = fat): 15-50 % of the non-tumour tissue, a few entrapped islands in the region."""
    shape = tissue.shape
    side_um = min(shape) * field_mpp
    # adipose lobules at three scales (capped by the slide size): mm patches, 0.7 mm lobules, 0.2 mm detail
    f = 0.8 * smooth_noise(rng, shape, min(2500.0, 0.3 * side_um) / field_mpp)
    f += 0.6 * smooth_noise(rng, shape, min(700.0, 0.25 * side_um) / field_mpp)
    f += 0.3 * smooth_noise(rng, shape, min(220.0, 0.1 * side_um) / field_mpp)
    outside = (tissue > 0) & (tumour <= 0)
    region = tumour > 0
    thr_out = np.quantile(f[outside], 1.0 - rng.uniform(0.15, 0.5)) if outside.any() else 0.0
    thr_in = np.quantile(f[region], 1.0 - rng.uniform(0.02, 0.08)) if region.any() else thr_out
    w_in = _smoothstep(tumour / 60.0)
    return ((1.0 - w_in) * (f - thr_out) + w_in * (f - thr_in)).astype(np.float32)


def _nest_density(rng: np.random.Generator, tumour: np.ndarray, field_mpp: float) -> np.ndarray:
    """Tumour-nest density in the region: 0 (desmoplastic stroma only) on ~25-38 % of its area."""
    shape = tumour.shape
    scale = 700.0 / field_mpp
    n = smooth_noise(rng, shape, scale) + 0.3 * smooth_noise(rng, shape, scale / 3.0)
    region = tumour > 0
    q = np.quantile(n[region], rng.uniform(0.25, 0.38)) if region.any() else 0.0
    return np.where(region, np.clip((n - q) / 0.25, 0.0, 1.0), 0.0).astype(np.float32)


def _add_blob(field: np.ndarray, field_mpp: float, cx: float, cy: float, sigma: float, amp: float) -> None:
    """In place: ``field = max(field, amp * exp(-(r / sigma)**3))`` in a window around (cx, cy) µm."""
    h, w = field.shape
    reach = 2.5 * sigma / field_mpp
    c0, c1 = max(0, int(cx / field_mpp - reach)), min(w, int(cx / field_mpp + reach) + 2)
    r0, r1 = max(0, int(cy / field_mpp - reach)), min(h, int(cy / field_mpp + reach) + 2)
    if c0 >= c1 or r0 >= r1:
        return
    xs = (np.arange(c0, c1) + 0.5)[None, :] * field_mpp
    ys = (np.arange(r0, r1) + 0.5)[:, None] * field_mpp
    r = np.hypot(xs - cx, ys - cy) / sigma
    np.maximum(field[r0:r1, c0:c1], amp * np.exp(-(r**3)), out=field[r0:r1, c0:c1])


def _area_mm2(mask: np.ndarray, field_mpp: float) -> float:
    """Area of a field-grid mask in mm²."""
    return float(mask.sum()) * field_mpp**2 / 1e6


def _lymph_field(
    rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray, fat: np.ndarray, field_mpp: float
) -> np.ndarray:
    """Lymphocyte density: aggregates (mostly outside the region), a peritumoural rim, sparse background."""
    stroma = (tissue > 40) & (fat < 0)
    lymph = np.where(stroma, 0.01, 0.0).astype(np.float32)
    lymph = np.maximum(lymph, (0.05 * (tumour > 0)).astype(np.float32))
    rim = 0.06 * np.exp(-((tumour / 120.0) ** 2)) * (tissue > 0)
    lymph = np.maximum(lymph, rim.astype(np.float32))
    outside = stroma & (tumour < -60)
    n_out = int(rng.poisson(0.8 * _area_mm2(outside, field_mpp))) + 1
    n_in = int(rng.poisson(0.3 * _area_mm2(stroma & (tumour > 60), field_mpp)))
    inside = stroma & (tumour > 60)
    centres = [_pick_weighted(rng, outside, n_out, field_mpp), _pick_weighted(rng, inside, n_in, field_mpp)]
    for cx, cy in np.concatenate(centres):
        _add_blob(lymph, field_mpp, cx, cy, rng.uniform(40.0, 140.0), rng.uniform(0.55, 0.92))
    return lymph


# ----------------------------------------------------------------------------------------------
# Glands: normal lobules (acini), ducts, vessels and tumour tubules


def _glands(kind: int, xy: np.ndarray, ra, rb, angle, lumen, rng: np.random.Generator) -> Glands:
    """:class:`Glands` of one ``kind`` at centres ``xy`` (n, 2) µm; scalars broadcast to n; fresh seeds."""
    n = len(xy)

    def full(v) -> np.ndarray:
        return np.broadcast_to(np.asarray(v, np.float64), (n,)).copy()

    return Glands(
        kind=np.full(n, kind, np.int8), x=xy[:, 0].copy(), y=xy[:, 1].copy(), ra=full(ra), rb=full(rb),
        angle=full(angle), lumen=full(lumen), seed=rng.integers(0, 2**62, n, dtype=np.int64),
    )


def _thin(xy: np.ndarray, radius: np.ndarray, gap: float) -> np.ndarray:
    """Greedy keep-mask so that kept circles are at least ``gap`` µm apart (earlier ones win)."""
    keep = np.ones(len(xy), bool)
    if len(xy) < 2:
        return keep
    from scipy.spatial import cKDTree  # imported here: only rendering needs SciPy

    pairs = cKDTree(xy).query_pairs(2 * float(radius.max()) + gap, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    i, j = pairs[:, 0], pairs[:, 1]
    close = np.hypot(*(xy[i] - xy[j]).T) < radius[i] + radius[j] + gap
    for a, b in sorted(map(tuple, pairs[close].tolist())):
        if keep[a] and keep[b]:
            keep[b] = False
    return keep


def _eligible_stroma(tissue: np.ndarray, tumour: np.ndarray, fat: np.ndarray, edge_um: float,
                     tumour_um: float) -> np.ndarray:
    """Non-fatty stroma at least ``edge_um`` inside the tissue and ``tumour_um`` outside the region."""
    return (tissue > edge_um) & (tumour < -tumour_um) & (fat < -0.15)


def _lobule_centres(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray, fat: np.ndarray,
                    field_mpp: float) -> np.ndarray:
    """Lobules: rows of (x µm, y µm, radius µm) in non-fatty stroma outside the tumour region."""
    ok = _eligible_stroma(tissue, tumour, fat, 150.0, 200.0)
    n = int(rng.poisson(0.6 * _area_mm2(ok, field_mpp))) + (1 if ok.any() else 0)
    xy = _pick_weighted(rng, ok, n, field_mpp)
    radius = rng.uniform(140.0, 380.0, len(xy))
    keep = _thin(xy, radius, 40.0)
    return np.column_stack([xy[keep], radius[keep]]) if len(xy) else np.zeros((0, 3))


def _lobule_field(shape: tuple[int, int], field_mpp: float, lobules: np.ndarray) -> np.ndarray:
    """Weight of loose intralobular stroma (0..1) around each lobule."""
    field = np.zeros(shape, np.float32)
    for cx, cy, r in lobules:
        _add_blob(field, field_mpp, cx, cy, 1.05 * r, 1.0)
    return field


def _acini(rng: np.random.Generator, lobules: np.ndarray) -> Glands:
    """Acini (outer radius 14-26 µm, not touching) scattered over each lobule's disc."""
    parts = []
    for cx, cy, r_lob in lobules:
        n_cand = int(3 * (r_lob / 55.0) ** 2)
        rad = r_lob * np.sqrt(rng.uniform(0, 1, n_cand))
        phi = rng.uniform(0, 2 * math.pi, n_cand)
        xy = np.column_stack([cx + rad * np.cos(phi), cy + rad * np.sin(phi)])
        ra = rng.uniform(14.0, 26.0, n_cand)
        keep = _thin(xy, ra, 8.0)
        m = int(keep.sum())
        rb = ra[keep] * rng.uniform(0.75, 1.0, m)
        angle, lumen = rng.uniform(0, math.pi, m), rng.uniform(0.3, 0.5, m)
        parts.append(_glands(ACINUS, xy[keep], ra[keep], rb, angle, lumen, rng))
    return Glands.concat(parts) if parts else _glands(ACINUS, np.zeros((0, 2)), 0, 0, 0, 0, rng)


def _ducts(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray, fat: np.ndarray,
           field_mpp: float) -> Glands:
    """Normal ducts (radius 35-110 µm, two-layer epithelium), ~0.35 per mm² of eligible stroma."""
    ok = _eligible_stroma(tissue, tumour, fat, 200.0, 250.0)
    n = int(rng.poisson(0.35 * _area_mm2(ok, field_mpp)))
    xy = _pick_weighted(rng, ok, n, field_mpp)
    ra = rng.uniform(35.0, 110.0, len(xy))
    keep = _thin(xy, ra, 60.0)
    m = int(keep.sum())
    return _glands(DUCT, xy[keep], ra[keep], ra[keep] * rng.uniform(0.45, 0.9, m), rng.uniform(0, math.pi, m),
                   rng.uniform(0.45, 0.7, m), rng)


def _vessels(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray, fat: np.ndarray,
             field_mpp: float) -> Glands:
    """Small vessels (radius 6-24 µm) with red cells, ~3 per mm² of tissue, also in fat septa and tumour."""
    ok = (tissue > 30) & (fat < 0.3)
    n = int(rng.poisson(3.0 * _area_mm2(ok, field_mpp)))
    xy = _pick_weighted(rng, ok, n, field_mpp)
    ra = rng.uniform(6.0, 24.0, len(xy))
    keep = _thin(xy, ra, 20.0)
    m = int(keep.sum())
    rb = ra[keep] * rng.uniform(0.45, 1.0, m)
    angle, lumen = rng.uniform(0, math.pi, m), rng.uniform(0.75, 0.85, m)
    return _glands(VESSEL, xy[keep], ra[keep], rb, angle, lumen, rng)


def _tubules(rng: np.random.Generator, tumour: np.ndarray, nest: np.ndarray, field_mpp: float,
             style: GradeStyle) -> Glands:
    """Tumour tubules where nests are dense; their number follows the grade's ``tubule_cover``."""
    weight = np.where(tumour > 45.0, np.clip((nest - 0.15) / 0.85, 0.0, 1.0), 0.0)
    size = {1: 1.0, 2: 0.9, 3: 0.8}[style.grade]
    mean_area = math.pi * (19.0 * size) ** 2 * 0.8
    n = int(style.tubule_cover * float(weight.sum()) * field_mpp**2 / mean_area)
    xy = _pick_weighted(rng, weight, 2 * n, field_mpp)
    ra = rng.uniform(11.0, 27.0, len(xy)) * size
    keep = _thin(xy, ra, 5.0)
    keep &= np.cumsum(keep) <= n
    xy, ra = xy[keep], ra[keep]
    inside = sample_field_points(tumour, field_mpp, xy[:, 0], xy[:, 1]) > ra + 10.0
    xy, ra = xy[inside], ra[inside]
    m = len(xy)
    rb = ra * rng.uniform(0.55, 1.0, m)
    lumen = rng.uniform(0.30, 0.55, m) * (1.15 if style.grade == 1 else 1.0)
    # the rim must hold a row of nuclei; too small a tubule becomes a solid ball of cells
    lumen = np.minimum(lumen, 1.0 - 2.6 * style.nucleus_radius_um / rb)
    lumen = np.where(lumen < 0.15, 0.0, lumen)
    return _glands(TUBULE, xy, ra, rb, rng.uniform(0, math.pi, m), lumen, rng)
