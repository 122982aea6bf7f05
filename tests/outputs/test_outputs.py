"""Outputs: pyramidal mask TIFF, QuPath GeoJSON, overlay PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from h2gnet.io.annotations import rasterize
from h2gnet.io.raster import Raster
from h2gnet.outputs.geojson import mask_polygons, mask_to_geojson, write_geojson
from h2gnet.outputs.mask_tiff import resample_nearest, write_mask_tiff
from h2gnet.outputs.overlay import PRED_COLOR, TRUTH_COLOR, render_overlay, write_png

SLIDE_MPP = 0.25


def blob_mask(shape: tuple[int, int], seed: int = 0, sigma: float = 6.0) -> np.ndarray:
    """Smooth random blobs (True ~ half the pixels)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), sigma)
    return noise > np.median(noise)


def slide_dims(mask: Raster) -> tuple[int, int]:
    """(width, height) in level-0 px of the slide ``mask`` covers exactly."""
    d = mask.downsample
    return round(mask.shape[1] * d), round(mask.shape[0] * d)


# ----------------------------------------------------------------------------- mask TIFF


def test_mask_tiff_opens_in_openslide_as_pyramid(tmp_path):
    mask = Raster(blob_mask((1300, 900)), 4.0, SLIDE_MPP)
    path = write_mask_tiff(tmp_path / "mask.tiff", mask, slide_dims(mask))
    with openslide.OpenSlide(path) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(4.0)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(4.0)
        assert slide.level_count == 3
        assert slide.level_dimensions[0] == (900, 1300)
        assert max(slide.level_dimensions[-1]) <= 512
        assert slide.level_downsamples[1] == pytest.approx(2.0)
        level0 = np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]))
    np.testing.assert_array_equal(level0[..., 0], mask.array.astype(np.uint8) * 255)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3 and all(not p.subifds for p in tif.pages)
        for page in tif.pages:
            assert page.is_tiled and page.tilelength == page.tilewidth == 256
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert [p.subfiletype for p in tif.pages] == [0, 1, 1]
        level1 = tif.pages[1].asarray()
    # reduced levels are the nearest sample of the mask at each pixel centre
    np.testing.assert_array_equal(level1, mask.array[1::2, 1::2].astype(np.uint8) * 255)


def test_mask_tiff_resampled_to_finer_mpp_and_lzw(tmp_path):
    mask = Raster(blob_mask((300, 200), seed=1), 8.0, SLIDE_MPP)
    dims = slide_dims(mask)
    path = write_mask_tiff(tmp_path / "fine.tif", mask, dims, mpp=2.0, compression="lzw", tile=512)
    with openslide.OpenSlide(path) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(2.0)
        assert slide.level_dimensions[0] == (800, 1200)
        level0 = np.asarray(slide.read_region((0, 0), 0, (800, 1200)))[..., 0]
    expected = np.repeat(np.repeat(mask.array, 4, axis=0), 4, axis=1).astype(np.uint8) * 255
    np.testing.assert_array_equal(level0, expected)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.LZW and tif.pages[0].tilelength == 512


def test_resample_nearest_follows_pixel_centres():
    mask = Raster(np.array([[True, False, True]]), 2.0, 1.0)  # 3 px of 2 level-0 px each
    fine = resample_nearest(mask, 1.0, (6, 2))
    np.testing.assert_array_equal(fine.array, [[1, 1, 0, 0, 1, 1]] * 2)
    coarse = resample_nearest(Raster(np.eye(4, dtype=bool), 1.0, 1.0), 2.0, (4, 4))
    np.testing.assert_array_equal(coarse.array, [[1, 0], [0, 1]])


def test_small_label_mask_written_unchanged_single_level(tmp_path):
    labels = np.arange(60 * 40, dtype=np.uint16).reshape(60, 40) % 3
    mask = Raster(labels, 1.0, SLIDE_MPP)
    path = write_mask_tiff(tmp_path / "labels.tiff", mask, slide_dims(mask))
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1
        np.testing.assert_array_equal(tif.pages[0].asarray(), labels)


def test_mask_tiff_pads_off_by_one_and_rejects_other_slide(tmp_path):
    mask = Raster(np.ones((100, 80), bool), 4.0, SLIDE_MPP)
    path = write_mask_tiff(tmp_path / "pad.tiff", mask, (81 * 16, 100 * 16))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0].asarray()
    assert page.shape == (100, 81) and page[:, :80].min() == 255 and page[:, 80].max() == 0
    with pytest.raises(ValueError, match="needs"):
        write_mask_tiff(tmp_path / "bad.tiff", mask, (200 * 16, 100 * 16))
    assert not (tmp_path / "bad.tiff").exists()


def test_mask_tiff_failure_leaves_nothing(tmp_path):
    mask = Raster(np.zeros((20, 20), np.float32), 4.0, SLIDE_MPP)
    with pytest.raises(ValueError, match="dtype"):
        write_mask_tiff(tmp_path / "x.tiff", mask, slide_dims(mask))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- GeoJSON


def rasterise_pixel_centres(polygons: list[list[np.ndarray]], shape: tuple[int, int], d: float) -> np.ndarray:
    """Even-odd rasteriser by pixel centres for axis-aligned rings (level-0 px / d = mask px)."""
    toggle = np.zeros((shape[0], shape[1] + 1), np.uint8)
    for poly in polygons:
        for ring in poly:
            pts = np.round(np.asarray(ring, float) / d).astype(int)
            for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
                if x0 == x1 and y0 != y1:
                    toggle[min(y0, y1) : max(y0, y1), x0] ^= 1
    return np.bitwise_xor.accumulate(toggle, axis=1)[:, :-1].astype(bool)


def holes_and_islands() -> np.ndarray:
    """A block with two holes, an island inside one hole, a hole in that island, and a lone square."""
    m = np.zeros((60, 80), bool)
    m[5:50, 5:60] = True
    m[10:40, 10:40] = False  # hole 1
    m[15:35, 15:35] = True  # island in hole 1
    m[20:25, 20:25] = False  # hole in the island
    m[42:46, 45:55] = False  # hole 2
    m[52:58, 65:75] = True  # separate component
    return m


def signed_area(ring: list[list[float]]) -> float:
    pts = np.asarray(ring, float)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_geojson_structure_and_exact_round_trip():
    d = 4.0 / SLIDE_MPP
    mask = Raster(holes_and_islands(), 4.0, SLIDE_MPP)
    fc = mask_to_geojson(mask, min_area_um2=0)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 1
    feature = fc["features"][0]
    assert feature["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
    }
    geometry = feature["geometry"]
    assert geometry["type"] == "MultiPolygon"
    polygons = geometry["coordinates"]
    assert sorted(len(p) for p in polygons) == [1, 2, 3]  # lone square, island+hole, block+2 holes
    for poly in polygons:
        for k, ring in enumerate(poly):
            assert ring[0] == ring[-1] and len(ring) >= 5
            assert (signed_area(ring) > 0) == (k == 0)  # RFC 7946: exterior CCW, holes CW
    block = max(polygons, key=lambda p: signed_area(p[0]))
    xs, ys = np.asarray(block[0])[:, 0], np.asarray(block[0])[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5 * d, 60 * d, 5 * d, 50 * d)  # pixel edges, level 0
    back = rasterise_pixel_centres(polygons, mask.shape, d)
    np.testing.assert_array_equal(back, mask.array)


def test_geojson_round_trip_through_file_and_annotations_reader(tmp_path):
    from h2gnet.io.annotations import load_geojson

    mask = Raster(blob_mask((120, 160), seed=3, sigma=4.0), 2.0, SLIDE_MPP)
    path = write_geojson(tmp_path / "pred.geojson", mask_to_geojson(mask, min_area_um2=0))
    fc = json.loads(path.read_text())
    assert fc["features"][0]["geometry"]["type"] == "MultiPolygon"
    polygons = load_geojson(path, classes=["Tumor"])
    assert len(polygons) == len(fc["features"][0]["geometry"]["coordinates"])
    back = rasterise_pixel_centres(polygons, mask.shape, mask.downsample)
    assert dice(back, mask.array) >= 0.99
    np.testing.assert_array_equal(back, mask.array)  # pixel edges -> exact
    # the project's one reader and rasteriser (h2gnet.io.annotations) give the mask back at its resolution
    raster = rasterize(polygons, slide_dims(mask), SLIDE_MPP, 2.0)
    assert raster.shape == mask.shape and raster.array.dtype == bool
    np.testing.assert_array_equal(raster.array, mask.array)
    assert load_geojson(path, classes=["Stroma"]) == []


@pytest.mark.parametrize("seed", range(40))
def test_polygons_are_exact_and_valid_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 30, 2))
    mask = rng.random(shape) < rng.uniform(0.2, 0.8)
    polygons = mask_polygons(mask)
    area = 0.0
    for poly in polygons:
        for k, ring in enumerate(poly):
            steps = np.diff(np.vstack([ring, ring[:1]]), axis=0)
            assert np.all((steps[:, 0] == 0) ^ (steps[:, 1] == 0))  # axis-aligned, no zero-length edge
            assert len({tuple(p) for p in ring}) == len(ring)  # no vertex visited twice
            closed = np.vstack([ring, ring[:1]]).tolist()
            assert (signed_area(closed) > 0) == (k == 0)
            area += signed_area(closed)
    assert area == np.count_nonzero(mask)
    np.testing.assert_array_equal(rasterise_pixel_centres(
        [[np.vstack([r, r[:1]]) for r in p] for p in polygons], mask.shape, 1.0), mask)


def test_corner_touching_pixels_do_not_make_self_touching_rings():
    diagonal = np.array([[1, 0], [0, 1]], bool)
    assert len(mask_polygons(diagonal)) == 2  # two squares meeting at one point
    # a ring closed only through a corner: the enclosed pixel is a hole touching the exterior at one vertex
    ring = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0]], bool)
    (poly,) = mask_polygons(ring)
    assert len(poly) == 2
    hole = {tuple(p) for p in poly[1]}
    assert hole == {(1, 1), (2, 1), (2, 2), (1, 2)}
    assert {tuple(p) for p in poly[0]} & hole == {(2, 2)}


def test_min_area_drops_specks_and_fills_small_holes():
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    m[10, 10] = False  # 1-px hole
    m[20:28, 20:28] = False  # 64-px hole
    m[37, 37] = True  # 1-px speck
    mask = Raster(m, 2.0, SLIDE_MPP)  # 4 µm² per pixel
    fc = mask_to_geojson(mask, min_area_um2=20.0)
    (poly,) = [fc["features"][0]["geometry"]["coordinates"]]
    assert fc["features"][0]["geometry"]["type"] == "Polygon" and len(poly) == 2
    assert -signed_area(poly[1]) == pytest.approx(64 * mask.downsample**2)
    assert mask_to_geojson(Raster(np.zeros((5, 5), bool), 2.0, SLIDE_MPP))["features"] == []


def test_split_gives_one_feature_per_component():
    mask = Raster(holes_and_islands(), 4.0, SLIDE_MPP)
    fc = mask_to_geojson(mask, classification="Tumour", min_area_um2=0, split=True)
    assert len(fc["features"]) == 3
    assert {f["geometry"]["type"] for f in fc["features"]} == {"Polygon"}
    assert fc["features"][0]["properties"]["classification"]["name"] == "Tumour"


# ----------------------------------------------------------------------------- overlay


def test_render_overlay_draws_heatmap_outlines_and_legend(tmp_path):
    thumb = np.full((200, 300, 3), 128, np.uint8)
    prob = np.zeros((50, 75), np.float32)
    prob[25:, 40:] = 1.0
    pred = np.zeros((50, 75), bool)
    pred[10:30, 10:30] = True
    truth = np.zeros((50, 75), bool)
    truth[32:45, 5:30] = True
    out = render_overlay(
        thumb, Raster(prob, 8.0, SLIDE_MPP), Raster(pred, 8.0, SLIDE_MPP), Raster(truth, 8.0, SLIDE_MPP)
    )
    assert out.shape == thumb.shape and out.dtype == np.uint8
    assert not np.array_equal(out[150, 250], thumb[150, 250])  # p = 1: coloured
    np.testing.assert_array_equal(out[90, 220], thumb[90, 220])  # p = 0, no outline: untouched
    assert np.all(out[80, 80] == thumb[80, 80])  # inside the prediction, away from its outline
    assert np.any(np.all(out == PRED_COLOR, axis=-1))
    assert np.any(np.all(out == TRUTH_COLOR, axis=-1))
    assert not np.array_equal(out[2:6, 2:6], thumb[2:6, 2:6])  # legend box
    plain = render_overlay(thumb, None, None, legend=True)
    np.testing.assert_array_equal(plain, thumb)  # nothing to show, nothing drawn
    path = write_png(tmp_path / "overlay.png", out)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), out)


def test_render_overlay_rejects_non_rgb():
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(np.zeros((10, 10), np.float32), None, None)


def test_outputs_import_without_torch_or_matplotlib():
    code = (
        "import sys, h2gnet.outputs, h2gnet.evaluation; "
        "bad = {'torch', 'matplotlib'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
