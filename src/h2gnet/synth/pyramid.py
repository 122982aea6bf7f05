"""Write a tiled, pyramidal JPEG TIFF tile by tile with bounded memory.

Level 0 is rendered one row of tiles at a time and streamed into the TIFF; each
finished row is also box-filtered into the next level, whose rows cascade to
the level after, and so on. Reduced levels are JPEG-encoded as soon as a row
of their tiles is complete and parked in an anonymous temporary file until
their page is written (TIFF pages are written one after another), so memory
holds at most about one row of tiles per level, whatever the slide size.
Every level is a top-level TIFF page (OpenSlide's generic-TIFF reader needs
that; it ignores SubIFDs).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import cv2
import imagecodecs
import numpy as np
import tifffile

JPEG_SUBSAMPLING = (2, 2)


def encode_tile(tile: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 tile, as TIFF JPEG compression with YCbCr 4:2:0 expects."""
    return bytes(imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR",
                                       subsampling=JPEG_SUBSAMPLING))


def _pad_to(block: np.ndarray, height: int, width: int) -> np.ndarray:
    """Edge-replicate ``block`` to at least (height, width) px (so JPEG tiles have no hard border)."""
    dh, dw = height - block.shape[0], width - block.shape[1]
    if dh <= 0 and dw <= 0:
        return block
    return cv2.copyMakeBorder(block, 0, max(dh, 0), 0, max(dw, 0), cv2.BORDER_REPLICATE)


def split_row(strip: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The ``tile`` x ``tile`` tiles of a row strip (height <= tile), left to right, edge-padded."""
    width = strip.shape[1]
    for x in range(0, width, tile):
        yield _pad_to(strip[:, x : x + tile], tile, tile)


class _TileStore:
    """Encoded tiles of one reduced level, appended in order to an anonymous temporary file."""

    def __init__(self, directory: Path) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile(  # noqa: SIM115 - lives as long as the store; closed by close()
            dir=directory, prefix=".h2gnet-level-")
        self._sizes: list[int] = []

    def append(self, data: bytes) -> None:
        self._file.write(data)
        self._sizes.append(len(data))

    def __iter__(self) -> Iterator[bytes]:
        self._file.flush()
        self._file.seek(0)
        for size in self._sizes:
            yield self._file.read(size)

    def close(self) -> None:
        self._file.close()


class _Level:
    """A reduced level fed with full-width rows of the level above; tiles finished rows into a store."""

    def __init__(self, size: tuple[int, int], factor: int, tile: int, quality: int, store: _TileStore,
                 below: _Level | None) -> None:
        self.width, self.height = size
        self.factor, self.tile, self.quality = factor, tile, quality
        self.store, self.below = store, below
        self._pending: np.ndarray | None = None  # rows of the level above not yet reduced
        self._strip: np.ndarray | None = None  # rows of this level not yet tiled
        self.rows_done = 0

    def feed(self, rows: np.ndarray, *, final: bool = False) -> None:
        """Accept rows of the level above; ``final`` flushes everything (pads the last partial row)."""
        pend = rows if self._pending is None else np.concatenate([self._pending, rows])
        f = self.factor
        usable = len(pend) // f * f
        if final and usable < len(pend):
            pend = np.concatenate([pend, np.repeat(pend[-1:], f - (len(pend) - usable), axis=0)])
            usable = len(pend)
        self._pending = pend[usable:] if usable < len(pend) else None
        if usable:
            self._emit(self._reduce(pend[:usable]), final=final)
        elif final:
            self._emit(np.zeros((0, self.width, 3), np.uint8), final=final)

    def _reduce(self, block: np.ndarray) -> np.ndarray:
        """Box-filter ``block`` (rows a multiple of ``factor``) by ``factor``, replicating the right edge."""
        f = self.factor
        block = _pad_to(block, block.shape[0], self.width * f)[:, : self.width * f]
        return cv2.resize(block, (self.width, block.shape[0] // f), interpolation=cv2.INTER_AREA)

    def _emit(self, rows: np.ndarray, *, final: bool) -> None:
        rows = rows[: max(0, self.height - self.rows_done)]
        self.rows_done += len(rows)
        if self.below is not None:
            self.below.feed(rows, final=final)
        strip = rows if self._strip is None else np.concatenate([self._strip, rows])
        t = self.tile
        while len(strip) >= t or (final and len(strip)):
            for tile in split_row(_pad_to(strip[:t], t, 0), t):
                self.store.append(encode_tile(tile, self.quality))
            strip = strip[t:]
        self._strip = strip if len(strip) else None


def write_pyramid_tiff(  # noqa: PLR0913 - the TIFF writer's settings, passed by the one caller
    path: Path,
    size: tuple[int, int],
    downsamples: tuple[int, ...],
    tile: int,
    render_row: Callable[[int, int], np.ndarray],
    mpp: float,
    quality: int = 90,
    description: str = "",
    *, bigtiff: bool | None = None,
    on_tile: Callable[[], None] | None = None,
) -> None:
    """Write a pyramidal tiled JPEG TIFF of ``size`` = (width, height) level-0 px to ``path``.

    ``render_row(y, rows)`` returns level-0 RGB uint8 rows ``[y, y+rows)`` at full
    width (rows <= ``tile``). ``downsamples`` start at 1, each a whole multiple of
    the previous; level sizes are ``ceil(size / downsample)``. Level 0's pixel size
    ``mpp`` (µm/px) is stored as resolution in pixels per centimetre.
    ``on_tile`` is called once per level-0 tile written.
    """
    width, height = size
    dims = [(math.ceil(width / d), math.ceil(height / d)) for d in downsamples]
    if bigtiff is None:
        bigtiff = width * height * 3 > 2**31
    stores = [_TileStore(path.parent) for _ in downsamples[1:]]
    try:
        levels: list[_Level | None] = [None] * len(downsamples)
        for i in range(len(downsamples) - 1, 0, -1):
            levels[i] = _Level(dims[i], downsamples[i] // downsamples[i - 1], tile, quality, stores[i - 1],
                               levels[i + 1] if i + 1 < len(downsamples) else None)
        top = levels[1] if len(downsamples) > 1 else None

        def level0_tiles() -> Iterator[bytes]:
            for y in range(0, height, tile):
                rows = render_row(y, min(tile, height - y))
                if top is not None:
                    top.feed(rows, final=y + tile >= height)
                for t in split_row(_pad_to(rows, tile, 0), tile):
                    data = encode_tile(t, quality)
                    if on_tile is not None:
                        on_tile()
                    yield data

        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            for i, (d, (w, h)) in enumerate(zip(downsamples, dims)):
                data = level0_tiles() if i == 0 else iter(stores[i - 1])
                res = 1e4 / (mpp * d)
                tw.write(
                    data, shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                    compression="jpeg", subsampling=JPEG_SUBSAMPLING, resolution=(res, res),
                    resolutionunit="CENTIMETER", subfiletype=1 if i else 0, metadata=None,
                    description=description if i == 0 else None, software="h2gnet.synth",
                )
    finally:
        for s in stores:
            s.close()
