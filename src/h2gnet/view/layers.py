"""What the slide page draws besides the tiles: the heatmap as one picture, outlines as rings, thumbnails, and the
page's description of a slide (size, µm/px, where each overlay goes, what could not be read).

Coordinates: outlines are level-0 pixels; an overlay's ``width`` is its level-0 width as a fraction of the
slide's width (OpenSeadragon's viewport units, where the slide is 1 wide).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from h2gnet.conventions import EVAL_MPP
from h2gnet.errors import H2GNetError
from h2gnet.infer.heatmap import load_heatmap
from h2gnet.io.annotations import GEOJSON_SUFFIXES, check_bounds, load_annotation, load_geojson
from h2gnet.io.raster import Raster
from h2gnet.outputs.geojson import mask_polygons
from h2gnet.view.catalogue import Catalogue
from h2gnet.view.tiles import ByteLRU, TileSources

#: Side of the cohort page's thumbnails (px, the longer side).
THUMB_SIDE = 240
#: The heatmap picture is enlarged (nearest neighbour) to at least this longer side (px) so that the browser's
#: smoothing blurs only the edges of its cells, and reduced (area) to at most ``HEATMAP_MAX_SIDE``.
HEATMAP_MIN_SIDE = 1024
HEATMAP_MAX_SIDE = 4096
#: Largest image file read whole (the overlay picture, a thumbnail's source), bytes and pixels.
MAX_PICTURE_BYTES = 64 * 2**20
MAX_PICTURE_PIXELS = 8192 * 8192
#: Ring coordinates are rounded to this many decimals (level-0 px).
RING_DECIMALS = 1
#: Largest side (px) of the raster a mask-image annotation is outlined from.
TRUTH_MAX_SIDE = 4096


def _png(rgb_or_rgba: np.ndarray) -> bytes:
    code = cv2.COLOR_RGBA2BGRA if rgb_or_rgba.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb_or_rgba, code), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert ok
    return buf.tobytes()


def heatmap_picture(heat: Raster) -> np.ndarray:
    """RGBA picture of a tumour heatmap: inferno colours (as the overlay PNG), alpha 0 where p = 0 (no tissue
    or unclassified), enlarged by an integer factor (nearest) or reduced (area) to fit the sides above."""
    prob: np.ndarray = np.clip(np.nan_to_num(heat.array.astype(np.float32)), 0.0, 1.0)
    side = max(prob.shape)
    if side > HEATMAP_MAX_SIDE:
        scale = HEATMAP_MAX_SIDE / side
        size = (max(1, round(prob.shape[1] * scale)), max(1, round(prob.shape[0] * scale)))
        prob = cv2.resize(prob, size, interpolation=cv2.INTER_AREA)
    grey = np.round(prob * 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    rgba = np.dstack([rgb, np.where(grey > 0, 255, 0).astype(np.uint8)])
    side = max(1, max(prob.shape))
    k = max(1, min(-(-HEATMAP_MIN_SIDE // side), HEATMAP_MAX_SIDE // side))
    if k > 1:
        rgba = np.repeat(np.repeat(rgba, k, axis=0), k, axis=1)
    return rgba


def _rings(polygons: list[list[np.ndarray]], scale: float = 1.0) -> list[list[float]]:
    """Rings as flat [x0, y0, x1, y1, ...] lists in level-0 px (``scale``: level-0 px per unit)."""
    return [np.round(np.asarray(ring, np.float64)[:, :2] * scale, RING_DECIMALS).ravel().tolist()
            for poly in polygons for ring in poly if len(ring) >= 2]


def _check_picture(path: Path) -> None:
    """Refuse an image file too large to decode whole, before decoding it."""
    try:
        size = path.stat().st_size
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, Image.DecompressionBombError) as exc:
        raise H2GNetError(path, f"cannot be read as a picture ({type(exc).__name__})") from None
    if size > MAX_PICTURE_BYTES or width * height > MAX_PICTURE_PIXELS:
        raise H2GNetError(path, f"is too large for a thumbnail ({width}×{height} px, {size} bytes)")


class Layers:
    """Heatmaps, outlines, thumbnails and slide descriptions of a catalogue's slides (cached, thread-safe)."""

    def __init__(self, catalogue: Catalogue, tiles: TileSources) -> None:
        self.catalogue = catalogue
        self.tiles = tiles
        self.cache = ByteLRU(64 * 2**20)

    def _cached(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        return self.cache.get_or_make(key, make)

    def thumbnail(self, key: str) -> bytes:
        """The slide's ``NAME.overlay.png`` (thumbnail, heatmap, outline) reduced to ``THUMB_SIDE`` px, as JPEG."""
        def make() -> bytes:
            path = self.catalogue.output_file(key, "overlay")
            _check_picture(path)
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise H2GNetError(path, "cannot be decoded as a picture (corrupt?)")
            scale = THUMB_SIDE / max(img.shape[:2])
            if scale < 1:
                img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                                 interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok
            return buf.tobytes()

        return self._cached(("thumb", key), make)

    def _heatmap(self, key: str) -> Raster:
        path = self.catalogue.output_file(key, "heatmap")
        heat, extent = load_heatmap(path)
        slide = self.tiles.source(key, "slide")
        if tuple(extent) != slide.dimensions:
            raise H2GNetError(path, f"is the heatmap of a {extent[0]}×{extent[1]} px slide, but the slide is "
                                    f"{slide.dimensions[0]}×{slide.dimensions[1]} px: a heatmap of another slide?")
        return heat

    def heatmap_png(self, key: str) -> bytes:
        """The heatmap as an RGBA PNG (see :func:`heatmap_picture`)."""
        return self._cached(("heatmap", key), lambda: _png(heatmap_picture(self._heatmap(key))))

    def outline_json(self, key: str, which: str) -> bytes:
        """``{"rings": [[x0, y0, x1, y1, ...], ...]}`` (level-0 px) of the ``prediction`` or the ``truth``."""
        make = self.prediction_rings if which == "prediction" else self.truth_rings
        return self._cached(("outline", which, key), lambda: json.dumps({"rings": make(key)}).encode())

    def prediction_rings(self, key: str) -> list[list[float]]:
        """Rings of the predicted tumour region (``NAME.geojson``), level-0 px."""
        path = self.catalogue.output_file(key, "geojson")
        return _rings(load_geojson(path))

    def truth_rings(self, key: str) -> list[list[float]]:
        """Rings of the annotated tumour region (the manifest's annotation), level-0 px: a GeoJSON's polygons as
        drawn, a mask image's outline."""
        rec = self.catalogue.records[key]
        if rec.annotation is None:
            raise H2GNetError(None, f"{key}: no annotation (give a manifest that lists one with --slides)")
        slide = self.tiles.source(key, "slide")
        assert slide.mpp is not None
        if rec.annotation.suffix.lower() in GEOJSON_SUFFIXES:
            polygons = load_geojson(rec.annotation)
            check_bounds(polygons, slide.dimensions, rec.annotation)
            return _rings(polygons)
        mpp = max(EVAL_MPP, slide.mpp * max(slide.dimensions) / TRUTH_MAX_SIDE)
        truth = load_annotation(rec.annotation, slide.dimensions, slide.mpp, mpp,
                                mask_downsample=rec.annotation_downsample, tumour_free=rec.tumour_free)
        return _rings(mask_polygons(truth.array), truth.downsample)

    def describe(self, key: str) -> dict[str, Any]:
        """What the slide page needs: the slide's size (level-0 px) and µm/px, each overlay's place and whether it
        can be shown, and every problem as one line (nothing here raises for a bad file)."""
        rec = self.catalogue.records[key]
        out: dict[str, Any] = {"key": key, "slide": None, "mask": None, "heatmap": None, "prediction": None,
                               "truth": None, "problems": list(rec.problems)}

        def attempt(name: str, make: Callable[[], Any]) -> None:
            try:
                out[name] = make()
            except H2GNetError as exc:
                if str(exc) not in out["problems"]:
                    out["problems"].append(str(exc))
            except Exception as exc:  # a library's exception on a malformed file: one line, never a traceback
                out["problems"].append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")

        attempt("slide", lambda: self._slide_info(key))
        if out["slide"] is None:
            return out
        width0 = out["slide"]["width"]
        if rec.summary is not None or self.catalogue.outputs(key).mask.exists():
            attempt("mask", lambda: self._mask_info(key, width0))
            attempt("heatmap", lambda: {"width": self._heatmap_width(key, width0)})
            attempt("prediction", lambda: {"rings": len(json.loads(self.outline_json(key, "prediction"))["rings"])})
        if rec.annotation is not None:
            attempt("truth", lambda: {"rings": len(json.loads(self.outline_json(key, "truth"))["rings"])})
        return out

    def _slide_info(self, key: str) -> dict[str, Any]:
        slide = self.tiles.source(key, "slide")
        return {"width": slide.dimensions[0], "height": slide.dimensions[1], "mpp": slide.mpp}

    def _mask_info(self, key: str, width0: int) -> dict[str, Any]:
        mask = self.tiles.source(key, "mask")
        slide = self.tiles.source(key, "slide")
        assert mask.mpp is not None and slide.mpp is not None
        return {"width": mask.dimensions[0] * mask.mpp / slide.mpp / width0, "mpp": mask.mpp}

    def _heatmap_width(self, key: str, width0: int) -> float:
        heat = self._heatmap(key)
        self.heatmap_png(key)  # decoded and cached now: a broken file shows as a problem of the page
        return heat.shape[1] * heat.downsample / width0

