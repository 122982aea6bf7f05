"""Tests of the phantom cohort generator (h2gnet.synth) on tiny slides."""

from __future__ import annotations

import csv
import json
from collections import Counter

import cv2
import numpy as np
import openslide
import pytest

from h2gnet.errors import H2GNetError
from h2gnet.params import ParameterError
from h2gnet.synth import CohortConfig, make_cohort, make_slide_spec, plan_cohort, render_slide, tumour_geojson
from h2gnet.synth.cells import CellGrid, nearest_two
from h2gnet.synth.noise import fbm_grid, fbm_points, noise_grid, noise_points
from h2gnet.synth.scene import SceneRenderer
from h2gnet.synth.slide import slide_description
from h2gnet.synth.style import STAIN_SETS, random_stain

W, H = 2048, 1536


def _read_level(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    w, h = slide.level_dimensions[level]
    return np.asarray(slide.read_region((0, 0), level, (w, h)).convert("RGB"))


def _annotation_mask(geojson: dict, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Rasterise every Tumor polygon (exterior minus holes) at ``scale`` x level 0."""
    mask = np.zeros(shape, np.uint8)
    for feature in geojson["features"]:
        geom = feature["geometry"]
        polygons = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for rings in polygons:
            cv2.fillPoly(mask, [np.round(np.asarray(rings[0]) * scale).astype(np.int32)], 1)
            for hole in rings[1:]:
                cv2.fillPoly(mask, [np.round(np.asarray(hole) * scale).astype(np.int32)], 0)
    return mask.astype(bool)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Tiny slides with different layouts: name -> (path, spec)."""
    out = tmp_path_factory.mktemp("slides")
    layouts = {
        "pow2": (7, 3, 0.5, (1, 2, 4, 8)),
        "pow3": (8, 1, 0.2527, (1, 3, 9)),
        "pow4": (9, 2, 0.499, (1, 4, 16)),
        "single": (10, 2, 0.25, (1,)),
    }
    result = {}
    for name, (seed, grade, mpp, pyramid) in layouts.items():
        spec = make_slide_spec(seed, grade, W, H, mpp, pyramid)
        path = out / f"{name}.tiff"
        render_slide(path, spec)
        result[name] = (path, spec)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pow2", "pow3", "pow4", "single"])
def test_openslide_reads_geometry_and_mpp(rendered, name):
    path, spec = rendered[name]
    slide = openslide.OpenSlide(path)
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(spec.mpp, rel=1e-6)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(spec.mpp, rel=1e-6)
    assert slide.level_count == len(spec.pyramid)
    assert slide.level_dimensions[0] == (W, H)
    for got, want in zip(slide.level_downsamples, spec.pyramid):
        assert got == pytest.approx(want, rel=0.02)
    assert slide.level_dimensions == tuple(spec.level_dimensions())


@pytest.mark.parametrize("name", ["pow2", "pow3", "pow4"])
def test_reduced_levels_are_downscaled_level0(rendered, name):
    path, spec = rendered[name]
    slide = openslide.OpenSlide(path)
    level0 = _read_level(slide, 0).astype(np.float32)
    for level in range(1, slide.level_count):
        w, h = slide.level_dimensions[level]
        d = spec.pyramid[level]
        padded = cv2.copyMakeBorder(level0, 0, h * d - H, 0, w * d - W, cv2.BORDER_REPLICATE)
        expected = cv2.resize(padded, (w, h), interpolation=cv2.INTER_AREA)
        got = _read_level(slide, level).astype(np.float32)
        # JPEG (quality 90) of detail-dense small levels alone accounts for a few grey levels
        aligned = np.abs(got - expected)[1:-1, 1:-1].mean()
        shifted = np.abs(got[1:-1, 1:-1] - expected[1:-1, 2:]).mean()
        assert aligned < 6.0, f"level {level} is not level 0 downscaled"
        assert aligned < 0.6 * shifted, f"level {level} is misaligned with level 0"
        corr = np.corrcoef(got.mean(axis=2).ravel(), expected.mean(axis=2).ravel())[0, 1]
        assert corr > 0.95, f"level {level} does not follow level 0 (r={corr:.3f})"
        assert got.std() > 10  # not trivially flat: the slide has tissue and glass


def test_slide_shows_tissue_on_glass_in_he_colours(rendered):
    path, spec = rendered["pow2"]
    rgb = _read_level(openslide.OpenSlide(path), 0)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    tissue = hsv[..., 1] > 20  # the paper's saturation threshold
    assert 0.2 < tissue.mean() < 0.9
    glass = rgb[~tissue]
    assert glass.mean() > 225  # bright glass
    stained = rgb[tissue].astype(np.float32)
    # H&E: green is absorbed most (both stains), so tissue is pink/purple, never green
    assert (stained[:, 1] < stained[:, 0]).mean() > 0.9
    assert (stained[:, 1] < stained[:, 2]).mean() > 0.9


def test_rendering_is_deterministic(tmp_path, rendered):
    path, spec = rendered["pow3"]
    again = tmp_path / "again.tiff"
    render_slide(again, make_slide_spec(spec.seed, spec.grade, W, H, spec.mpp, spec.pyramid))
    assert again.read_bytes() == path.read_bytes()
    assert json.dumps(tumour_geojson(spec)) == json.dumps(
        tumour_geojson(make_slide_spec(spec.seed, spec.grade, W, H, spec.mpp, spec.pyramid))
    )
    other = make_slide_spec(spec.seed + 1, spec.grade, W, H, spec.mpp, spec.pyramid)
    assert json.dumps(tumour_geojson(other)) != json.dumps(tumour_geojson(spec))
    other_path = tmp_path / "other.tiff"
    render_slide(other_path, other)
    a = _read_level(openslide.OpenSlide(path), len(spec.pyramid) - 1).astype(np.float32)
    b = _read_level(openslide.OpenSlide(other_path), len(spec.pyramid) - 1).astype(np.float32)
    assert np.abs(a - b).mean() > 5


def test_tiles_agree_whatever_the_tiling(rendered):
    """A region rendered alone equals the same pixels cut from a larger render (no seams)."""
    _, spec = rendered["pow2"]
    renderer = SceneRenderer(spec)
    ys, xs = np.nonzero(spec.tumour > 0)
    cx = int(xs.mean() * spec.field_mpp / spec.mpp)
    cy = int(ys.mean() * spec.field_mpp / spec.mpp)
    big = renderer.render(cx - 300, cy - 200, 600, 400).astype(np.int16)
    small = renderer.render(cx - 123, cy - 77, 250, 190).astype(np.int16)
    diff = np.abs(big[123 : 123 + 190, 177 : 177 + 250] - small)
    assert diff.max() <= 3
    assert diff.mean() < 0.05


def test_noise_grid_and_points_agree():
    for step, tol in ((1, 1e-5), (3, 1e-5), (16, 1e-5), (31, 1e-5), (40, 5e-3), (90, 5e-3), (700, 5e-3)):
        grid = noise_grid(3, -50, 20, 90, 70, step)
        yy, xx = np.mgrid[20:90, -50:40]
        assert np.abs(noise_points(3, xx, yy, step) - grid).max() < tol, step
        part = noise_grid(3, -10, 35, 30, 20, step)
        assert np.array_equal(part, grid[15:35, 40:70]), step  # tiling-independent, bit for bit
    f = fbm_grid(4, 0, 0, 64, 64, 24)
    assert np.abs(fbm_points(4, *np.mgrid[0:64, 0:64][::-1], 24) - f).max() < 1e-5
    assert 0.2 < f.std() < 0.6


def test_voronoi_nearest_two_is_exact():
    grid = CellGrid(seed=5, spacing=20.0)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-100, 300, 500), rng.uniform(-100, 300, 500)
    bx, by, d1, d2 = nearest_two(grid, x, y)
    cx, cy, _, _ = grid.centres(-200, -200, 400, 400)
    dist = np.hypot(x[:, None] - cx[None], y[:, None] - cy[None])
    dist.sort(axis=1)
    assert np.allclose(d1, dist[:, 0], atol=1e-3)
    assert np.allclose(d2, dist[:, 1], atol=1e-3)
    assert np.allclose(np.hypot(bx - x, by - y), d1, atol=1e-3)


@pytest.mark.parametrize("name", ["pow2", "pow3", "single"])
def test_geojson_is_a_valid_tumor_annotation_within_the_slide(rendered, name):
    _, spec = rendered[name]
    gj = json.loads(json.dumps(tumour_geojson(spec)))
    assert gj["type"] == "FeatureCollection"
    assert len(gj["features"]) == 1
    feature = gj["features"][0]
    assert feature["type"] == "Feature"
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    geom = feature["geometry"]
    assert geom["type"] in ("Polygon", "MultiPolygon")
    polygons = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
    for rings in polygons:
        for ring in rings:
            pts = np.asarray(ring, float)
            assert len(pts) >= 4 and np.array_equal(pts[0], pts[-1])
            assert pts[:, 0].min() >= 0 and pts[:, 0].max() <= spec.width
            assert pts[:, 1].min() >= 0 and pts[:, 1].max() <= spec.height
    mask = _annotation_mask(gj, (spec.height, spec.width))
    # the region is inside the tissue and a plausible share of it (the spec asks 12-35 %, small slides vary)
    area = mask.mean()
    tissue = cv2.resize((spec.tissue > 0).astype(np.uint8), (spec.width, spec.height)) > 0
    assert 0.03 < area / tissue.mean() < 0.6
    assert (mask & ~tissue).sum() < 0.01 * mask.sum()


@pytest.mark.slow
@pytest.mark.parametrize("seed, grade", [(31, 1), (32, 3)])
def test_annotation_matches_rendered_tumour_region(tmp_path, seed, grade):
    """Inside the annotation the stain is markedly more haematoxylin-rich than in the other tissue.

    The slide is 1.5 x 1.15 mm so the region holds nests and stroma in realistic proportions.
    """
    w, h = 3072, 2304
    spec = make_slide_spec(seed, grade, w, h, 0.5, (1, 4))
    path = tmp_path / "s.tiff"
    render_slide(path, spec)
    rgb = _read_level(openslide.OpenSlide(path), 0).astype(np.float32)
    od = -np.log(np.maximum(rgb, 1.0) / 255.0).reshape(-1, 3) - spec.stain.glass_od
    conc, *_ = np.linalg.lstsq(np.stack([spec.stain.h_od, spec.stain.e_od], axis=1), od.T, rcond=None)
    haem = conc[0].reshape(h, w)
    inside = _annotation_mask(tumour_geojson(spec), (h, w))
    tissue = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2HSV)[..., 1] > 20
    outside = tissue & ~cv2.dilate(inside.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    assert inside.sum() > 0.03 * h * w and outside.sum() > 0.1 * h * w
    ratio = haem[inside & tissue].mean() / haem[outside].mean()
    assert ratio > 1.3
    # the same statistic with the annotation moved off the tumour shows no such excess
    shifted = np.roll(inside, (h // 2, w // 2), axis=(0, 1)) & tissue & ~inside
    if shifted.sum() > 0.02 * h * w:
        assert haem[shifted].mean() / haem[outside].mean() < ratio


def _region_patches(spec, renderer, patch_um=256.0, step_um=8.0):
    """Epithelium share of each 256 µm patch labelled tumour (> 25 % in the region, > 25 % tissue)."""
    from h2gnet.synth.fields import sample_field_points

    g = np.arange(step_um / 2, patch_um, step_um)
    shares = []
    for py in np.arange(0, spec.height * spec.mpp - patch_um, patch_um):
        for px in np.arange(0, spec.width * spec.mpp - patch_um, patch_um):
            xx, yy = (a.ravel() for a in np.meshgrid(px + g, py + g))
            tissue = sample_field_points(spec.tissue, spec.field_mpp, xx, yy) > 0
            region = sample_field_points(spec.tumour, spec.field_mpp, xx, yy) > 0
            if tissue.mean() > 0.25 and region.mean() > 0.25:
                shares.append(renderer.epithelium_at(xx, yy).mean())
    return np.asarray(shares)


@pytest.mark.parametrize("seed, grade", [(41, 1), (42, 2), (43, 3)])
def test_region_mixes_tumour_nests_with_plain_desmoplastic_stroma(seed, grade):
    """As in the paper's annotations, some tumour-labelled patches show no tumour cells, most do."""
    spec = make_slide_spec(seed, grade, 12000, 9000, 0.5, (1, 4))
    renderer = SceneRenderer(spec)
    shares = _region_patches(spec, renderer)
    assert len(shares) >= 30
    assert 0.05 <= (shares == 0).mean() <= 0.35
    assert np.median(shares) > 0.05
    # no tumour epithelium at all outside the region
    xx = np.random.default_rng(0).uniform(0, spec.width * spec.mpp, 20000)
    yy = np.random.default_rng(1).uniform(0, spec.height * spec.mpp, 20000)
    from h2gnet.synth.fields import sample_field_points

    outside = sample_field_points(spec.tumour, spec.field_mpp, xx, yy) < 0
    assert not renderer.epithelium_at(xx[outside], yy[outside]).any()


def test_tissue_and_region_sizes_follow_the_spec():
    for seed in range(6):
        spec = make_slide_spec(seed, 1 + seed % 3, 8000, 6000, 0.5, (1, 4))
        assert 0.35 < (spec.tissue > 0).mean() < 0.85
        assert 0.08 < spec.tumour_fraction_of_tissue() < 0.45
        assert ((spec.tumour > 0) & (spec.tissue <= 0)).sum() == 0


def test_render_failure_leaves_no_file(tmp_path, monkeypatch, rendered):
    _, spec = rendered["pow2"]
    calls = {"n": 0}
    original = SceneRenderer.render

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("boom")
        return original(self, *args)

    monkeypatch.setattr(SceneRenderer, "render", failing)
    target = tmp_path / "broken.tiff"
    with pytest.raises(RuntimeError, match="boom"):
        render_slide(target, spec)
    assert calls["n"] == 11
    assert list(tmp_path.iterdir()) == []


def test_bigtiff_is_readable(tmp_path):
    spec = make_slide_spec(3, 1, 1024, 768, 0.5, (1, 2))
    path = tmp_path / "big.tiff"
    render_slide(path, spec, bigtiff=True)
    assert path.read_bytes()[:4] == b"II+\x00"
    slide = openslide.OpenSlide(path)
    assert slide.level_dimensions == ((1024, 768), (512, 384))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)


def test_invalid_parameters_raise_clear_errors():
    with pytest.raises(H2GNetError, match="grade"):
        make_slide_spec(0, 4, W, H, 0.5, (1, 2))
    with pytest.raises(H2GNetError, match="multiple"):
        make_slide_spec(0, 1, W, H, 0.5, (1, 3, 4))
    with pytest.raises(H2GNetError, match="too small"):
        make_slide_spec(0, 1, 100, 100, 0.5, (1,))
    with pytest.raises(H2GNetError, match="at least one slide"):
        plan_cohort(0)


@pytest.mark.parametrize("n", [9, 10, 24, 31])
def test_splits_cover_every_grade(n):
    plan = plan_cohort(n, seed=n)
    grades = Counter(p.grade for p in plan)
    assert max(grades.values()) - min(grades.values()) <= 1
    cover = Counter((p.split, p.grade) for p in plan)
    assert all(cover[(s, g)] >= 1 for s in ("train", "val", "test") for g in (1, 2, 3))
    splits = Counter(p.split for p in plan)
    assert splits["train"] >= max(splits["val"], splits["test"])
    if n >= 15:
        assert 0.5 <= splits["train"] / n <= 0.7 and abs(splits["val"] - splits["test"]) <= 1


def test_split_fractions_are_stratified_by_grade():
    plan = plan_cohort(66, seed=1, val_fraction=0.091, test_fraction=0.5)  # the ablation's cohort
    cover = Counter((p.split, p.grade) for p in plan)
    assert {g: cover[("test", g)] for g in (1, 2, 3)} == {1: 11, 2: 11, 3: 11}
    assert {g: cover[("val", g)] for g in (1, 2, 3)} == {1: 2, 2: 2, 3: 2}
    with pytest.raises(H2GNetError, match="leave training slides"):
        plan_cohort(20, val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_few_slides_keep_train_and_test(n):
    splits = Counter(p.split for p in plan_cohort(n, seed=1))
    assert splits["train"] >= 1
    assert splits["test"] >= (1 if n >= 2 else 0)
    assert sum(splits.values()) == n


def test_default_cohort_varies_scanner_layouts():
    plan = plan_cohort(24, seed=0)
    layouts = {(p.mpp, p.pyramid) for p in plan}
    assert len(layouts) >= 5
    assert any(p.pyramid == (1,) for p in plan)
    assert any(p.pyramid[:3] == (1, 3, 9) for p in plan)
    assert any(p.pyramid[:3] == (1, 4, 16) for p in plan)
    assert {p.mpp for p in plan} >= {0.25, 0.2527, 0.5, 0.499}
    assert plan == plan_cohort(24, seed=0)
    assert plan != plan_cohort(24, seed=1)


def test_make_cohort_writes_slides_annotations_and_manifest(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", CohortConfig(slides=3, seed=2, width=1024, height=768),
                           progress=False, workers=1)
    assert manifest == tmp_path / "cohort" / "manifest.csv"
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["slide", "annotation", "grade", "split"]
    assert len(rows) == 3
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for row in rows:
        assert row["grade"] in {"1", "2", "3"}
        slide = openslide.OpenSlide(manifest.parent / row["slide"])
        assert slide.dimensions == (1024, 768)
        gj = json.loads((manifest.parent / row["annotation"]).read_text())
        assert gj["features"][0]["properties"]["classification"]["name"] == "Tumor"
    leftovers = [p.name for p in (tmp_path / "cohort").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_make_cohort_resumes_without_rerendering(tmp_path) -> None:
    manifest = make_cohort(tmp_path, CohortConfig(slides=2, seed=4, width=1024, height=1024), progress=False, workers=1)
    slides = sorted((tmp_path / "slides").glob("*.tiff"))
    stamps = {p: p.stat().st_mtime_ns for p in slides}
    slides[0].unlink()  # as if interrupted before this slide was written
    make_cohort(tmp_path, CohortConfig(slides=2, seed=4, width=1024, height=1024), progress=False, workers=1)
    assert slides[0].exists() and slides[1].stat().st_mtime_ns == stamps[slides[1]]
    assert manifest.exists()


# -- stain sets -------------------------------------------------------------------------------------
def test_default_stain_set_is_unchanged() -> None:
    """The reference set draws the very stain it drew before stain sets existed (recorded values)."""
    spec = make_slide_spec(11, 2, 1024, 768, 0.5, (1, 2))
    stain = spec.stain
    assert spec.stain_set == "reference"
    # The vectors are normalised with np.linalg.norm, whose BLAS dot product sums in another order with AVX2 than
    # with AVX-512 (last digit: 0.39134741191878974 vs ...986). A few ulps of tolerance still tell the same draw
    # from any other one (other draws differ by ~1e-2).
    close = {"rtol": 1e-12, "atol": 0.0}
    np.testing.assert_allclose(stain.h_od, [0.5806336130383863, 0.7432144655826646, 0.3324106880933038], **close)
    np.testing.assert_allclose(stain.e_od, [0.12675956356476994, 0.9114709080543022, 0.39134741191878986], **close)
    np.testing.assert_allclose((stain.h_scale, stain.e_scale), (1.1453131697365155, 1.1649507381585784), **close)
    np.testing.assert_allclose(
        stain.glass_od, [0.046170453076489426, 0.04569053334586507, 0.04243008562265839], **close)
    same = make_slide_spec(11, 2, 1024, 768, 0.5, (1, 2), stain_set="reference").stain
    assert np.array_equal(same.od_matrix(), stain.od_matrix()) and np.array_equal(same.glass_od, stain.glass_od)
    assert "stain_set" not in slide_description(spec)  # reference slides keep their bytes


def test_stain_sets_draw_alike_from_the_generator() -> None:
    """Every set makes the same draws, so whatever is drawn after the stain stays the same by seed."""
    rngs = {name: np.random.default_rng(5) for name in STAIN_SETS}
    for name, rng in rngs.items():
        random_stain(rng, name)
    after = {name: rng.random() for name, rng in rngs.items()}
    assert len(set(after.values())) == 1


def _tissue_colours(spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = SceneRenderer(spec).render(0, 0, spec.width, spec.height)
    tissue = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1] > 20
    return rgb[tissue].astype(np.float64), rgb[~tissue].astype(np.float64).mean(axis=0), tissue


@pytest.mark.parametrize("seed", [11, 13])
def test_alternative_stain_set_changes_colours_not_the_scene(seed: int) -> None:
    ref = make_slide_spec(seed, 2, 1024, 768, 0.5, (1, 2))
    alt = make_slide_spec(seed, 2, 1024, 768, 0.5, (1, 2), stain_set="alternative")
    assert alt.stain_set == "alternative" and "stain_set=alternative" in slide_description(alt)
    # the same scene: fields and glands are drawn before the stain
    assert np.array_equal(ref.tumour, alt.tumour) and np.array_equal(ref.glands.x, alt.glands.x)
    assert json.dumps(tumour_geojson(ref)) == json.dumps(tumour_geojson(alt))
    # other colours: bluer haematoxylin (absorbs more red), eosin that absorbs more blue, lighter eosin
    assert alt.stain.h_od[0] > ref.stain.h_od[0] + 0.05 and alt.stain.e_od[2] > ref.stain.e_od[2] + 0.05
    ref_px, ref_glass, ref_tissue = _tissue_colours(ref)
    alt_px, alt_glass, alt_tissue = _tissue_colours(alt)
    assert abs(ref_tissue.mean() - alt_tissue.mean()) < 0.03  # the same tissue is found
    assert np.linalg.norm(alt_px.mean(axis=0) - ref_px.mean(axis=0)) > 10
    assert alt_px[:, 1].mean() > ref_px[:, 1].mean() + 10  # lighter eosin lets more green through
    assert (alt_glass[2] - alt_glass[0]) < (ref_glass[2] - ref_glass[0]) - 3  # warmer (yellower) glass
    # still H&E: green absorbed most, tissue pink/purple
    assert (alt_px[:, 1] < alt_px[:, 0]).mean() > 0.9 and (alt_px[:, 1] < alt_px[:, 2]).mean() > 0.9


def test_defocused_set_blurs_the_alternative_scan_and_nothing_else() -> None:
    alt = make_slide_spec(17, 3, 768, 512, 0.4, (1, 2), stain_set="alternative")
    blur = make_slide_spec(17, 3, 768, 512, 0.4, (1, 2), stain_set="defocused")
    assert np.array_equal(alt.tumour, blur.tumour) and np.allclose(alt.stain.h_od, blur.stain.h_od)
    a = SceneRenderer(alt).render(0, 0, 768, 512).astype(np.float64)
    b = SceneRenderer(blur).render(0, 0, 768, 512).astype(np.float64)
    # fine detail at 1.6 µm/px (4× down, near what a classifier reads; the per-pixel grain averages out)
    sharp = {k: np.abs(cv2.Laplacian(cv2.resize(v.mean(axis=2), (192, 128), interpolation=cv2.INTER_AREA),
                                     cv2.CV_64F)).mean() for k, v in (("alt", a), ("blur", b))}
    assert sharp["blur"] < 0.5 * sharp["alt"]  # out of focus: much less detail
    assert np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max() < 3  # the same colours on average
    # rendered in pieces it is the same image: the margin covers the wider blur, no seams at tile borders
    left, right = SceneRenderer(blur).render(0, 0, 384, 512), SceneRenderer(blur).render(384, 0, 384, 512)
    assert np.abs(np.hstack([left, right]).astype(int) - b.astype(int)).max() <= 1


def test_invalid_stain_set_is_a_clear_error() -> None:
    from h2gnet.synth import CohortConfig

    for make in (lambda: make_slide_spec(0, 1, W, H, 0.5, (1,), stain_set="purple"),
                 lambda: plan_cohort(3, stain_set="purple"),
                 lambda: CohortConfig(stain_set="purple"),
                 lambda: make_cohort("/nonexistent/never", CohortConfig(slides=1, stain_set="purple"), progress=False)):
        with pytest.raises(ParameterError,
                           match=r"stain_set: must be one of reference, alternative, defocused \(got 'purple'\)"):
            make()


def test_cohort_plan_carries_its_stain_set() -> None:
    ref, alt = plan_cohort(6, seed=3), plan_cohort(6, seed=3, stain_set="alternative")
    assert {p.stain_set for p in ref} == {"reference"} and {p.stain_set for p in alt} == {"alternative"}
    assert [(p.name, p.seed, p.grade, p.split, p.width, p.height) for p in ref] == \
        [(p.name, p.seed, p.grade, p.split, p.width, p.height) for p in alt]
