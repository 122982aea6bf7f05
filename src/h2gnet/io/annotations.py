"""Tumour annotations: QuPath GeoJSON exports and mask images.

GeoJSON coordinates are **level-0 pixels** (QuPath's export frame). Polygons
are returned as lists of rings, each a float64 ``(N, 2)`` array of (x, y); the
first ring is the exterior, the rest are holes.

Mask images (PNG/TIFF, non-zero = tumour) are stored at a stated
``downsample`` relative to level 0; the paper exported PNGs at downsample 4.

Rasterisation always happens at a requested low resolution (µm/px): no
level-0 canvas is ever built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.io.canvas import check_canvas
from h2gnet.io.raster import Raster
from h2gnet.io.tiff import read_tiff_page

Polygon = list[np.ndarray]

GEOJSON_SUFFIXES = {".geojson", ".json"}
MASK_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}
#: The paper's mask export downsample.
DEFAULT_MASK_DOWNSAMPLE = 4.0
#: Annotations may overhang the slide by this fraction of its size before they are rejected.
BOUNDS_SLACK = 0.02


# -- GeoJSON ---------------------------------------------------------------------------
#: Geometries that hold areas (read) and those that do not (QuPath points/lines: skipped).
AREA_GEOMETRIES = ("Polygon", "MultiPolygon", "GeometryCollection")
OTHER_GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString")
#: Deepest GeometryCollection / list-of-features nesting accepted.
MAX_NESTING = 16


class _Invalid(Exception):
    """A structural problem at a location in the document (becomes an H2GNetError naming the file)."""


def _features(doc: Any, where: str = "", depth: int = 0) -> Iterator[tuple[str, dict]]:
    """(location, feature) of every Feature in a GeoJSON document; :class:`_Invalid` for a bad structure."""
    if depth > MAX_NESTING:
        raise _Invalid(f"{where or 'the document'} is nested more than {MAX_NESTING} levels deep")
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _features(item, f"{where}[{i}]", depth + 1)
        return
    if not isinstance(doc, dict):
        raise _Invalid(f"{where or 'the document'} is a {type(doc).__name__}, not a GeoJSON object")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise _Invalid(f"{where}'features' is {_kind_of(features)}, not a list")
        for i, item in enumerate(features):
            if not isinstance(item, dict) or item.get("type") != "Feature":
                raise _Invalid(f"{where}features[{i}] is not a Feature object")
            yield f"{where}features[{i}]", item
    elif kind == "Feature":
        yield where or "the feature", doc
    elif kind in AREA_GEOMETRIES or kind in OTHER_GEOMETRIES:
        yield where or "the geometry", {"type": "Feature", "geometry": doc, "properties": {}}
    else:
        raise _Invalid(f"{where or 'the document'} has type {kind!r}; expected FeatureCollection, Feature or a "
                       "geometry")


def _kind_of(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def feature_class(feature: dict) -> str | None:
    """The QuPath classification name of a feature (None when unclassified)."""
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        return None
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        return name if isinstance(name, str) else None
    if isinstance(cls, str):
        return cls
    return None


def _geometry_polygons(geom: Any, where: str, depth: int = 0) -> Iterator[tuple[str, list]]:
    """(location, raw polygon = list of rings) of a geometry; :class:`_Invalid` for a bad structure."""
    if geom is None:  # GeoJSON allows a feature without geometry
        return
    if not isinstance(geom, dict):
        raise _Invalid(f"{where}.geometry is {_kind_of(geom)}, not an object")
    if depth > MAX_NESTING:
        raise _Invalid(f"{where} has GeometryCollections nested more than {MAX_NESTING} levels deep")
    kind = geom.get("type")
    if kind in OTHER_GEOMETRIES:
        return
    if kind == "GeometryCollection":
        subs = geom.get("geometries")
        if not isinstance(subs, list):
            raise _Invalid(f"{where}.geometry 'geometries' is {_kind_of(subs)}, not a list")
        for i, sub in enumerate(subs):
            yield from _geometry_polygons(sub, f"{where}.geometries[{i}]", depth + 1)
        return
    if kind not in ("Polygon", "MultiPolygon"):
        raise _Invalid(f"{where}.geometry has type {kind!r}; expected Polygon, MultiPolygon or GeometryCollection")
    coords = geom.get("coordinates")
    if not isinstance(coords, list):
        raise _Invalid(f"{where}.geometry 'coordinates' is {_kind_of(coords)}, not a list")
    if kind == "Polygon":
        yield f"{where}.geometry", coords
    else:
        for i, poly in enumerate(coords):
            if not isinstance(poly, list):
                raise _Invalid(f"{where}.geometry coordinates[{i}] is {_kind_of(poly)}, not a list of rings")
            yield f"{where}.geometry coordinates[{i}]", poly


def _to_rings(raw: list, where: str, path: Path) -> Polygon:
    rings = []
    for i, ring in enumerate(raw):
        if not isinstance(ring, list) or not all(
                isinstance(pt, list) and 2 <= len(pt) <= 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt) for pt in ring):
            raise H2GNetError(path, f"{where} ring {i} is not a list of [x, y] numbers")
        if not ring:
            continue
        arr = np.asarray([pt[:2] for pt in ring], dtype=np.float64)
        if not np.isfinite(arr).all():
            raise H2GNetError(path, f"{where} ring {i} has non-finite coordinates")
        if len(arr) >= 3:
            rings.append(arr)
    return rings


def read_json(path: Path) -> Any:
    """A JSON document (UTF-8, with or without a byte-order mark), or an H2GNetError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise H2GNetError(path, "no such file") from None
    except IsADirectoryError:
        raise H2GNetError(path, "is a folder, not a file") from None
    except json.JSONDecodeError as exc:
        raise H2GNetError(path, f"is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise H2GNetError(path, "is nested too deeply to be GeoJSON") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise H2GNetError(path, f"cannot be read: {exc}") from None


def load_geojson(path: str | Path, classes: Iterable[str] | None = None) -> list[Polygon]:
    """Polygons (level-0 px) of a QuPath GeoJSON export.

    Accepts a FeatureCollection, a Feature, a list of Features or a bare
    geometry; Polygon, MultiPolygon and GeometryCollection geometries (points
    and lines hold no area and are skipped). ``classes``: keep only features
    whose classification name is one of these (case-insensitive); None keeps
    every feature. The structure is validated: anything else is an
    :class:`H2GNetError` naming the file and the offending key.
    """
    path = Path(path)
    doc = read_json(path)
    wanted = None if classes is None else {c.lower() for c in classes}
    polygons: list[Polygon] = []
    try:
        for where, feature in _features(doc):
            if wanted is not None and (feature_class(feature) or "").lower() not in wanted:
                continue
            for loc, raw in _geometry_polygons(feature.get("geometry"), where):
                rings = _to_rings(raw, loc, path)
                if rings:
                    polygons.append(rings)
    except _Invalid as exc:
        raise H2GNetError(path, f"is not valid GeoJSON: {exc}") from None
    return polygons


def polygon_bounds(polygons: list[Polygon]) -> tuple[float, float, float, float] | None:
    """(min_x, min_y, max_x, max_y) over all rings, or None when empty."""
    if not polygons:
        return None
    pts = np.concatenate([ring for poly in polygons for ring in poly])
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def check_bounds(polygons: list[Polygon], extent_l0: tuple[int, int], path: str | Path) -> None:
    """Reject annotations that reach well outside the slide (wrong coordinate frame)."""
    bounds = polygon_bounds(polygons)
    if bounds is None:
        return
    w, h = extent_l0
    min_x, min_y, max_x, max_y = bounds
    slack_x, slack_y = BOUNDS_SLACK * w, BOUNDS_SLACK * h
    if min_x < -slack_x or min_y < -slack_y or max_x > w + slack_x or max_y > h + slack_y:
        raise H2GNetError(
            path,
            f"annotation coordinates span x {min_x:.0f}…{max_x:.0f}, y {min_y:.0f}…{max_y:.0f} but the slide is "
            f"{w}×{h} level-0 px: outside the slide or in another coordinate frame (they must be level-0 pixels)",
        )


def _fill_polygon(mask: np.ndarray, rings: list[np.ndarray]) -> None:
    """OR into ``mask`` the pixels whose centres lie inside ``rings`` (even-odd: holes excluded).

    ``rings`` are in raster coordinates (pixel c spans [c, c + 1), centre c + 0.5).
    A scanline rasteriser of our own: OpenCV's fillPoly includes outline pixels
    (a bias of about one pixel per edge), which shows up in round trips.
    """
    rows, cols = mask.shape
    pts = np.concatenate(rings)
    r0, r1 = max(0, int(np.floor(pts[:, 1].min()))), min(rows, int(np.ceil(pts[:, 1].max())) + 1)
    c0, c1 = max(0, int(np.floor(pts[:, 0].min()))), min(cols, int(np.ceil(pts[:, 0].max())) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    toggles = np.zeros((r1 - r0, c1 - c0 + 1), np.int32)
    for ring in rings:
        a, b = ring, np.roll(ring, -1, axis=0)
        lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
        first = np.clip(np.ceil(lo - 0.5).astype(np.int64), r0, r1)  # rows whose centre is in [lo, hi)
        stop = np.clip(np.ceil(hi - 0.5).astype(np.int64), r0, r1)
        counts = np.maximum(stop - first, 0)
        if counts.sum() == 0:
            continue
        edge = np.repeat(np.arange(len(a)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        r = first[edge] + offsets
        t = (r + 0.5 - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
        x = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
        c = np.clip(np.ceil(x - 0.5).astype(np.int64), c0, c1) - c0  # first pixel whose centre is right of x
        np.add.at(toggles, (r - r0, c), 1)
    inside = (np.cumsum(toggles, axis=1) & 1)[:, :-1].astype(bool)
    mask[r0:r1, c0:c1] |= inside


def rasterize(polygons: list[Polygon], extent_l0: tuple[int, int], slide_mpp: float, mpp: float,
              path: str | Path | None = None) -> Raster:
    """Boolean mask of ``polygons`` at ``mpp`` µm/px over a slide of ``extent_l0`` = (width, height) px.

    A raster pixel is set when its centre is inside a polygon (holes excluded);
    the result is the union of all polygons.
    """
    d = mpp / slide_mpp
    rows, cols = max(1, round(extent_l0[1] / d)), max(1, round(extent_l0[0] / d))
    check_canvas((rows, cols), 1, path, f"the annotation mask at {mpp:g} µm/px")
    mask = np.zeros((rows, cols), dtype=bool)
    for poly in polygons:
        _fill_polygon(mask, [ring / d for ring in poly])
    return Raster(mask, mpp, slide_mpp)


# -- mask images -----------------------------------------------------------------------
def _read_mask_pixels(path: Path) -> np.ndarray:
    if path.suffix.lower() in {".tif", ".tiff"}:
        arr: np.ndarray | None = read_tiff_page(path, "the mask image", 1,
                                                "cannot be read as a TIFF mask: {detail}").array
    else:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise H2GNetError(path, "cannot be read as a mask image (missing, corrupt or unsupported)")
    assert arr is not None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    return arr


def load_mask_image(
    path: str | Path, extent_l0: tuple[int, int], slide_mpp: float, downsample: float = DEFAULT_MASK_DOWNSAMPLE
) -> Raster:
    """A mask image (non-zero = tumour) stored at ``downsample`` relative to level 0.

    Its size must match the slide's level-0 size divided by ``downsample``
    (±1 px for rounding); otherwise the downsample is wrong and we say so.
    """
    path = Path(path)
    if not path.exists():
        raise H2GNetError(path, "no such file")
    arr = _read_mask_pixels(path)
    want_rows, want_cols = extent_l0[1] / downsample, extent_l0[0] / downsample
    rows, cols = arr.shape
    if abs(rows - want_rows) > 1.0 or abs(cols - want_cols) > 1.0:
        raise H2GNetError(
            path,
            f"mask is {cols}×{rows} px but the slide ({extent_l0[0]}×{extent_l0[1]} level-0 px) at downsample "
            f"{downsample:g} is {want_cols:.0f}×{want_rows:.0f}: wrong downsample or a mask of another slide",
        )
    return Raster(arr > 0, slide_mpp * downsample, slide_mpp)


# -- one entry point --------------------------------------------------------------------
def load_annotation(
    path: str | Path,
    extent_l0: tuple[int, int],
    slide_mpp: float,
    mpp: float,
    classes: Iterable[str] | None = None,
    mask_downsample: float = DEFAULT_MASK_DOWNSAMPLE,
    *,
    tumour_free: bool = False,
) -> Raster:
    """Tumour mask at ``mpp`` µm/px from a GeoJSON file or a mask image.

    ``extent_l0``: the slide's (width, height) in level-0 px; ``slide_mpp``: its
    level-0 µm/px. A GeoJSON without any valid polygon is an error unless
    ``tumour_free`` (the manifest says the slide has no tumour), so a broken
    annotation never becomes "no tumour" in training labels or evaluation truth.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        polygons = load_geojson(path, classes)
        if not polygons and not tumour_free:
            which = f" of class {', '.join(classes)}" if classes else ""
            raise H2GNetError(path, f"holds no valid tumour polygon{which}; if the slide has no tumour, say so "
                                    "in the manifest (column tumour_free = yes)")
        if polygons and tumour_free:
            raise H2GNetError(path, f"holds {len(polygons)} tumour polygon(s) but the manifest says the slide is "
                                    "tumour_free")
        check_bounds(polygons, extent_l0, path)
        return rasterize(polygons, extent_l0, slide_mpp, mpp, path)
    if suffix in MASK_SUFFIXES:
        mask = load_mask_image(path, extent_l0, slide_mpp, mask_downsample)
        return mask.to_mpp(mpp, extent_l0)
    raise H2GNetError(path, f"unknown annotation format {suffix!r} (expected .geojson/.json or a mask image)")
