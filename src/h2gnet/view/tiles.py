"""Deep Zoom tiles of slides and of their tumour masks (``openslide.deepzoom``), with an LRU of encoded tiles.

A slide's Deep Zoom image has the slide's level-0 size (``limit_bounds`` off), so every overlay is placed in
level-0 pixels. Tiles are ``TILE_SIZE`` px with a 1-px overlap: JPEG for the slide, PNG with transparency for
the mask (tumour in the prediction colour, background transparent). A source (an open slide) is opened on
its first tile and kept in a small LRU; one that cannot be read keeps its error, which every request for it
returns, and the other slides are served as before.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from h2gnet.errors import H2GNetError
from h2gnet.io.slides import Slide
from h2gnet.outputs.mask_tiff import expected_shape
from h2gnet.outputs.overlay import PRED_COLOR
from h2gnet.view.catalogue import Catalogue

#: Deep Zoom tile side (px) without the overlap, and the overlap (px): 254 + 2 × 1 = 256.
TILE_SIZE = 254
OVERLAP = 1
#: JPEG quality of slide tiles (1-95).
JPEG_QUALITY = 80
#: Default budget of the tile cache, MB.
CACHE_MB = 256
#: Open sources (slides, masks) kept at once.
OPEN_SOURCES = 32
#: A mask may differ from the slide's extent by this many of its own pixels per side (rounding, as written).
MASK_EXTENT_TOLERANCE_PX = 2


class ByteLRU:
    """A thread-safe least-recently-used cache of byte strings, bounded by their total size (bytes)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        """The cached value of ``key`` (now the most recent), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: bytes) -> None:
        """Store ``value``; the least recently used values go until the total fits the budget."""
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._size -= len(old) if old is not None else 0
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def get_or_make(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        """The cached value of ``key``, else ``make()`` stored (two threads may both make it once)."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Source:
    """An open Deep Zoom source: the generator, and the level-0 size (px) and µm/px of what it shows."""

    generator: DeepZoomGenerator
    dimensions: tuple[int, int]
    mpp: float | None
    handle: object  # keeps the slide (or mask) open while the source is in use


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _mask_rgba(tile: Image.Image) -> Image.Image:
    """A grey mask tile (0 / 255) as RGBA: tumour in the prediction colour, background transparent."""
    grey = np.asarray(tile.convert("L"))
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[grey > 127] = (*PRED_COLOR, 255)
    return Image.fromarray(rgba, "RGBA")


class TileSources:
    """Deep Zoom images of the catalogue's slides (``kind`` "slide") and tumour masks (``kind`` "mask")."""

    def __init__(self, catalogue: Catalogue, cache_mb: float = CACHE_MB) -> None:
        self.catalogue = catalogue
        self.tiles = ByteLRU(int(cache_mb * 2**20))
        self._sources: OrderedDict[tuple[str, str], Source | H2GNetError] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[tuple[str, str], threading.Lock] = {}

    # -- opening -----------------------------------------------------------------------------
    def source(self, key: str, kind: str) -> Source:
        """The open source ``kind`` of slide ``key``; H2GNetError (kept for later requests) if it cannot be read."""
        ident = (key, kind)
        with self._lock:
            found = self._sources.get(ident)
            if found is not None:
                self._sources.move_to_end(ident)
            gate = self._opening.setdefault(ident, threading.Lock())
        if found is None:
            with gate:  # one thread opens a source; the others wait for it
                with self._lock:
                    found = self._sources.get(ident)
                if found is None:
                    try:
                        found = self._open_slide(key) if kind == "slide" else self._open_mask(key)
                    except H2GNetError as exc:
                        found = exc
                    with self._lock:
                        self._sources[ident] = found
                        while len(self._sources) > OPEN_SOURCES:  # closed when no request holds them
                            self._sources.popitem(last=False)
        if isinstance(found, H2GNetError):
            raise found
        return found

    def _open_slide(self, key: str) -> Source:
        rec = self.catalogue.records[key]
        if rec.slide is None:
            raise H2GNetError(None, rec.problems[-1] if rec.problems else f"{key}: the slide file was not found")
        slide = Slide(rec.slide, rec.slide_mpp)  # H2GNetError naming the file for anything unreadable
        generator = DeepZoomGenerator(slide.handle, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
        return Source(generator, slide.dimensions, slide.mpp, slide)

    def _open_mask(self, key: str) -> Source:
        path = self.catalogue.output_file(key, "mask")
        slide = self.source(key, "slide")
        try:
            handle = openslide.OpenSlide(str(path))
            mpp = float(handle.properties[openslide.PROPERTY_NAME_MPP_X])
        except (openslide.OpenSlideError, KeyError, ValueError, OSError) as exc:
            raise H2GNetError(path, f"cannot be read as a mask TIFF with µm/px ({type(exc).__name__})") from None
        assert slide.mpp is not None
        rows, cols = expected_shape(slide.dimensions, slide.mpp, mpp)
        width, height = handle.dimensions
        if abs(width - cols) > MASK_EXTENT_TOLERANCE_PX or abs(height - rows) > MASK_EXTENT_TOLERANCE_PX:
            raise H2GNetError(path, f"is {width}×{height} px at {mpp:g} µm/px, but the slide ({slide.dimensions[0]}×"
                                    f"{slide.dimensions[1]} px at {slide.mpp:g} µm/px) needs {cols}×{rows}: the "
                                    "mask of another slide?")
        generator = DeepZoomGenerator(handle, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
        return Source(generator, (width, height), mpp, handle)

    # -- serving ----------------------------------------------------------------------------
    def dzi(self, key: str, kind: str) -> str:
        """The Deep Zoom descriptor (XML) of source ``kind`` of slide ``key``."""
        return self.source(key, kind).generator.get_dzi("jpeg" if kind == "slide" else "png")

    def tile(self, key: str, kind: str, level: int, col: int, row: int) -> bytes:
        """One encoded tile (JPEG for slides, PNG for masks); KeyError for a tile that does not exist."""
        generator = self.source(key, kind).generator
        if not (0 <= level < generator.level_count):
            raise KeyError(f"no level {level} (the image has {generator.level_count})")
        cols, rows = generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise KeyError(f"no tile ({col}, {row}) at level {level} ({cols}×{rows} tiles)")

        def make() -> bytes:
            try:
                image = generator.get_tile(level, (col, row))
            except openslide.OpenSlideError as exc:
                rec = self.catalogue.records[key]
                raise H2GNetError(rec.slide, f"unreadable at Deep Zoom level {level} tile ({col}, {row}): "
                                             f"{exc}") from None
            return _encode(image, "jpeg") if kind == "slide" else _encode(_mask_rgba(image), "png")

        return self.tiles.get_or_make((key, kind, level, col, row), make)
