from __future__ import annotations

import numpy as np
import pytest

from conftest import phantom_image, real_slide, write_pyramid_tiff
from h2gnet.errors import H2GNetError
from h2gnet.io.slides import open_slide
from h2gnet.patches.tissue import detect_tissue, otsu_tissue, saturation, tissue_from_rgb


def test_saturation_scale_is_0_255_for_uint8_and_float() -> None:
    # pure-ish pink: S = (max-min)/max = (230-150)/230 -> 88.7 on 0-255
    rgb = np.array([[[230, 150, 190]]], np.uint8)
    assert saturation(rgb)[0, 0] == pytest.approx(255 * 80 / 230, abs=1)
    assert saturation(rgb.astype(np.float32) / 255.0)[0, 0] == pytest.approx(255 * 80 / 230, abs=1)


def test_threshold_20_on_the_0_255_scale() -> None:
    # grey-ish pixels with S just below and above 20/255
    below = np.array([[[200, 200 - 15, 200]]], np.uint8)   # S = 255*15/200 = 19.1
    above = np.array([[[200, 200 - 17, 200]]], np.uint8)   # S = 21.7
    assert not tissue_from_rgb(np.tile(below, (9, 9, 1))).any()
    assert tissue_from_rgb(np.tile(above, (9, 9, 1))).all()


def test_closing_fills_small_gaps() -> None:
    rgb = np.full((40, 40, 3), (230, 150, 190), np.uint8)
    rgb[20, 20] = 250  # a one-pixel white hole inside tissue
    assert tissue_from_rgb(rgb)[20, 20]


@pytest.mark.slow
def test_detect_tissue_on_phantom(tmp_path) -> None:
    img, _ = phantom_image(4096, 3072)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5, (1, 4, 16)))
    mask = detect_tissue(slide)
    assert mask.mpp == 8.0 and mask.shape == (192, 256)
    expected = np.pi * 0.35 * 0.3  # area fraction of the tissue ellipse
    assert mask.array.mean() == pytest.approx(expected, abs=0.03)


def test_blank_slide_says_no_tissue(tmp_path) -> None:
    blank = np.full((1024, 1024, 3), 240, np.uint8)
    slide = open_slide(write_pyramid_tiff(tmp_path / "blank.tiff", blank, 0.5))
    with pytest.raises(H2GNetError, match="no tissue") as err:
        detect_tissue(slide)
    assert "blank.tiff" in str(err.value)
    assert not detect_tissue(slide, require=False).array.any()


def test_otsu_baseline_segments_all_tissue(tmp_path) -> None:
    img, _ = phantom_image(2048, 1024)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5, (1, 4)))
    mask = otsu_tissue(slide)
    assert max(mask.shape) == 1024
    assert mask.array.mean() == pytest.approx(np.pi * 0.35 * 0.3, abs=0.03)


@pytest.mark.parametrize("name,mpp,lo,hi", [
    ("CMU-1-Small-Region.svs", None, 0.25, 0.6),
    ("tcga-cr-7395-01a-01-ts1.svs", 0.25, 0.4, 0.9),
])
def test_real_slides_have_plausible_tissue(name, mpp, lo, hi) -> None:
    mask = detect_tissue(open_slide(real_slide(name), mpp=mpp))
    assert lo < mask.array.mean() < hi
