from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import tumour_geojson
from h2gnet.errors import H2GNetError
from h2gnet.io.annotations import check_bounds, load_annotation, load_geojson, load_mask_image, rasterize


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_polygon_with_hole_rasterises_to_exact_area(tmp_path: Path) -> None:
    doc = {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
           "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 800, 800), _square(202, 202, 602, 602)]}}
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(doc))
    polys = load_geojson(path)
    assert len(polys) == 1 and len(polys[0]) == 2
    mask = rasterize(polys, (1000, 1000), slide_mpp=0.5, mpp=4.0)  # 8 level-0 px per raster px
    assert mask.shape == (125, 125)
    assert mask.array.sum() == 100 * 100 - 50 * 50  # pixel-centre rule: exact
    assert not mask.array[50, 50] and mask.array[10, 10] and not mask.array[110, 110]


def test_rasterise_uses_pixel_centres() -> None:
    # square (2,2)-(6,5) at d = 1: centres 2.5..5.5 in x, 2.5..4.5 in y -> 4×3 pixels
    polys = [[np.array([[2, 2], [6, 2], [6, 5], [2, 5]], float)]]
    m = rasterize(polys, (10, 10), 1.0, 1.0).array
    assert m.sum() == 12 and m[2:5, 2:6].all()
    # an edge at x = 6.2 does not include pixel 6 (centre 6.5)
    polys = [[np.array([[2, 2], [6.2, 2], [6.2, 5], [2, 5]], float)]]
    assert rasterize(polys, (10, 10), 1.0, 1.0).array.sum() == 12
    # an island inside a hole of another polygon is kept (union of polygons)
    outer = [np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float), np.array([[2, 2], [8, 2], [8, 8], [2, 8]], float)]
    island = [np.array([[4, 4], [6, 4], [6, 6], [4, 6]], float)]
    m = rasterize([outer, island], (10, 10), 1.0, 1.0).array
    assert m.sum() == 100 - 36 + 4


def test_multipolygon_and_class_filter(tmp_path: Path) -> None:
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "MultiPolygon", "coordinates": [[_square(0, 0, 80, 80)], [_square(100, 100, 180, 180)]]}},
        {"type": "Feature", "properties": {"classification": {"name": "Stroma"}},
         "geometry": {"type": "Polygon", "coordinates": [_square(300, 300, 380, 380)]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ]}
    path = tmp_path / "b.geojson"
    path.write_text(json.dumps(doc))
    assert len(load_geojson(path)) == 3
    assert len(load_geojson(path, classes=["tumor"])) == 2
    assert load_geojson(path, classes=["Necrosis"]) == []
    # a bare list of features, as some QuPath versions export
    path.write_text(json.dumps(doc["features"]))
    assert len(load_geojson(path, classes=["Stroma"])) == 1


def test_out_of_frame_annotations_rejected(tmp_path: Path) -> None:
    path = tumour_geojson(tmp_path / "c.geojson", (5000, 5000), 800)
    polys = load_geojson(path)
    with pytest.raises(H2GNetError, match="level-0 pixels") as err:
        check_bounds(polys, (2000, 1500), path)
    assert "c.geojson" in str(err.value)
    with pytest.raises(H2GNetError, match="coordinate frame"):
        load_annotation(path, (2000, 1500), 0.5, 8.0)
    check_bounds(polys, (6000, 6000), path)  # inside: fine


@pytest.mark.parametrize("text,problem", [("{not json", "not valid JSON"),
                                          ('{"type": "Polygon", "coordinates": [[["a", 1]]]}', "numbers")])
def test_malformed_geojson(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(H2GNetError, match=problem) as err:
        load_geojson(path)
    assert "bad.geojson" in str(err.value)


def test_mask_image_at_downsample(tmp_path: Path) -> None:
    mask = np.zeros((250, 500), np.uint8)
    mask[50:150, 100:300] = 255
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), mask)
    r = load_mask_image(path, (2000, 1000), slide_mpp=0.25, downsample=4)
    assert r.mpp == 1.0 and r.array.sum() == 100 * 200
    low = load_annotation(path, (2000, 1000), 0.25, mpp=4.0)
    assert low.shape == (62, 125) and abs(int(low.array.sum()) - 25 * 50) <= 50
    with pytest.raises(H2GNetError, match="wrong downsample") as err:
        load_mask_image(path, (2000, 1000), 0.25, downsample=2)
    assert "m.png" in str(err.value)


def test_geojson_and_mask_agree(tmp_path: Path) -> None:
    path = tumour_geojson(tmp_path / "t.geojson", (1000, 800), 300, hole=100)
    a = load_annotation(path, (2000, 1600), 0.5, 4.0, classes=["Tumor"])
    yy, xx = np.mgrid[0:200, 0:250]
    cx, cy = (xx + 0.5) * 8, (yy + 0.5) * 8
    d = np.hypot(cx - 1000, cy - 800)
    truth = (d < 300) & (d > 100)
    inter = np.logical_and(a.array, truth).sum()
    assert 2 * inter / (a.array.sum() + truth.sum()) > 0.97
