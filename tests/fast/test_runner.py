"""Running an exported pipeline with pyFAST against h2gnet (skipped without pyFAST), and FAST's patch level.

The run test needs pyFAST (``pip install pyfast``, plus an OpenCL ICD such as ``pocl-opencl-icd``)
and is skipped without it; it runs FAST in a child process and compares its heatmap with
:func:`h2gnet.infer.heatmap.compute_heatmap` on the same phantom slide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fast_helpers import REFINE_SIZE, exported, tiny_models  # noqa: F401 (fixtures)

from h2gnet.errors import H2GNetError
from h2gnet.fast.runner import (
    FastRun,
    _patch_source,
    fast_available,
    fast_patch_level,
    mask_dice,
    run_fast_pipeline,
    segmentation_raster,
)

#: FAST (its ONNX Runtime engine, its own JPEG decoding) vs h2gnet (ONNX Runtime) on the same
#: patches: probabilities agree to float32 rounding (2.8e-5 observed); the patch sets to a few border cells.
HEATMAP_TOLERANCE = 1e-3
MAX_PATCH_SET_DIFFERENCE = 0.05
#: Refined masks (a random tiny U-Net: ragged borders) at 8 µm/px; 0.96 observed.
MIN_SEGMENTATION_DICE = 0.85


def test_fast_patch_level_and_the_truncated_scale_workaround() -> None:
    # 0.5 µm/px, downsamples 1-4-16 with exact level sizes: 5× (2 µm/px) is level 1, read as it is
    assert fast_patch_level([1.0, 4.0, 16.0], 20.0, 5.0, 0.5) == (1, 1.0)
    # no level at 1 µm/px: level 0 resampled by 2; 0.499 µm/px (M0 20.04): level 1 of 1-3-9, factor 1.336
    assert fast_patch_level([1.0, 4.0, 16.0], 20.0, 10.0, 0.5) == (0, 2.0)
    level, factor = fast_patch_level([1.0, 2.9995, 8.99], 10 / 0.499, 5.0, 0.499)
    assert level == 1 and factor == pytest.approx(2 / (2.9995 * 0.499))
    ok = _patch_source([1.0, 4.0, 16.0], 20.0, 5.0, 128, 0.5)
    assert ok["mode"] == "magnification" and not ok["truncated_scale_bug"] and ok["variables"] == {}
    # level 1 of a 12,981 px wide slide is 3,246 px (rounded up): scale 3.9991, which FAST truncates to 3
    bad = _patch_source([1.0, 12981 / 3246, 12981 / 812], 20.0, 5.0, 128, 0.5)
    assert bad["truncated_scale_bug"] and bad["mode"] == "level 0" and bad["level0_patch_size"] == 512
    assert bad["variables"] == {"patch_magnification": "0", "patch_level": "0", "patch_size": "512"}
    off = _patch_source([1.0, 12981 / 3246], 20.0, 5.0, 128, 0.5, workaround=False)
    assert off["mode"] == "magnification" and "wrong place" in off["warning"]
    odd = _patch_source([1.0, 12244 / 4082], 10 / 0.499, 5.0, 128, 0.499)  # 513.03 px at level 0: no fix
    assert odd["truncated_scale_bug"] and odd["mode"] == "magnification" and "warning" in odd


@pytest.mark.skipif(not fast_available(), reason="pyFAST is not installed (pip install pyfast)")
def test_fast_run_agrees_with_h2gnet(exported: Path, tiny_models: dict[str, Path], tiny_slide, tmp_path: Path) -> None:  # noqa: F811 (pytest fixtures)
    from h2gnet.infer.heatmap import compute_heatmap
    from h2gnet.infer.refine_input import low_resolution, refine
    from h2gnet.infer.runtime import OnnxModel
    from h2gnet.io.raster import Raster
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.tissue import detect_tissue

    slide_path, _, _ = tiny_slide  # 2048×1536 at 0.5 µm/px, downsamples 1-4-16, no objective power
    result = run_fast_pipeline(exported, slide_path, tmp_path / "fast-out", fast_home=tmp_path / "home",
                               timeout=120)
    assert result.magnification_source == "um/px" and result.magnification == pytest.approx(20)
    assert result.lowres_level == 2 and result.seconds > 0  # 128×96: the smallest level >= 64 px
    assert result.patch_source["mode"] == "magnification" and result.patch_source["level"] == 1
    assert not result.patch_source["truncated_scale_bug"]  # 2048 / 4 = 512: an exact level
    assert Path(result.outputs["segmentation"]).with_suffix(".raw").is_file()
    assert not list((tmp_path / "fast-out").glob(".*"))  # temporary names renamed
    assert isinstance(result, FastRun) and result.heatmap.dtype == np.float32 and result.process_seconds > 0
    assert result.summary()["lowres_level"] == 2 and "heatmap" not in result.summary()

    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide)
        heat = compute_heatmap(slide, OnnxModel(tiny_models["patch"] / "model.onnx", "patch-classifier", threads=1),
                               tissue, progress=False)
        low = low_resolution(slide, REFINE_SIZE)
        prob = refine(OnnxModel(tiny_models["refine"] / "model.onnx", "refiner", threads=1), low, heat)
        extent = slide.dimensions
    fast_heat = result.heatmap
    assert fast_heat.shape == heat.shape  # same grid: 128 µm cells from the level-0 origin
    ours, theirs = heat.array > 0, fast_heat > 0
    assert np.count_nonzero(ours ^ theirs) <= MAX_PATCH_SET_DIFFERENCE * np.count_nonzero(ours)
    both = ours & theirs
    assert np.abs(fast_heat[both] - heat.array[both]).max() <= HEATMAP_TOLERANCE
    assert heat.array[both].std() > 0.05  # the comparison means something: the probabilities vary

    fast_mask = segmentation_raster(result, 8.0)
    ours_mask = Raster(prob.array > 0.5, prob.mpp, prob.slide_mpp)
    assert mask_dice(fast_mask, ours_mask, extent) >= MIN_SEGMENTATION_DICE
    tissue_dice = mask_dice(segmentation_raster(result, 8.0, key="tissue"), tissue, extent)
    assert tissue_dice >= 0.95


def test_run_fast_pipeline_reports_bad_input(exported: Path, tmp_path: Path) -> None:  # noqa: F811 (pytest fixtures)
    with pytest.raises(H2GNetError, match="no such slide"):
        run_fast_pipeline(exported, tmp_path / "missing.svs", tmp_path)
    other = tmp_path / "other.fpl"
    other.write_text('PipelineName "x"\n')
    with pytest.raises(H2GNetError, match="not a pipeline exported"):
        run_fast_pipeline(other, exported, tmp_path)


def test_module_imports_without_pyfast() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['fast'] = None; import h2gnet.fast.runner, h2gnet.fast.fpl, h2gnet.fast.graph; "
            "assert 'fast' not in [m for m in sys.modules if sys.modules[m] is not None]")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
