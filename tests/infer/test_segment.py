from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest

from conftest import real_slide, write_pyramid_tiff
from h2gnet.cli import main
from h2gnet.infer.segment import SegmentConfig, segment_many
from h2gnet.io.annotations import load_geojson, rasterize
from h2gnet.outputs.mask_tiff import load_mask_tiff

pytest.importorskip("torch")  # the models are trained here; segmenting itself needs only ONNX Runtime


@pytest.fixture(scope="module")
def segmented(mini_cohort: Path, patch_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg")
    assert main(["-q", "segment", str(mini_cohort / "s3.tiff"), str(mini_cohort / "s2.tiff"), "--patch-model",
                 str(patch_run / "model.onnx"), "--no-refine", "-o", str(out)]) == 0
    return out


def test_outputs_per_slide(segmented: Path, mini_cohort: Path) -> None:
    for suffix in (".mask.tiff", ".geojson", ".heatmap.tiff", ".overlay.png", ".json"):
        assert (segmented / f"s3{suffix}").exists(), suffix
    summary = json.loads((segmented / "s3.json").read_text())
    assert summary["models"]["patch"]["sha256"] and summary["h2gnet_version"]
    assert {"tissue", "heatmap", "refinement", "write", "total"} <= set(summary["seconds"])
    assert summary["tissue_area_mm2"] > 0 and summary["patches"] > 0
    # the mask opens in OpenSlide, with its µm/px
    with openslide.OpenSlide(str(segmented / "s3.mask.tiff")) as mask:
        assert float(mask.properties["openslide.mpp-x"]) == pytest.approx(summary["mask_mpp"])
    assert not list(segmented.glob("*.part*")) and not list(segmented.glob(".*"))


def test_geojson_round_trips_to_the_mask(segmented: Path) -> None:
    summary = json.loads((segmented / "s3.json").read_text())
    mask = load_mask_tiff(segmented / "s3.mask.tiff", summary["slide_mpp"])
    polys = load_geojson(segmented / "s3.geojson", classes=["Tumor"])
    back = rasterize(polys, tuple(summary["dimensions_l0"]), summary["slide_mpp"], mask.mpp)
    a, b = mask.array, back.array[: mask.shape[0], : mask.shape[1]]
    denom = a.sum() + b.sum()
    assert denom == 0 or 2 * (a & b).sum() / denom >= 0.99


def test_rerun_skips_and_bad_slide_does_not_stop_the_others(mini_cohort: Path, patch_run: Path,
                                                            tmp_path: Path) -> None:
    bad = tmp_path / "broken.tiff"
    bad.write_bytes(b"II*\x00garbage")
    blank = write_pyramid_tiff(tmp_path / "blank.tiff", np.full((1024, 1024, 3), 240, np.uint8), 0.5)
    cfg = SegmentConfig(patch_model=patch_run / "model.onnx", progress=False)
    status = segment_many([str(bad), str(mini_cohort / "s3.tiff"), str(blank)], tmp_path / "out", cfg)
    assert status[str(bad)]["status"] == "failed" and "broken.tiff" in status[str(bad)]["error"]
    assert status[str(blank)]["status"] == "failed" and "no tissue" in status[str(blank)]["error"]
    assert status[str(mini_cohort / "s3.tiff")]["status"] == "done"
    assert not (tmp_path / "out" / "broken.json").exists() and not (tmp_path / "out" / "blank.mask.tiff").exists()
    again = segment_many([str(mini_cohort / "s3.tiff")], tmp_path / "out", cfg)
    assert again[str(mini_cohort / "s3.tiff")]["status"] == "skipped"
    assert "skipped" in (tmp_path / "out" / "status.csv").read_text()


def test_wrong_models_and_unwritable_output(mini_cohort: Path, patch_run: Path, tmp_path: Path, capsys) -> None:
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello")
    slide = str(mini_cohort / "s3.tiff")
    assert main(["-q", "segment", slide, "--patch-model", str(not_onnx), "--no-refine", "-o", str(tmp_path / "o")]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    # a patch classifier given as the refinement network
    assert main(["-q", "segment", slide, "--patch-model", str(patch_run / "model.onnx"), "--refine-model",
                 str(patch_run / "model.onnx"), "-o", str(tmp_path / "o")]) == 2
    assert "expected a refiner" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["-q", "segment", slide, "--patch-model", str(patch_run / "model.onnx"), "--no-refine",
                 "-o", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err
    assert main(["-q", "segment", slide, "--patch-model", str(patch_run / "model.onnx"), "-o", str(tmp_path)]) == 2
    assert "--no-refine" in capsys.readouterr().err


def test_python_api_single_slide(mini_cohort: Path, patch_run: Path, tmp_path: Path) -> None:
    from h2gnet.infer.segment import Models, segment_slide

    cfg = SegmentConfig(patch_model=patch_run / "model.onnx", progress=False)
    summary = segment_slide(mini_cohort / "s1.tiff", tmp_path, Models.load(cfg), cfg)
    assert summary["name"] == "s1" and (tmp_path / "s1.mask.tiff").exists()


@pytest.mark.parametrize("name,mpp", [("CMU-1-Small-Region.svs", None),
                                      ("CMU-1-Small-Region-dicom/level-0-frames-0-30.dcm", None),
                                      ("tcga-cr-7395-01a-01-ts1.svs", 0.25)])
def test_real_slides_segment(name: str, mpp, patch_run: Path, tmp_path: Path) -> None:
    path = real_slide(name)
    args = ["-q", "segment", str(path), "--patch-model", str(patch_run / "model.onnx"), "--no-refine",
            "-o", str(tmp_path)]
    assert main(args + (["--mpp", str(mpp)] if mpp else [])) == 0
    summary = json.loads((tmp_path / f"{path.stem}.json").read_text())
    assert summary["patches"] > 0 and summary["tissue_area_mm2"] > 0.1


def test_tissue_found_while_the_models_load_is_the_tissue_of_the_slide(tiny_slide, tmp_path: Path) -> None:
    from h2gnet.infer.runtime import sha256_of
    from h2gnet.infer.segment import Models, segment_slide
    from tiny_models import tiny_patch_model

    path, _, _ = tiny_slide
    model = tiny_patch_model(tmp_path / "patch.onnx")
    cfg = SegmentConfig(patch_model=model, progress=False)
    status = segment_many([str(path)], tmp_path / "many", cfg)  # the slide's tissue is found during loading
    assert status[str(path)]["status"] == "done"
    direct = segment_slide(path, tmp_path / "one", Models.load(cfg), cfg)  # found by segment_slide itself
    many = json.loads((tmp_path / "many" / "tiny.json").read_text())
    for key in ("tissue_area_mm2", "tumour_area_mm2", "patches", "tissue_patches"):
        assert many[key] == direct[key]
    assert many["models"]["patch"]["sha256"] == direct["models"]["patch"]["sha256"] == sha256_of(model)
    model.write_bytes(model.read_bytes() + b"\0")  # a changed file is hashed again
    assert sha256_of(model) != direct["models"]["patch"]["sha256"]
