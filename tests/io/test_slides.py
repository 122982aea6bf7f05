from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import phantom_image, real_slide, write_pyramid_tiff
from h2gnet.errors import H2GNetError
from h2gnet.io.slides import open_slide


@pytest.mark.parametrize("downsamples", [(1,), (1, 2, 4, 8), (1, 4, 16), (1, 3, 9)])
def test_read_at_mpp_agrees_across_pyramid_layouts(tmp_path: Path, downsamples: tuple[int, ...]) -> None:
    img, _ = phantom_image(2048, 1536)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.25, downsamples))
    assert slide.mpp == pytest.approx(0.25)
    # 1.0 µm/px is a 4x downsample; ask for a region and compare with the true image resized
    out = slide.read_region((512, 256), (128, 96), mpp=1.0)
    assert out.shape == (96, 128, 3) and out.dtype == np.uint8
    truth = cv2.resize(img[256 : 256 + 384, 512 : 512 + 512], (128, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - truth).mean() < 6  # JPEG + resampling error only
    whole = slide.read_whole(8.0)
    assert whole.shape == (48, 64, 3)


def test_best_level_picks_coarsest_level_not_coarser_than_request(tmp_path: Path) -> None:
    img, _ = phantom_image(1024, 1024)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.25, (1, 4, 16)))
    assert slide.best_level(1.0).downsample == 4
    assert slide.best_level(0.9).downsample == 1  # never upsample from a coarser level
    assert slide.best_level(1.005).downsample == 4  # 1 % tolerance
    assert slide.best_level(100).downsample == 16


def test_outside_slide_reads_as_background(tmp_path: Path) -> None:
    img, _ = phantom_image(512, 512)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5))
    out = slide.read_region((400, 400), (64, 64), mpp=1.0)  # half outside
    assert (out[-6:, -6:] == 255).all() and (out[:50, :50] == 245).all()


def test_slide_pickles_by_path_and_reads_from_threads(tiny_slide) -> None:
    path, _, _ = tiny_slide
    slide = open_slide(path)
    clone = pickle.loads(pickle.dumps(slide))
    assert clone.dimensions == slide.dimensions and clone.mpp == slide.mpp
    locs = [(x, y) for x in range(0, 1536, 256) for y in range(0, 1024, 256)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda loc: slide.read_region(loc, (64, 64), 2.0), locs))
    serial = [clone.read_region(loc, (64, 64), 2.0) for loc in locs]
    assert all(np.array_equal(a, b) for a, b in zip(threaded, serial))


def test_missing_mpp_names_the_override(tmp_path: Path) -> None:
    img, _ = phantom_image(256, 256)
    path = write_pyramid_tiff(tmp_path / "nompp.tiff", img, None)
    with pytest.raises(H2GNetError, match="--mpp") as err:
        open_slide(path)
    assert "nompp.tiff" in str(err.value)
    assert open_slide(path, mpp=0.5).mpp == 0.5


def test_implausible_mpp_rejected(tmp_path: Path) -> None:
    img, _ = phantom_image(256, 256)
    path = write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5)
    with pytest.raises(H2GNetError, match="plausible"):
        open_slide(path, mpp=-1)


@pytest.mark.parametrize("content,problem", [
    (b"", "not a slide"),
    (b"this is not an image at all" * 10, "not a slide"),
])
def test_unopenable_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.svs"
    path.write_bytes(content)
    with pytest.raises(H2GNetError, match=problem) as err:
        open_slide(path)
    assert "bad.svs" in str(err.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(H2GNetError, match="no such file"):
        open_slide(tmp_path / "absent.svs")
    with pytest.raises(H2GNetError, match="folder"):
        open_slide(tmp_path)


def test_truncated_slide_gives_clear_error(tmp_path: Path) -> None:
    img, _ = phantom_image(2048, 2048, seed=3)
    full = write_pyramid_tiff(tmp_path / "full.tiff", img, 0.5, (1, 4))
    data = full.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(H2GNetError) as err:
        slide = open_slide(cut)
        slide.read_whole(1.0)
    assert "cut.tiff" in str(err.value)


def test_huge_untiled_tiff_rejected_without_decoding(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "huge.tif"
    # a 30000×30000 uncompressed strip TIFF: a sparse file, nothing is written but the header
    mm = tifffile.memmap(path, shape=(30000, 30000, 3), dtype=np.uint8, photometric="rgb", bigtiff=True)
    del mm
    with pytest.raises(H2GNetError, match="no tiles or pyramid") as err:
        open_slide(path, mpp=0.25)
    assert "huge.tif" in str(err.value)


def test_real_svs_and_dicom_agree() -> None:
    svs = open_slide(real_slide("CMU-1-Small-Region.svs"))
    with pytest.warns(UserWarning, match="YCbCr"):
        dcm = open_slide(real_slide("CMU-1-Small-Region-dicom/level-0-frames-0-30.dcm"))
    assert svs.dimensions == dcm.dimensions == (2220, 2967)
    assert svs.mpp == pytest.approx(0.499) and dcm.mpp == pytest.approx(0.499)
    assert len(svs.levels) == 1 and len(dcm.levels) == 12
    a, b = svs.read_whole(4.0).astype(float), dcm.read_whole(4.0).astype(float)
    assert a.shape == b.shape
    # same tissue and colours (the mislabelled YCbCr is converted; unconverted differs by ~60 grey levels)
    assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() < 3
    assert np.corrcoef(a.mean(2).ravel(), b.mean(2).ravel())[0, 1] > 0.8


def test_real_slide_without_mpp() -> None:
    path = real_slide("tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(H2GNetError, match="--mpp"):
        open_slide(path)
    slide = open_slide(path, mpp=0.5)
    assert slide.read_region((1000, 1000), (256, 256), 1.0).shape == (256, 256, 3)
