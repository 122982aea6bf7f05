"""Direct tile decoding for tiled TIFF pyramids (generic TIFF, Aperio SVS): the heatmap's hot path.

OpenSlide stays the reader of record (formats, levels, metadata, every read
that is not a whole-pixel region of a matched level). For tiled TIFF-family
files we also decode the level's tiles ourselves with tifffile's decoder
(imagecodecs/libjpeg-turbo) and a small LRU of decoded tiles. Why our own
code here: on the benchmark slide a 512×512 JPEG tile costs ~1.1 ms CPU this
way and ~6.7 ms through ``openslide.read_region`` (ARGB conversion, cairo
painting and PIL copies around the same libjpeg-turbo decode), and patch
reading competes with inference for the same cores.

Safety: a level is served here only when its TIFF page matches the OpenSlide
level exactly (size, tile size, 8-bit 3-sample contiguous pixels) and its
largest tile decodes to the same pixels as OpenSlide gives (mean absolute
difference ≤ :data:`MAX_MEAN_DIFF`); otherwise OpenSlide reads it. Reads are
thread-safe (``os.pread`` and a locked cache); decoding releases the GIL.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Vendors whose levels are plain tiled TIFF pages.
TIFF_VENDORS = frozenset({"generic-tiff", "aperio"})
#: Decoded tiles kept (bytes): a full row of 512² tiles of a 1 µm/px level of a 80 mm-wide slide is ~60 MB.
CACHE_BYTES = 64 << 20
#: Largest mean absolute difference (0–255) from OpenSlide's pixels for a level to be served here.
MAX_MEAN_DIFF = 0.5


@dataclass(frozen=True)
class _Page:
    """One TIFF page serving one OpenSlide level."""

    decode: Any  # tifffile's decode function of the page (works after the file is closed)
    jpegtables: bytes | None
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    offsets: np.ndarray
    counts: np.ndarray


class TiffTiles:
    """Decodes whole-pixel regions of the levels of a tiled TIFF pyramid.

    ``levels``: OpenSlide's (width, height) per level; ``handle``: the
    OpenSlide handle, used once per level to check our pixels against its own.
    """

    def __init__(self, path: Path, handle: Any, levels: list[tuple[int, int]], downsamples: list[float]) -> None:
        import tifffile

        self._fd = os.open(str(path), os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)  # also when the slide is never closed
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.cache_bytes = CACHE_BYTES  # the cache's budget (a heatmap may raise it for its run)
        self.hits = 0  # tile reads served from the cache
        self.decodes = 0  # tiles decoded (cache misses)
        self._pages: dict[int, _Page] = {}
        props = handle.properties
        with tifffile.TiffFile(str(path)) as tif:  # parsed once; tiles are read with os.pread
            pages = list(tif.pages)
            for index, (w, h) in enumerate(levels):
                tw = int(props.get(f"openslide.level[{index}].tile-width", 0) or 0)
                th = int(props.get(f"openslide.level[{index}].tile-height", 0) or 0)
                page = self._match(pages, w, h, tw, th)
                if page is not None and self._agrees(index, page, handle, downsamples[index]):
                    self._pages[index] = page

    @staticmethod
    def _match(pages: list, w: int, h: int, tw: int, th: int) -> _Page | None:
        found = [
            p for p in pages
            if getattr(p, "is_tiled", False) and p.imagewidth == w and p.imagelength == h
            and p.tilewidth == tw and p.tilelength == th and p.samplesperpixel == 3
            and p.bitspersample == 8 and p.planarconfig == 1 and p.imagedepth == 1
        ]
        if len(found) != 1:
            return None
        p = found[0]
        return _Page(p.decode, p.jpegtables, w, h, tw, th, -(-w // tw), np.asarray(p.dataoffsets),
                     np.asarray(p.databytecounts))

    def _agrees(self, index: int, page: _Page, handle: Any, downsample: float) -> bool:
        """Our decode of the level's largest tile equals OpenSlide's read of it."""
        tile = int(np.argmax(page.counts))
        if page.counts[tile] == 0:
            return False
        row, col = divmod(tile, page.tiles_across)
        x, y = col * page.tile_w, row * page.tile_h
        w, h = min(page.tile_w, page.width - x), min(page.tile_h, page.height - y)
        try:
            ours = self._decode(page, tile)
            theirs = np.asarray(handle.read_region((round(x * downsample), round(y * downsample)), index, (w, h)))
        except Exception:  # any decoder problem: leave the level to OpenSlide
            return False
        if ours is None or theirs[..., 3].min() < 255:
            return False
        diff = np.abs(ours[:h, :w].astype(np.int16) - theirs[..., :3].astype(np.int16)).mean()
        return bool(diff <= MAX_MEAN_DIFF)

    def serves(self, level: int) -> bool:
        """Whether ``level`` is decoded here."""
        return level in self._pages

    def _decode(self, page: _Page, tile: int) -> np.ndarray | None:
        count = int(page.counts[tile])
        if count == 0:
            return None
        data = os.pread(self._fd, count, int(page.offsets[tile]))
        segment = page.decode(data, tile, jpegtables=page.jpegtables)[0]
        return None if segment is None else segment.reshape(page.tile_h, page.tile_w, 3)

    def _tile(self, level: int, page: _Page, tile: int) -> np.ndarray | None:
        key = (level, tile)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.hits += 1
                return self._cache[key]
        arr = self._decode(page, tile)  # outside the lock: threads decode in parallel
        with self._lock:
            self.decodes += 1
            if key not in self._cache:
                self._cache[key] = arr
                self._cached_bytes += 0 if arr is None else arr.nbytes
                self._evict()
        return arr

    def _evict(self) -> None:
        """Drop the least recently used tiles until the cache is within its budget (lock held)."""
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= 0 if old is None else old.nbytes

    def trim(self) -> None:
        """Evict down to :attr:`cache_bytes` now (after the budget was lowered)."""
        with self._lock:
            self._evict()

    def read(self, level: int, x: int, y: int, width: int, height: int, background: np.ndarray) -> np.ndarray:
        """RGB uint8 (height, width, 3) of the level's pixels from (``x``, ``y``) in *level* pixels;
        outside the image (and in empty tiles) the ``background`` colour."""
        page = self._pages[level]
        out = np.empty((height, width, 3), np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, page.width), min(y + height, page.height)
        if (x0, y0, x1, y1) != (x, y, x + width, y + height):  # overhangs the image: background there
            out[:] = background
        if x0 >= x1 or y0 >= y1:
            return out
        for row in range(y0 // page.tile_h, (y1 - 1) // page.tile_h + 1):
            ty = row * page.tile_h
            for col in range(x0 // page.tile_w, (x1 - 1) // page.tile_w + 1):
                tx = col * page.tile_w
                arr = self._tile(level, page, row * page.tiles_across + col)
                sx0, sy0 = max(x0, tx), max(y0, ty)
                sx1, sy1 = min(x1, tx + page.tile_w), min(y1, ty + page.tile_h)
                if arr is None:  # an empty tile reads as background
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = background
                    continue
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = arr[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out

    def close(self) -> None:
        """Release the file handle."""
        self._closer()


def open_tiff_tiles(path: Path, handle: Any) -> TiffTiles | None:
    """A :class:`TiffTiles` for an OpenSlide handle of a tiled TIFF pyramid, or None when it
    does not apply (other formats, no level that qualifies, tifffile cannot parse it)."""
    if handle.properties.get("openslide.vendor") not in TIFF_VENDORS:
        return None
    try:
        tiles = TiffTiles(path, handle, list(handle.level_dimensions), list(handle.level_downsamples))
    except Exception:  # tifffile's parse errors vary; OpenSlide remains the reader
        return None
    if not tiles._pages:
        tiles.close()
        return None
    return tiles
