"""FAST / FastPathology export: the .fpl text, the exported models, and (with pyFAST) a run against h2gnet.

The pipeline text is checked against FAST's grammar as pyFAST 4.18 parses it (blocks of
``ProcessObject`` / ``Attribute`` / ``Input`` lines, ``@@name=default@@`` variables,
``$CURRENT_PATH$``). The run test needs pyFAST (``pip install pyfast``, plus an OpenCL ICD such
as ``pocl-opencl-icd``) and is skipped without it; it runs FAST in a child process and
compares its heatmap with :func:`h2gnet.infer.heatmap.compute_heatmap` on the same phantom slide.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from h2gnet.cli import main
from h2gnet.errors import H2GNetError
from h2gnet.fast.pipeline import (
    FAST_HEATMAP_INPUT,
    FAST_IMAGE_INPUT,
    FastModel,
    _patch_source,
    export_fast,
    fast_available,
    fast_magnification,
    fast_patch_level,
    fpl_text,
    mask_dice,
    read_header,
    run_fast_pipeline,
    segmentation_raster,
    split_models,
)

PATCH_SIZE, PATCH_MPP, REFINE_SIZE = 64, 2.0, 64
#: The FAST engine of the run test: float32 everywhere (see the ``exported`` fixture).
ENGINE = "ONNXRuntime"
#: FAST (its ONNX Runtime engine, its own JPEG decoding) vs h2gnet (ONNX Runtime) on the same
#: patches: probabilities agree to float32 rounding (3.6e-5 observed); the patch sets to a few border cells.
HEATMAP_TOLERANCE = 1e-3
MAX_PATCH_SET_DIFFERENCE = 0.05
#: Refined masks (a random tiny U-Net: ragged borders) at 8 µm/px; 0.96 observed.
MIN_SEGMENTATION_DICE = 0.85

VARIABLE = re.compile(r"@@([A-Za-z_][A-Za-z0-9_]*)=([^@]*)@@")


# -- a FAST-grammar reader ------------------------------------------------------------------------
def parse_fpl(text: str, variables: dict[str, str] | None = None, current: str = "/here") -> dict:
    """Objects, attributes, inputs and pipeline declarations of an .fpl, as FAST 4.18 reads it.

    Fails the test on anything FAST would reject: unknown keys, unclosed or default-less
    variables, inputs that name neither declared input data nor an earlier process object.
    """
    variables = dict(variables or {})
    objects: dict[str, dict] = {}
    declared: dict[str, list] = {"input": [], "output": [], "attributes": {}}
    current_id = None
    for raw in text.splitlines():
        line = raw.replace("$CURRENT_PATH$", current).strip()
        if not line or line.startswith("#"):
            continue
        assert line.count("@@") % 2 == 0, f"unclosed variable in {line!r}"
        for name, default in VARIABLE.findall(line):
            variables.setdefault(name, default)
        assert "@@" not in VARIABLE.sub("", line), f"variable without default in {line!r}"
        line = VARIABLE.sub(lambda m: variables[m.group(1)], line)
        key, _, rest = line.partition(" ")
        tokens = rest.split()
        if key == "ProcessObject":
            assert len(tokens) == 2, line
            current_id = tokens[0]
            assert current_id not in objects, f"duplicate id {current_id}"
            objects[current_id] = {"type": tokens[1], "attributes": {}, "inputs": {}}
        elif key == "Attribute" and current_id is not None:
            assert len(tokens) >= 2, line
            value = rest[len(tokens[0]):].strip()
            objects[current_id]["attributes"][tokens[0]] = value
        elif key == "Input":
            assert current_id is not None and len(tokens) in (2, 3), line
            port, source = int(tokens[0]), tokens[1]
            assert source in declared["input"] or (source in objects and source != current_id), \
                f"input {source} of {current_id} is neither pipeline input data nor an earlier object"
            objects[current_id]["inputs"][port] = (source, int(tokens[2]) if len(tokens) == 3 else 0)
        elif key in ("PipelineName", "PipelineDescription"):
            assert rest.startswith('"') and rest.endswith('"'), line
            declared[key] = rest.strip('"')
        elif key == "PipelineInputData":
            declared["input"].append(tokens[0])
        elif key == "PipelineOutputData":
            assert len(tokens) == 3, line
            declared["output"].append(tokens)
        elif key == "Attribute":  # a pipeline attribute (before any object)
            declared["attributes"][tokens[0]] = rest[len(tokens[0]):].strip().strip('"')
        else:
            pytest.fail(f"FAST does not know the line {line!r}")
    for name, obj, port in declared["output"]:
        assert obj in objects and port.isdigit(), f"output {name} names a missing object {obj}"
    return {"objects": objects, **declared, "variables": variables}


def _model(kind: str, size: int, channels: int, mpp: float | None) -> FastModel:
    return FastModel(Path(f"/x/{kind}.onnx"), kind, size, channels, mpp, ("non-tumour", "tumour"), "test")


# -- always: the text --------------------------------------------------------------------------
def test_fpl_text_is_well_formed_with_the_cascade_parameters() -> None:
    patch = _model("patch-classifier", 256, 3, 1.0)
    refine = _model("refiner", 1024, 4, None)
    text = fpl_text(patch, refine)
    fpl = parse_fpl(text)
    objs = fpl["objects"]
    assert fpl["input"] == ["WSI"] and {o[0] for o in fpl["output"]} == {"tissue", "heatmap", "segmentation"}
    assert [o["type"] for o in objs.values()] == [
        "TissueSegmentation", "PatchGenerator", "NeuralNetwork", "PatchStitcher", "RunUntilFinished",
        "TensorToImage", "ImagePyramidLevelExtractor", "SegmentationNetwork", "ImageFileExporter"]
    tissue = objs["tissue"]["attributes"]
    assert tissue["color-thresholding"] == "true" and tissue["threshold"] == "70"
    assert tissue["dilate-kernel-size"] == tissue["erode-kernel-size"] == "5"
    patches = objs["patches"]["attributes"]
    assert patches["patch-size"] == "256 256" and patches["patch-magnification"] == "10"  # 1 µm/px = 10×
    assert patches["mask-threshold"] == "0.25" and patches["patch-overlap"] == "0.0"
    assert patches["patch-level"] == "0"  # used only when a run sets patch_magnification to 0
    assert objs["patches"]["inputs"] == {0: ("WSI", 0), 1: ("tissue", 0)}
    net = objs["classifier"]["attributes"]
    assert net["model"] == '"/here/patch.onnx"' and float(net["scale-factor"]) == pytest.approx(1 / 255)
    assert objs["heatmap"]["attributes"]["channels"] == "1"  # the tumour column
    assert objs["lowres"]["attributes"]["level"] == "-1"  # FastPathology's default: the smallest level
    ref = objs["refinement"]
    assert ref["attributes"]["model"] == '"/here/refine.onnx"' and ref["attributes"]["scale-factor"] == "1.0"
    assert ref["inputs"] == {0: ("lowres", 0), 1: ("heatmap", 0)}
    assert objs["exporter"]["inputs"] == {0: ("refinement", 0)}
    assert objs["exporter"]["attributes"]["filename"] == '"/here/segmentation.mhd"'
    header = read_header_text(text)
    assert header["patch_size"] == 256 and header["patch_mpp"] == 1.0 and header["magnification"] == 10.0
    assert header["refine_size"] == 1024 and header["tumour_channel"] == 1

    # variables given at run time replace the defaults
    run = parse_fpl(text, {"lowres_level": "3", "tissue_kernel": "3", "output": "/o/s.mhd",
                           "patch_magnification": "0", "patch_size": "512"})
    assert run["objects"]["lowres"]["attributes"]["level"] == "3"
    assert run["objects"]["tissue"]["attributes"]["erode-kernel-size"] == "3"
    assert run["objects"]["patches"]["attributes"]["patch-size"] == "512 512"
    assert run["objects"]["patches"]["attributes"]["patch-magnification"] == "0"

    # patch-wise only: a 0.5 threshold feeds the exporter; 2 µm/px is 5×; another engine is named
    alone = parse_fpl(fpl_text(_model("patch-classifier", 128, 3, 2.0), None, inference_engine="ONNXRuntime"))
    objs = alone["objects"]
    assert "refinement" not in objs and objs["threshold"]["attributes"]["lower-threshold"] == "0.5"
    assert objs["exporter"]["inputs"] == {0: ("threshold", 0)}
    assert objs["patches"]["attributes"]["patch-magnification"] == "5"
    assert objs["classifier"]["attributes"]["inference-engine"] == "ONNXRuntime"

    # a 3-channel refiner (UNet-LR) gets the image alone
    lr = parse_fpl(fpl_text(patch, _model("refiner", 1024, 3, None)))
    assert lr["objects"]["refinement"]["inputs"] == {0: ("lowres", 0)}
    assert fast_magnification(0.25) == 40 and fast_magnification(0.5) == 20


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


def read_header_text(text: str) -> dict:
    first = text.splitlines()[0]
    assert first.startswith("# h2gnet-fast ")
    return json.loads(first.split(" ", 2)[2])


# -- with the training extra: exported models --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A MobileNetV2 (64 px at 2 µm/px) and a 4-level U-Net (64 px), BatchNorm calibrated, as run folders."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from h2gnet.train.export import export_classifier_onnx, export_refiner_onnx
    from h2gnet.train.models.classifier import build_classifier
    from h2gnet.train.models.common import calibrate_batchnorm
    from h2gnet.train.models.unets import build_refiner

    root = tmp_path_factory.mktemp("fast-models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        with pytest.warns(UserWarning, match="random initialisation"):
            clf = build_classifier("mobilenetv2")
        calibrate_batchnorm(clf, [torch.rand(4, 3, PATCH_SIZE, PATCH_SIZE, generator=g)
                                  * torch.rand(4, 1, 1, 1, generator=g) for _ in range(3)])
        (root / "mob").mkdir()
        export_classifier_onnx(clf.eval(), root / "mob" / "model.onnx", PATCH_SIZE, mpp=PATCH_MPP)
        (root / "mob" / "config.json").write_text("{}")
        torch.manual_seed(0)
        unet = build_refiner("unet", filters=(4, 8, 8, 16))
        calibrate_batchnorm(unet, [torch.rand(2, 4, REFINE_SIZE, REFINE_SIZE, generator=g) for _ in range(2)])
        (root / "unet").mkdir()
        export_refiner_onnx(unet.eval(), root / "unet" / "model.onnx", REFINE_SIZE)
    finally:
        torch.set_num_threads(threads)
    return {"patch": root / "mob", "refine": root / "unet"}


@pytest.fixture(scope="module")
def exported(tiny_models: dict[str, Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fast-export")
    # FAST's default engine (OpenVINO 2023.0) computes in bfloat16 on CPUs with AVX512-BF16 (this
    # AMD EPYC: a 1x1 convolution by 1 + 2^-9 returns 200/255 as 0.78515625, the bf16 value), which
    # moves this untrained MobileNetV2's probabilities by up to 0.56; its ONNX Runtime engine is float32.
    return export_fast(tiny_models["patch"], tiny_models["refine"] / "model.onnx", out,
                       inference_engine=ENGINE)


def test_export_copies_models_and_keeps_the_refiner_numerics(exported: Path, tiny_models: dict[str, Path]) -> None:
    import onnxruntime as ort

    out = exported.parent
    assert exported.name == "h2gnet.fpl" and sorted(p.name for p in out.iterdir()) == [
        "h2gnet.fpl", "patch.onnx", "refine.onnx"]  # nothing half-written left behind
    assert (out / "patch.onnx").read_bytes() == (tiny_models["patch"] / "model.onnx").read_bytes()
    fpl = parse_fpl(exported.read_text(), current=str(out))
    for obj in ("classifier", "refinement"):
        assert fpl["objects"][obj]["attributes"]["inference-engine"] == ENGINE
    for obj in ("classifier", "refinement"):
        assert Path(fpl["objects"][obj]["attributes"]["model"].strip('"')).is_file()
    patches = fpl["objects"]["patches"]["attributes"]
    assert patches["patch-size"] == f"{PATCH_SIZE} {PATCH_SIZE}" and patches["patch-magnification"] == "5"
    assert read_header(exported)["refine_size"] == REFINE_SIZE

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    original = ort.InferenceSession(str(tiny_models["refine"] / "model.onnx"), opts)
    edited = ort.InferenceSession(str(out / "refine.onnx"), opts)
    assert [i.name for i in edited.get_inputs()] == [FAST_IMAGE_INPUT, FAST_HEATMAP_INPUT]
    assert edited.get_modelmeta().custom_metadata_map["h2gnet_kind"] == "refiner"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 3, REFINE_SIZE, REFINE_SIZE)).astype(np.float32)
    heat = rng.random((2, 1, REFINE_SIZE, REFINE_SIZE), dtype=np.float32)
    (want,) = original.run(None, {"input": np.concatenate([rgb / np.float32(255), heat], axis=1)})
    (got,) = edited.run(None, {FAST_IMAGE_INPUT: rgb, FAST_HEATMAP_INPUT: heat})
    np.testing.assert_array_equal(got, want)  # same operations in the same order: bit-identical


def test_cli_export_fast_takes_run_folders_in_any_order(tiny_models: dict[str, Path], tmp_path: Path,
                                                        capsys) -> None:
    out = tmp_path / "fast"
    assert main(["export-fast", str(tiny_models["refine"]), str(tiny_models["patch"]), "-o", str(out)]) == 0
    assert "h2gnet.fpl" in capsys.readouterr().out and (out / "refine.onnx").exists()
    assert split_models([tiny_models["patch"]]) == (tiny_models["patch"], None)
    # patch-wise export over the same folder drops the stale refiner
    assert main(["export-fast", str(tiny_models["patch"]), "-o", str(out), "--tissue-threshold", "85"]) == 0
    assert not (out / "refine.onnx").exists()
    assert "Attribute threshold 85" in (out / "h2gnet.fpl").read_text()
    # errors: two classifiers, a refiner alone, an empty folder, a non-model
    for args, message in [([tiny_models["patch"], tiny_models["patch"]], "second patch-classifier"),
                          ([tiny_models["refine"]], "no patch-classifier"),
                          ([tmp_path], "without model.onnx"),
                          ([tiny_models["patch"] / "config.json"], "not a loadable ONNX model")]:
        assert main(["export-fast", *map(str, args), "-o", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(H2GNetError, match="expected a patch-classifier"):
        export_fast(tiny_models["refine"], None, tmp_path / "bad")
    with pytest.raises(H2GNetError, match="'='"):
        export_fast(tiny_models["patch"], None, tmp_path / "a=b")


# -- with pyFAST: a run against h2gnet ----------------------------------------------------------------
@pytest.mark.skipif(not fast_available(), reason="pyFAST is not installed (pip install pyfast)")
def test_fast_run_agrees_with_h2gnet(exported: Path, tiny_models: dict[str, Path], tiny_slide, tmp_path: Path) -> None:
    from h2gnet.infer.heatmap import compute_heatmap
    from h2gnet.infer.refine_input import low_resolution, refine
    from h2gnet.infer.runtime import OnnxModel
    from h2gnet.io.raster import Raster
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.tissue import detect_tissue

    slide_path, _, _ = tiny_slide  # 2048×1536 at 0.5 µm/px, downsamples 1-4-16, no objective power
    result = run_fast_pipeline(exported, slide_path, tmp_path / "fast-out", fast_home=tmp_path / "home",
                               timeout=120)
    assert result["magnification_source"] == "um/px" and result["magnification"] == pytest.approx(20)
    assert result["lowres_level"] == 2 and result["seconds"] > 0  # 128×96: the smallest level >= 64 px
    assert result["patch_source"]["mode"] == "magnification" and result["patch_source"]["level"] == 1
    assert not result["patch_source"]["truncated_scale_bug"]  # 2048 / 4 = 512: an exact level
    assert Path(result["outputs"]["segmentation"]).with_suffix(".raw").is_file()
    assert not list((tmp_path / "fast-out").glob(".*"))  # temporary names renamed

    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide)
        heat = compute_heatmap(slide, OnnxModel(tiny_models["patch"] / "model.onnx", "patch-classifier", threads=1),
                               tissue, progress=False)
        low = low_resolution(slide, REFINE_SIZE)
        prob = refine(OnnxModel(tiny_models["refine"] / "model.onnx", "refiner", threads=1), low, heat)
        extent = slide.dimensions
    fast_heat = result["heatmap"]
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


def test_run_fast_pipeline_reports_bad_input(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(H2GNetError, match="no such slide"):
        run_fast_pipeline(exported, tmp_path / "missing.svs", tmp_path)
    other = tmp_path / "other.fpl"
    other.write_text('PipelineName "x"\n')
    with pytest.raises(H2GNetError, match="not a pipeline exported"):
        run_fast_pipeline(other, exported, tmp_path)


def test_module_imports_without_pyfast() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['fast'] = None; import h2gnet.fast.pipeline as f; "
            "assert 'fast' not in [m for m in sys.modules if sys.modules[m] is not None]")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
