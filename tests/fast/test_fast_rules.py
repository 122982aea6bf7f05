"""FAST 4.18's rules as the h2gnet-2022 preset applies them, checked against plain re-statements of the rules
(no pyFAST needed; tests/fast/test_compare.py checks them against pyFAST itself)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from h2gnet.errors import H2GNetError
from h2gnet.infer.model_card import load_preset
from h2gnet.infer.runtime import OnnxModel
from h2gnet.io.raster import Raster
from h2gnet.patches.grid import PatchGrid, fast_cell_fractions
from h2gnet.patches.tissue import rgb_distance_tissue

PRESET = "h2gnet-2022"


def _fast_resize_reference(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """FAST 4.18's mask → patch-grid resize written out pixel by pixel: Gaussian pre-smoothing
    (σ = (in/out − 1)/2 per axis, kernel 2⌈2σ⌉+1 ≤ 19, normalised, edges replicated), then bilinear
    sampling at u = (i + 0.5)·in/out − 0.5 with clamped neighbours."""
    a = mask.astype(np.float64)
    h, w = a.shape
    if cols < w or rows < h:
        sx, sy = max((w / cols - 1) / 2, 1e-6), max((h / rows - 1) / 2, 1e-6)
        hx, hy = min(math.ceil(2 * sx), 9), min(math.ceil(2 * sy), 9)
        kx = np.exp(-np.arange(-hx, hx + 1) ** 2 / (2 * sx * sx))
        ky = np.exp(-np.arange(-hy, hy + 1) ** 2 / (2 * sy * sy))
        k = np.outer(ky, kx)
        k /= k.sum()
        padded = np.pad(a, ((hy, hy), (hx, hx)), mode="edge")
        a = sum(k[dy, dx] * padded[dy:dy + h, dx:dx + w] for dy in range(2 * hy + 1) for dx in range(2 * hx + 1))
    out = np.zeros((rows, cols))
    for j in range(rows):
        for i in range(cols):
            u, v = (i + 0.5) * w / cols - 0.5, (j + 0.5) * h / rows - 0.5
            x0, y0 = math.floor(u), math.floor(v)
            fx, fy = u - x0, v - y0

            def g(x: int, y: int) -> float:
                return a[min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

            out[j, i] = ((1 - fx) * (1 - fy) * g(x0, y0) + fx * (1 - fy) * g(x0 + 1, y0)
                         + (1 - fx) * fy * g(x0, y0 + 1) + fx * fy * g(x0 + 1, y0 + 1))
    return out


@pytest.mark.parametrize("shape,grid_rc", [((53, 71), (5, 7)), ((96, 128), (3, 4)), ((40, 40), (13, 9))])
def test_fast_fractions_follow_fasts_resize(shape: tuple[int, int], grid_rc: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.4
    mask[: shape[0] // 3] = True  # a solid part and a ragged part
    rows, cols = grid_rc
    # a grid of (rows, cols) 16-px cells over a slide at 1 µm/px; the mask spans it whatever its pixel count
    grid = PatchGrid((cols * 16, rows * 16), 1.0, 16, 1.0)
    assert grid.shape == (rows, cols)
    raster = Raster(mask, cols * 16 / shape[1], 1.0)
    got = fast_cell_fractions(raster, grid)
    np.testing.assert_allclose(got, _fast_resize_reference(mask, rows, cols), atol=2e-5)


def test_fast_fractions_see_only_the_middle_of_large_cells() -> None:
    """Why the preset needs FAST's estimate: FAST caps its smoothing kernel at 19 px, so with 64 mask px per
    patch its 'fraction' is the tissue near the patch's centre — a small blob in the middle passes its 0.5,
    a patch full of tissue but for a hole in the middle fails it."""
    from h2gnet.patches.grid import cell_fractions

    mask = np.zeros((128, 128), bool)
    mask[24:40, 24:40] = True          # cell (0, 0): a 16 × 16 px blob at its centre, 6 % of it
    mask[64:, 64:] = True              # cell (1, 1): full ...
    mask[86:106, 86:106] = False       # ... but for a 20 × 20 px hole at its centre (90 % tissue)
    grid = PatchGrid((128, 128), 1.0, 64, 1.0)
    raster = Raster(mask, 1.0, 1.0)
    area, fast = cell_fractions(raster, grid), fast_cell_fractions(raster, grid)
    assert area[0, 0] == pytest.approx(0.0625) and fast[0, 0] >= 0.5
    assert area[1, 1] == pytest.approx(0.9023, abs=1e-3) and fast[1, 1] < 0.5


def test_rgb_distance_rule_as_fast_computes_it() -> None:
    rgb = np.full((21, 21, 3), 255, np.uint8)
    rgb[10, 3] = (170, 255, 255)   # distance exactly 85: not tissue (FAST: strictly greater)
    rgb[10, 15] = (169, 255, 255)  # distance 86: tissue
    rgb[0, 0] = (0, 0, 0)          # black: an empty scan area, not tissue
    raw = rgb_distance_tissue(rgb, 85, 0, 0)
    assert not raw[10, 3] and raw[10, 15] and not raw[0, 0] and raw.sum() == 1
    # dilation by a disc of radius 9 // 2 = 4 (Euclidean): 49 pixels around the one tissue pixel
    dilated = rgb_distance_tissue(rgb, 85, 9, 0)
    ys, xs = np.nonzero(dilated)
    assert dilated.sum() == 49 and ((ys - 10) ** 2 + (xs - 15) ** 2 <= 16).all()
    # the erosion repeats edge pixels: tissue touching the border is not eaten from outside
    edge = np.full((20, 20, 3), 255, np.uint8)
    edge[:, :6] = (150, 80, 160)
    closed = rgb_distance_tissue(edge, 85, 9, 9)
    assert closed[:, :6].all() and not closed[:, 7:].any()


@pytest.fixture(scope="module")
def refiners(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("onnx")
    from standins import heatmap_follower_refiner

    root = tmp_path_factory.mktemp("refiners")
    return {
        "published": heatmap_follower_refiner(root / "published.onnx", 64),
        # graph order image, heatmap; alphabetical order heatmap, image: FAST gives the image to input_heatmap
        "against": heatmap_follower_refiner(root / "against.onnx", 64, names=("input_image", "input_heatmap")),
        # graph order heatmap, image; alphabetical order image, heatmap: FAST binds them right
        "reordered": heatmap_follower_refiner(root / "reordered.onnx", 64, names=("a_image", "b_heatmap"),
                                              heatmap_first=True),
    }


def _preset_refiner(path: Path) -> OnnxModel:
    card = load_preset(PRESET).cards["refiner"]
    from dataclasses import replace

    return OnnxModel(path, "refiner", "cpu", 1, "fp32", card=replace(card, input_size=64))


def test_refiner_inputs_are_bound_as_fast_binds_its_ports(refiners: dict[str, Path]) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((1, 4, 64, 64), dtype=np.float32)
    reference = _preset_refiner(refiners["published"])(x)
    # declared heatmap-first, but 'a_image' sorts first: the image goes there, as in FAST, and the result is
    # the published stand-in's
    np.testing.assert_allclose(_preset_refiner(refiners["reordered"])(x), reference, atol=1e-6)
    # 'input_heatmap' sorts before 'input_image': FAST would feed it the RGB image; h2gnet says so
    with pytest.raises(H2GNetError, match=r"'input_heatmap'.*alphabetical.*input\.names"):
        _preset_refiner(refiners["against"])


def test_compare_fast_without_pyfast_says_what_to_install(monkeypatch, tmp_path: Path, capsys) -> None:
    import h2gnet.fast.runner as runner
    from h2gnet.cli import main

    monkeypatch.setattr(runner, "fast_available", lambda: False)
    assert main(["compare-fast", str(tmp_path / "x.svs"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "pip install pyfast" in err and len(err.strip().splitlines()) == 1
