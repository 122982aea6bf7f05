"""The tumour-region annotation of a phantom slide as QuPath-style GeoJSON (level-0 px)."""

from __future__ import annotations

import json
import uuid

import cv2
import numpy as np

from h2gnet.synth.noise import hash_u64
from h2gnet.synth.spec import SlideSpec

TUMOUR_CLASS = {"name": "Tumor", "color": [200, 0, 0]}
_UPSAMPLE = 4  # contours are traced on the tumour field upsampled this much (2 µm cells at 8 µm/px)


def _ring(contour: np.ndarray, cell_um: float, mpp: float, size: tuple[int, int], simplify_px: float,
          *, exterior: bool) -> list[list[float]] | None:
    """A closed GeoJSON ring (level-0 px) from an OpenCV contour on a grid of ``cell_um`` µm cells."""
    approx = cv2.approxPolyDP(contour, simplify_px, True).reshape(-1, 2).astype(np.float64)
    if len(approx) < 3:
        return None
    pts = (approx + 0.5) * (cell_um / mpp)  # cell centres -> level-0 px
    pts[:, 0] = np.clip(pts[:, 0], 0, size[0])
    pts[:, 1] = np.clip(pts[:, 1], 0, size[1])
    x, y = pts[:, 0], pts[:, 1]
    area2 = float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    if abs(area2) < 1e-6:
        return None
    if (area2 > 0) != exterior:  # RFC 7946 right-hand rule: exteriors counter-clockwise, holes clockwise
        pts = pts[::-1]
    ring = np.round(pts, 1).tolist()
    return ring + [ring[0]]


def tumour_polygons(spec: SlideSpec, simplify_um: float = 2.0) -> list[list[list[list[float]]]]:
    """Polygons (each ``[exterior, *holes]``, rings of level-0 (x, y)) of the region ``spec.tumour > 0``.

    The region is traced on the bilinearly upsampled field, the same
    interpolation the renderer uses, so the outline follows the drawn region to
    within about ``field_mpp / 4`` µm; ``simplify_um`` is the Douglas-Peucker tolerance.
    """
    h, w = spec.tumour.shape
    up = cv2.resize(spec.tumour, (w * _UPSAMPLE, h * _UPSAMPLE), interpolation=cv2.INTER_LINEAR)
    mask = (up > 0).astype(np.uint8)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    cell_um = spec.field_mpp / _UPSAMPLE
    simplify_px = simplify_um / cell_um
    size = (spec.width, spec.height)
    polygons = []
    for i, (_, _, child, parent) in enumerate(hierarchy[0]):
        if parent != -1:
            continue
        exterior = _ring(contours[i], cell_um, spec.mpp, size, simplify_px, exterior=True)
        if exterior is None:
            continue
        rings = [exterior]
        while child != -1:
            hole = _ring(contours[child], cell_um, spec.mpp, size, simplify_px, exterior=False)
            if hole is not None:
                rings.append(hole)
            child = hierarchy[0][child][0]
        polygons.append(rings)
    return polygons


def _annotation_id(seed: int) -> str:
    """A UUID (as QuPath writes for each object), derived from the slide seed so output is reproducible."""
    bits = (int(hash_u64(seed, 0xA11)) << 64) | int(hash_u64(seed, 0xA12))
    return str(uuid.UUID(int=bits, version=4))


def tumour_geojson(spec: SlideSpec) -> dict:
    """A GeoJSON FeatureCollection with one QuPath annotation (class Tumor) for the tumour region."""
    polygons = tumour_polygons(spec)
    if not polygons:
        return {"type": "FeatureCollection", "features": []}
    if len(polygons) == 1:
        geometry = {"type": "Polygon", "coordinates": polygons[0]}
    else:
        geometry = {"type": "MultiPolygon", "coordinates": polygons}
    feature = {
        "type": "Feature",
        "id": _annotation_id(spec.seed),
        "geometry": geometry,
        "properties": {"objectType": "annotation", "classification": dict(TUMOUR_CLASS), "isLocked": False},
    }
    return {"type": "FeatureCollection", "features": [feature]}


def geojson_text(spec: SlideSpec) -> str:
    """:func:`tumour_geojson` serialised deterministically (compact JSON, trailing newline)."""
    return json.dumps(tumour_geojson(spec), separators=(",", ":")) + "\n"
