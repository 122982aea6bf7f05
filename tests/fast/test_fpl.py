"""The FAST pipeline text (checked against FAST's grammar), and `h2gnet export-fast`."""

from __future__ import annotations

from pathlib import Path

import pytest
from fast_helpers import fast_model, parse_fpl, read_header_text, tiny_models  # noqa: F401 (fixtures)

from h2gnet.cli import main
from h2gnet.errors import H2GNetError
from h2gnet.fast.fpl import export_fast, fast_magnification, fpl_text, split_models


def test_fpl_text_is_well_formed_with_the_cascade_parameters() -> None:
    patch = fast_model("patch-classifier", 256, 3, 1.0)
    refine = fast_model("refiner", 1024, 4, None)
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
    alone = parse_fpl(fpl_text(fast_model("patch-classifier", 128, 3, 2.0), None, inference_engine="ONNXRuntime"))
    objs = alone["objects"]
    assert "refinement" not in objs and objs["threshold"]["attributes"]["lower-threshold"] == "0.5"
    assert objs["exporter"]["inputs"] == {0: ("threshold", 0)}
    assert objs["patches"]["attributes"]["patch-magnification"] == "5"
    assert objs["classifier"]["attributes"]["inference-engine"] == "ONNXRuntime"

    # a 3-channel refiner (UNet-LR) gets the image alone
    lr = parse_fpl(fpl_text(patch, fast_model("refiner", 1024, 3, None)))
    assert lr["objects"]["refinement"]["inputs"] == {0: ("lowres", 0)}
    assert fast_magnification(0.25) == 40 and fast_magnification(0.5) == 20


def test_cli_export_fast_takes_run_folders_in_any_order(tiny_models: dict[str, Path], tmp_path: Path,  # noqa: F811 (pytest fixtures)
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
