"""Binary mask <-> QuPath-importable GeoJSON (a FeatureCollection of annotations).

Geometry
--------
* Coordinates are **level-0 pixels** of the slide (x right, y down), on pixel
  *edges*: mask pixel ``(r, c)`` is the square ``[c*d, (c+1)*d) x [r*d, (r+1)*d)``
  with ``d = mask.downsample``. Polygons follow the pixel boundaries exactly
  (axis-aligned "staircase" outlines; collinear vertices removed), so
  rasterising them again by pixel centres gives back the same mask.
* One polygon per 4-connected foreground component: its outer ring plus one
  ring per hole. A component lying inside another's hole (an island) is its
  own polygon. Pixels touching only at a corner are separate polygons that
  touch at that point, and a hole meeting its shell at a corner is a separate
  ring touching it at that point: no ring crosses itself or another ring,
  and no ring visits a vertex twice (valid OGC / JTS geometry).
* Ring orientation follows RFC 7946 measured with the shoelace formula on the
  coordinates as written: exterior rings have positive signed area
  ("counter-clockwise" in an x-right / y-up plane), holes negative.
  On screen (y down) that is clockwise exteriors; QuPath accepts either.
* Components and holes smaller than ``min_area_um2`` are dropped (holes are
  filled), measured at the mask's resolution.

Properties are QuPath's: ``{"objectType": "annotation", "classification":
{"name": ..., "color": [r, g, b]}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from h2gnet.io.atomic import write_text
from h2gnet.io.raster import Raster

DEFAULT_MIN_AREA_UM2 = 500.0
"""Default speck/hole size below which regions are dropped (µm²), about a 22 µm square."""

TUMOR_COLOR = (200, 0, 0)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace signed area of an open ring (N, 2) in its own units squared."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _drop_redundant(ring: np.ndarray) -> np.ndarray:
    """Remove repeated consecutive vertices and vertices in the middle of straight runs (open ring)."""
    keep = np.any(ring != np.roll(ring, 1, axis=0), axis=1)
    ring = ring[keep] if keep.any() else ring[:1]
    if len(ring) < 3:
        return ring
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    a, b = ring - prev, nxt - ring
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return ring[cross != 0]


def _contour_to_corners(contour: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Map a contour traced on the 2x-upsampled, 1-px-padded crop to pixel-corner coordinates.

    After padding, crop pixel ``c`` is sub-pixels ``2c + 2`` and ``2c + 3`` of the
    2x image; the contour runs through centres of boundary sub-pixels, and
    sub-pixel ``u`` lies against corner ``ceil((u - 2) / 2) = (u - 1) // 2``,
    which is exactly the pixel edge.
    """
    corners = (contour.reshape(-1, 2).astype(np.int64) - 1) // 2
    corners += np.asarray(offset, dtype=np.int64)
    return _drop_redundant(corners)


def _component_rings(component: np.ndarray, offset: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Exterior ring and hole rings (open, in mask-pixel corners) of one 4-connected component crop.

    Tracing a 2x nearest-upsampled copy makes every structure at least two
    sub-pixels wide, so one-pixel-wide necks give two distinct edges and a
    corner contact maps to a single shared vertex.
    """
    padded = np.pad(component, 1)
    up = cv2.resize(padded, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer: np.ndarray | None = None
    holes: list[np.ndarray] = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        ring = _contour_to_corners(contour, offset)
        if parent < 0:
            outer = ring if outer is None or abs(_signed_area(ring)) > abs(_signed_area(outer)) else outer
        else:
            holes.append(ring)
    if outer is None:  # cannot happen for a non-empty crop
        raise RuntimeError("component without an outer contour")
    return outer, holes


def mask_polygons(mask: np.ndarray, min_area_px: float = 0.0) -> list[list[np.ndarray]]:
    """Polygons of a boolean mask in mask-pixel corner coordinates (int64).

    Each polygon is ``[exterior, *holes]``; rings are open (first vertex not
    repeated), exterior with positive and holes with negative signed area.
    Components or holes with fewer than ``min_area_px`` pixels are dropped.
    """
    mask = np.asarray(mask).astype(bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    polygons: list[list[np.ndarray]] = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area_px or area == 0:
            continue
        crop = (labels[y : y + h, x : x + w] == i).astype(np.uint8)
        outer, holes = _component_rings(crop, (x, y))
        polygon = [_oriented(outer, positive=True)]
        polygon += [_oriented(h_, positive=False) for h_ in holes if abs(_signed_area(h_)) >= min_area_px]
        polygons.append(polygon)
    return polygons


def _oriented(ring: np.ndarray, *, positive: bool) -> np.ndarray:
    """``ring`` reversed if needed so its signed area is positive (or negative)."""
    return ring if (_signed_area(ring) > 0) == positive else ring[::-1]


def _ring_coords(ring: np.ndarray, downsample: float, decimals: int) -> list[list[float]]:
    """Closed GeoJSON ring in level-0 px from an open ring in mask-pixel corners."""
    closed = np.vstack([ring, ring[:1]]).astype(np.float64) * downsample
    return np.round(closed, decimals).tolist()


def _feature(geometry: dict[str, Any], classification: str, color: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": classification, "color": [int(v) for v in color]},
        },
    }


def mask_to_geojson(
    mask: Raster,
    classification: str = "Tumor",
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    *,
    color: tuple[int, int, int] = TUMOR_COLOR,
    split: bool = False,
    decimals: int = 3,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection outlining the foreground of ``mask`` in level-0 pixels.

    Args:
        mask: boolean (or 0/non-zero) mask raster.
        classification: QuPath class name of the annotation(s).
        min_area_um2: components and holes smaller than this (µm²) are dropped.
        color: QuPath class colour (RGB 0-255).
        split: False: one Feature (Polygon or MultiPolygon) for the whole mask;
            True: one Polygon Feature per connected component.
        decimals: coordinates are rounded to this many decimals (level-0 px).

    Returns:
        A FeatureCollection dict (no features when nothing is left).
    """
    min_area_px = min_area_um2 / (mask.mpp * mask.mpp)
    polygons = [
        [_ring_coords(ring, mask.downsample, decimals) for ring in poly]
        for poly in mask_polygons(mask.array, min_area_px)
    ]
    if split:
        geometries = [{"type": "Polygon", "coordinates": p} for p in polygons]
    elif len(polygons) == 1:
        geometries = [{"type": "Polygon", "coordinates": polygons[0]}]
    elif polygons:
        geometries = [{"type": "MultiPolygon", "coordinates": polygons}]
    else:
        geometries = []
    return {"type": "FeatureCollection", "features": [_feature(g, classification, color) for g in geometries]}


def write_geojson(path: str | Path, fc: Mapping[str, Any]) -> Path:
    """Atomically write the FeatureCollection ``fc`` as compact UTF-8 JSON; returns ``Path(path)``."""
    path = Path(path)
    write_text(path, json.dumps(fc, separators=(",", ":"), allow_nan=False))
    return path
