"""Write a segmentation mask as a pyramidal, tiled, lossless TIFF that OpenSlide and viewers open.

File layout
-----------
* Level 0 is the mask at its own resolution (or at a requested ``mpp``), covering
  the whole slide: ``round(height_l0 / d) x round(width_l0 / d)`` pixels with
  ``d = mpp / slide_mpp`` (the same rounding as :meth:`h2gnet.io.raster.Raster.to_mpp`).
* Reduced levels halve each side (``ceil``) until both sides are <= 512 px.
  They are **top-level pages** (NewSubfileType = 1), not SubIFDs, because
  OpenSlide reads generic-TIFF pyramids only from top-level directories.
* Every level is tiled (256 or 512 px tiles), 8-bit grey, deflate (or LZW).
* ResolutionUnit is centimetre and X/YResolution = 10 000 / mpp pixels per cm,
  so OpenSlide reports ``openslide.mpp-x`` / ``mpp-y`` equal to the level-0 µm/px.

Pixel values
------------
A boolean mask is written as **0 = background, 255 = tumour** so the file is
visible in ordinary image viewers (read it back with ``> 127`` or ``> 0``).
A ``uint8`` (or small-integer) label mask is written unchanged.

Every level is produced tile by tile by nearest-neighbour sampling of the
in-memory mask, so writing a full-resolution mask never materialises more
than one row of tiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import atomic_path
from h2gnet.io.raster import Raster
from h2gnet.io.tiff import read_tiff_page

BINARY_FOREGROUND = 255
"""Value written for tumour pixels of a boolean mask."""

_COMPRESSION = {"deflate": "zlib", "lzw": "lzw"}
_EXTENT_TOLERANCE_PX = 2


def expected_shape(slide_dims_l0: tuple[int, int], slide_mpp: float, mpp: float) -> tuple[int, int]:
    """(rows, cols) of a whole-slide raster at ``mpp`` µm/px for a slide of (width, height) level-0 px."""
    w0, h0 = slide_dims_l0
    d = mpp / slide_mpp
    return max(1, round(h0 / d)), max(1, round(w0 / d))


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """Boolean -> 0/255; integer labels in [0, 255] -> uint8; anything else is refused."""
    if array.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(BINARY_FOREGROUND)
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("integer label mask values must lie in [0, 255]")
        return array.astype(np.uint8)
    raise ValueError(f"mask must be boolean or uint8 labels, got dtype {array.dtype}")


def fit_to_slide(mask: Raster, slide_dims_l0: tuple[int, int]) -> Raster:
    """``mask`` cropped or zero-padded (bottom/right) to exactly cover the slide.

    A mismatch of more than 2 px per side means the mask belongs to another
    slide or another resolution and raises ``ValueError``.
    """
    rows, cols = expected_shape(slide_dims_l0, mask.slide_mpp, mask.mpp)
    h, w = mask.shape
    if abs(h - rows) > _EXTENT_TOLERANCE_PX or abs(w - cols) > _EXTENT_TOLERANCE_PX:
        raise ValueError(
            f"mask is {h}x{w} px at {mask.mpp} µm/px but a {slide_dims_l0[0]}x{slide_dims_l0[1]} "
            f"slide at {mask.slide_mpp} µm/px needs {rows}x{cols}"
        )
    if (h, w) == (rows, cols):
        return mask
    out = np.zeros((rows, cols), dtype=mask.array.dtype)
    out[: min(h, rows), : min(w, cols)] = mask.array[:rows, :cols]
    return Raster(out, mask.mpp, mask.slide_mpp)


def _nearest_index(n_out: int, factor: float, n_src: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels whose size is ``factor`` source pixels.

    Output pixel ``i`` takes the source pixel under its centre, ``floor((i + 0.5) * factor)``.
    """
    idx = np.floor((np.arange(n_out) + 0.5) * factor).astype(np.int64)
    return np.clip(idx, 0, n_src - 1)


def resample_nearest(mask: Raster, mpp: float, slide_dims_l0: tuple[int, int]) -> Raster:
    """``mask`` resampled to ``mpp`` µm/px (nearest neighbour in the level-0 frame), whole-slide extent."""
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    mask = fit_to_slide(mask, slide_dims_l0)
    rows, cols = expected_shape(slide_dims_l0, mask.slide_mpp, mpp)
    factor = mpp / mask.mpp
    ri = _nearest_index(rows, factor, mask.shape[0])
    ci = _nearest_index(cols, factor, mask.shape[1])
    return Raster(mask.array[np.ix_(ri, ci)], mpp, mask.slide_mpp)


def pyramid_shapes(shape: tuple[int, int], max_top_px: int = 512) -> list[tuple[int, int]]:
    """(rows, cols) of each level: level 0 is ``shape``; halve (ceil) until both sides <= ``max_top_px``."""
    shapes = [shape]
    while max(shapes[-1]) > max_top_px:
        r, c = shapes[-1]
        shapes.append((math.ceil(r / 2), math.ceil(c / 2)))
    return shapes


def _level_tiles(
    src: np.ndarray, shape: tuple[int, int], factor_r: float, factor_c: float, tile: int
) -> Iterator[np.ndarray]:
    """Tiles (row-major, ``tile`` x ``tile``, zero-padded) of a level sampled from ``src``.

    ``factor_r``/``factor_c``: size of one level pixel in ``src`` pixels.
    """
    ri = _nearest_index(shape[0], factor_r, src.shape[0])
    ci = _nearest_index(shape[1], factor_c, src.shape[1])
    for r0 in range(0, shape[0], tile):
        band = src[ri[r0 : r0 + tile]]
        for c0 in range(0, shape[1], tile):
            block = band[:, ci[c0 : c0 + tile]]
            if block.shape != (tile, tile):
                block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
            yield np.ascontiguousarray(block)


def _description(mpp: float, *, binary: bool) -> str:
    values = "0=background 255=tumour" if binary else "uint8 class labels"
    return f"h2gnet segmentation mask; {values}; mpp={mpp:.6g} um/px"


def write_mask_tiff(
    path: str | Path,
    mask: Raster,
    slide_dims_l0: tuple[int, int],
    *,
    mpp: float | None = None,
    tile: int = 256,
    compression: str = "deflate",
    max_top_px: int = 512,
) -> Path:
    """Atomically write ``mask`` as a pyramidal tiled TIFF covering a slide of ``slide_dims_l0``.

    Args:
        path: output ``.tif``/``.tiff`` path (replaced atomically).
        mask: boolean (written 0/255) or uint8 label mask at ``mask.mpp`` µm/px.
        slide_dims_l0: (width, height) of the slide's level 0, in pixels.
        mpp: µm/px of the written level 0; default ``mask.mpp``. Other values
            resample with nearest neighbour, tile by tile.
        tile: tile side in px (multiple of 16; 256 or 512 recommended).
        compression: ``"deflate"`` or ``"lzw"`` (both lossless).
        max_top_px: the smallest level has both sides <= this.

    Returns:
        ``Path(path)``.
    """
    if compression not in _COMPRESSION:
        raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}, got {compression!r}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    binary = mask.array.dtype == bool
    mask = fit_to_slide(mask, slide_dims_l0)
    src = _as_uint8(mask.array)
    out_mpp = mask.mpp if mpp is None else float(mpp)
    if out_mpp <= 0:
        raise ValueError(f"mpp must be positive, got {out_mpp}")
    shapes = pyramid_shapes(expected_shape(slide_dims_l0, mask.slide_mpp, out_mpp), max_top_px)
    raw_bytes = sum(r * c for r, c in shapes)
    description = _description(out_mpp, binary=binary)
    path = Path(path)
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 2**31) as tw:
            for k, shape in enumerate(shapes):
                # level pixel size in level-0-output pixels (≈ 2**k; exact ratio of the sides)
                down_r, down_c = shapes[0][0] / shape[0], shapes[0][1] / shape[1]
                factor_r, factor_c = out_mpp * down_r / mask.mpp, out_mpp * down_c / mask.mpp
                tiles = _level_tiles(src, shape, factor_r, factor_c, tile)
                options = _page_options(shape, tile, compression, (out_mpp * down_c, out_mpp * down_r))
                tw.write(tiles, subfiletype=1 if k else 0, description=None if k else description, **options)
    except OSError as exc:
        raise H2GNetError(path, f"cannot write mask TIFF ({exc.strerror or exc})") from None
    return path


def _page_options(
    shape: tuple[int, int], tile: int, compression: str, mpp_xy: tuple[float, float]
) -> dict[str, Any]:
    """tifffile ``write`` arguments of one tiled 8-bit grey page at (x, y) µm/px ``mpp_xy``."""
    return {
        "shape": shape,
        "dtype": np.uint8,
        "tile": (tile, tile),
        "photometric": "minisblack",
        "compression": _COMPRESSION[compression],
        "resolution": (1e4 / mpp_xy[0], 1e4 / mpp_xy[1]),
        "resolutionunit": "CENTIMETER",
        "metadata": None,
        "software": "h2gnet",
    }


def load_mask_tiff(path: str | Path, slide_mpp: float) -> Raster:
    """A mask written by :func:`write_mask_tiff`, read back: its level 0 (> 127 = tumour) at the µm/px of its
    resolution tags, over a slide of ``slide_mpp`` µm/px at level 0."""
    path = Path(path)
    if not path.exists():
        raise H2GNetError(path, "no such prediction mask")
    page = read_tiff_page(path, "the prediction mask", 1, "cannot be read as a mask TIFF ({error})",
                          tags=("XResolution", "ResolutionUnit"))
    arr, res, unit = page.array, page.tags["XResolution"], page.tags["ResolutionUnit"]
    per_cm = res[0] / res[1]
    if int(unit) != 3 or per_cm <= 0:
        raise H2GNetError(path, "has no resolution in pixels per centimetre: cannot place it on the slide")
    if arr.ndim == 3:
        arr = arr[..., 0]
    return Raster(arr > 127, 1e4 / per_cm, slide_mpp)
