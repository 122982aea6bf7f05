"""The refinement network's input: which pyramid level, bounded size, channels and ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import phantom_image, write_pyramid_tiff
from h2gnet.infer.refine_input import MAX_OVERSAMPLE, low_resolution, network_input, target_mask
from h2gnet.io.raster import Raster
from h2gnet.io.slides import open_slide


def test_uses_the_smallest_level_that_covers_the_size(tmp_path: Path) -> None:
    img, _ = phantom_image(2400, 2200)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5, (1, 2, 8, 16)))
    low = low_resolution(slide, 256)  # levels 2400, 1200, 300, 150 wide: 300×275 is the smallest that fits
    assert low.mpp == pytest.approx(4.0)
    assert low.image.shape == (275, 300, 3) and low.image.dtype == np.uint8


@pytest.mark.slow
@pytest.mark.parametrize("side", [2048, 4096])
def test_read_is_capped_whatever_the_slide_size(tmp_path: Path, side: int) -> None:
    img, _ = phantom_image(side, side * 3 // 4)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 0.5, (1,)))  # no pyramid at all
    low = low_resolution(slide, 256)
    assert max(low.image.shape[:2]) == MAX_OVERSAMPLE * 256  # the same memory for both slide sizes
    assert low.mpp == pytest.approx(side * 0.5 / (MAX_OVERSAMPLE * 256))


def test_network_input_channels_and_ranges(tmp_path: Path) -> None:
    img, _ = phantom_image(1200, 1000)
    slide = open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 1.0, (1,)))
    low = low_resolution(slide, 128)
    heat = Raster(np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(30, 40), 32.0, 1.0)
    x = network_input(low, heat, 128)
    assert x.shape == (4, 128, 128) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x[3, :, 0].mean() < 0.5 < x[3, :, -1].mean()  # heatmap rises left to right
    assert network_input(low, None, 128).shape == (3, 128, 128)
    # RGB is the slide's picture scaled to [0, 1]: the background is bright
    assert x[:3, 0, 0].min() > 0.9
    truth = Raster(np.zeros((1000, 1200), bool), 1.0, 1.0)
    truth.array[:, 600:] = True
    t = target_mask(low, truth, 128)
    assert t.dtype == np.uint8 and set(np.unique(t)) == {0, 1} and t[:, -1].all() and not t[:, 0].any()


class _StandIn:
    """Stands in for a refiner OnnxModel: tumour probability from the heatmap channel, optionally plus a
    left-to-right ramp (a network that is not symmetric under flips and turns)."""

    input_size, in_channels, tumour_channel, card, path = 64, 4, 1, None, Path("refiner.onnx")

    def __init__(self, ramp: float) -> None:
        self.ramp, self.calls = ramp, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        p = np.clip(x[:, 3] * (1 - self.ramp) + self.ramp * np.linspace(0, 1, x.shape[-1], dtype=np.float32), 0, 1)
        return np.stack([1 - p, p], axis=1)


def test_test_time_augmentation_turns_every_output_back(tmp_path: Path) -> None:
    from h2gnet.infer.refine_input import refine

    img, _ = phantom_image(1200, 1000)
    low = low_resolution(open_slide(write_pyramid_tiff(tmp_path / "s.tiff", img, 1.0, (1,))), 64)
    heat = Raster(np.zeros((30, 40), np.float32), 32.0, 1.0)
    heat.array[5:12, 3:15] = 1.0  # an off-centre, asymmetric block
    symmetric = _StandIn(0.0)
    plain, tta = refine(symmetric, low, heat).array, refine(symmetric, low, heat, tta=True).array
    assert symmetric.calls == 1 + 8
    np.testing.assert_allclose(tta, plain, atol=1e-5)  # each turned output was turned back onto the block
    ramp = _StandIn(0.5)
    averaged = refine(ramp, low, heat, tta=True).array
    # the ramp averages out over the eight transforms: the left and right edges no longer differ
    assert abs(float(averaged[:, 0].mean() - averaged[:, -1].mean())) < 0.02
    assert float(refine(ramp, low, heat).array[:, -1].mean() - refine(ramp, low, heat).array[:, 0].mean()) > 0.3
