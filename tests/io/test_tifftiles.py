"""Direct tile decoding gives OpenSlide's pixels, falls back where it must, and names bad files."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import phantom_image, real_slide, write_pyramid_tiff
from h2gnet.errors import H2GNetError
from h2gnet.io import tifftiles
from h2gnet.io.slides import open_slide


def _pair(path: Path, mpp: float | None = None):
    fast, plain = open_slide(path, mpp), open_slide(path, mpp)
    if plain._tiles is not None:
        plain._tiles.close()
    plain._tiles = None  # OpenSlide only
    return fast, plain


def _random_reads(fast, plain, n: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    worst = 0
    width, height = fast.dimensions
    for k in range(n):
        mpp = float(rng.choice([fast.mpp, 2 * fast.mpp, 4 * fast.mpp, 3.3 * fast.mpp]))
        w, h = int(rng.integers(1, 600)), int(rng.integers(1, 600))
        x, y = int(rng.integers(-400, width)), int(rng.integers(-400, height))
        if k % 2 == 0:  # on the level's pixel grid: the direct path
            ds = fast.best_level(mpp).downsample
            x, y = int(x // ds * ds), int(y // ds * ds)
        a, b = fast.read_region((x, y), (w, h), mpp), plain.read_region((x, y), (w, h), mpp)
        worst = max(worst, int(np.abs(a.astype(np.int16) - b).max()))
    return worst


@pytest.mark.slow
def test_tiled_tiff_levels_are_decoded_directly_and_match_openslide(tmp_path: Path) -> None:
    img, _ = phantom_image(3000, 2200, seed=1)
    path = write_pyramid_tiff(tmp_path / "s.tiff", img, 0.25, (1, 4), tile=256)
    fast, plain = _pair(path)
    assert fast._tiles is not None and fast._tiles.serves(0) and fast._tiles.serves(1)
    assert _random_reads(fast, plain, 60) == 0
    # the hot path really is ours: a read at level 1 fills the tile cache
    fast.read_region((1024, 1024), (256, 256), 1.0)
    assert any(level == 1 for level, _ in fast._tiles._cache)


def test_real_svs_matches_openslide() -> None:
    fast, plain = _pair(real_slide("CMU-1-Small-Region.svs"))
    assert fast._tiles is not None and fast._tiles.serves(0)
    assert _random_reads(fast, plain, 40, seed=2) == 0


def test_cache_is_bounded_and_threads_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tifftiles, "CACHE_BYTES", 4 * 256 * 256 * 3)
    img, _ = phantom_image(2048, 2048, seed=4)
    fast, plain = _pair(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5, (1,), tile=256))
    spots = [(x, y) for y in range(0, 2048, 192) for x in range(0, 2048, 192)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: fast.read_region(p, (300, 200), 0.5), spots))
    assert fast._tiles._cached_bytes <= tifftiles.CACHE_BYTES
    for p, arr in zip(spots, got):
        assert np.array_equal(arr, plain.read_region(p, (300, 200), 0.5))


def test_non_tiff_slides_use_openslide_only(tmp_path: Path) -> None:
    import cv2

    img, _ = phantom_image(400, 300)
    png = tmp_path / "s.png"
    cv2.imwrite(str(png), img[..., ::-1])
    assert open_slide(png, 1.0)._tiles is None


def test_corrupt_tile_names_the_file(tmp_path: Path) -> None:
    img, _ = phantom_image(1024, 1024, seed=5)
    path = write_pyramid_tiff(tmp_path / "bad.tiff", img, 0.5, (1,), tile=256)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    victim = 0 if int(np.argmax(counts)) != 0 else 1  # not the tile checked at open
    data = bytearray(path.read_bytes())
    data[offsets[victim] : offsets[victim] + counts[victim]] = bytes(counts[victim])
    path.write_bytes(bytes(data))
    slide = open_slide(path)
    assert slide._tiles is not None
    row, col = divmod(victim, 4)
    with pytest.raises(H2GNetError) as err:
        slide.read_region((col * 256, row * 256), (256, 256), 0.5)
    assert "bad.tiff" in str(err.value)


@pytest.mark.slow
def test_large_reduced_reads_are_area_resampled_from_the_tiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    img, _ = phantom_image(4000, 3000, seed=6)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5, (1,), tile=256))
    level0 = slide._tiles.read(0, 0, 0, 4000, 3000, slide._background)

    def no_openslide(*args: object) -> None:
        raise AssertionError("a large read on the level's grid must not go through OpenSlide")

    monkeypatch.setattr(slide._handle, "read_region", no_openslide)
    for factor, tolerance in ((2.0, 0.0), (1.5, 0.0), (2.5, 2.0)):
        got = slide.read_whole(0.5 * factor)
        rows, cols = slide.shape_at(0.5 * factor)
        assert got.shape == (rows, cols, 3)
        # one-step area resampling of whole source px, as a small read does (background beyond the image)
        src = np.empty((math.ceil(rows * factor), math.ceil(cols * factor), 3), np.uint8)
        src[:] = slide._background
        src[:3000, :4000] = level0[: src.shape[0], : src.shape[1]]
        want = cv2.resize(src, (cols, rows), interpolation=cv2.INTER_AREA)
        diff = np.abs(got.astype(np.int16) - want)
        assert diff.mean() <= tolerance and (tolerance > 0 or diff.max() == 0), (factor, diff.mean(), diff.max())
    # a read overhanging the slide is background there
    far = slide.read_region((3000, 2000), (1000, 1000), 1.5)
    assert far.shape == (1000, 1000, 3) and (far[-50:, -50:] == slide._background).all()


def test_tile_cache_budget_is_raised_for_a_block_and_restored(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tifftiles, "CACHE_BYTES", 2 * 256 * 256 * 3)
    img, _ = phantom_image(2048, 1024, seed=5)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5, (1,), tile=256))
    assert slide._tiles is not None
    spots = [(x, y) for y in range(0, 1024, 256) for x in range(0, 2048, 256)]  # 32 tiles
    with slide.tile_cache(len(spots) * 256 * 256 * 3):
        for p in spots:
            slide.read_region(p, (256, 256), 0.5)
        first = slide.tile_counts()
        for p in spots:  # a second pass is served from the raised cache
            slide.read_region(p, (256, 256), 0.5)
        second = slide.tile_counts()
    assert first == {"decoded": 32, "cache_hits": 0}
    assert second == {"decoded": 32, "cache_hits": 32}
    assert slide._tiles.cache_bytes == tifftiles.CACHE_BYTES
    assert slide._tiles._cached_bytes <= tifftiles.CACHE_BYTES  # trimmed back when the block ends
    with slide.tile_cache(None):  # no budget: no change
        assert slide._tiles.cache_bytes == tifftiles.CACHE_BYTES
