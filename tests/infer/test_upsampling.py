"""Slides coarser than the patch model: refused before any work (exit 2, status row failed) unless
--allow-upsampling, which warns and records the factor in the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import phantom_image, write_pyramid_tiff
from h2gnet.cli import main
from h2gnet.infer.model_card import load_preset

pytest.importorskip("onnx")  # the stand-in models are built with onnx
from standins import colour_classifier, heatmap_follower_refiner  # noqa: E402

PRESET = "h2gnet-2022"


@pytest.fixture(scope="module")
def preset_models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("preset-models")
    files = load_preset(PRESET).files
    colour_classifier(models / files["patch-classifier"], 256)
    heatmap_follower_refiner(models / files["refiner"], 1024)
    return models


def _slide(path: Path, mpp: float) -> Path:
    img, _ = phantom_image(1024, 768, seed=2)
    return write_pyramid_tiff(path, img, mpp, downsamples=(1, 4))


def _status(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "status.csv", encoding="utf-8") as fh:
        return {Path(r["slide"]).name: r for r in csv.DictReader(fh)}


def test_a_slide_four_times_coarser_is_refused_before_any_work(tmp_path: Path, preset_models: Path,
                                                                capsys) -> None:
    slide = _slide(tmp_path / "coarse.tiff", 4.0)
    out = tmp_path / "out"
    rc = main(["-q", "segment", str(slide), "--preset", PRESET, "--models-dir", str(preset_models), "-o", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert "coarse.tiff" in line and "4 µm/px" in line and "1 µm/px" in line and "--allow-upsampling" in line
    row = _status(out)["coarse.tiff"]
    assert row["status"] == "failed" and "4 µm/px" in row["error"]
    assert not (out / "coarse.json").exists() and not (out / "coarse.mask.tiff").exists()


def test_allow_upsampling_goes_on_with_a_warning_and_records_the_factor(tmp_path: Path, preset_models: Path) -> None:
    slide = _slide(tmp_path / "coarse.tiff", 4.0)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"4× upsampling.*--allow-upsampling"):
        rc = main(["-q", "segment", str(slide), "--preset", PRESET, "--models-dir", str(preset_models),
                   "-o", str(out), "--allow-upsampling"])
    assert rc == 0
    up = json.loads((out / "coarse.json").read_text())["upsampling"]
    assert up["factor"] == pytest.approx(4.0) and up["allowed"] is True
    assert up["slide_mpp"] == pytest.approx(4.0) and up["model_mpp"] == pytest.approx(1.0)


def test_a_slide_within_the_factor_runs_and_says_so(tmp_path: Path, preset_models: Path) -> None:
    slide = _slide(tmp_path / "near.tiff", 1.5)
    out = tmp_path / "out"
    assert main(["-q", "segment", str(slide), "--preset", PRESET, "--models-dir", str(preset_models),
                 "-o", str(out)]) == 0
    up = json.loads((out / "near.json").read_text())["upsampling"]
    assert up["factor"] == pytest.approx(1.5) and up["allowed"] is False
    # a larger factor is a setting: 1.2 refuses the same slide
    out2 = tmp_path / "out2"
    assert main(["-q", "segment", str(slide), "--preset", PRESET, "--models-dir", str(preset_models),
                 "-o", str(out2), "--max-upsampling", "1.2"]) == 2


def test_a_finer_slide_records_no_upsampling(tmp_path: Path, preset_models: Path) -> None:
    slide = _slide(tmp_path / "fine.tiff", 0.9)
    out = tmp_path / "out"
    assert main(["-q", "segment", str(slide), "--preset", PRESET, "--models-dir", str(preset_models),
                 "-o", str(out)]) == 0
    assert json.loads((out / "fine.json").read_text())["upsampling"] is None
