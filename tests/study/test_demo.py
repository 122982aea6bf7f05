"""A miniature demo / ablation: phantom cohort → training → segmentation → evaluation → report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from h2gnet.cli import main  # noqa: E402

pytestmark = pytest.mark.slow  # every test here trains or runs a study

MINI = """
designs = ["otsu", "unet-lr", "mob-pw", "mob-pw-unet"]

[cohort]
slides = 8
seed = 5
width = 2400
height = 2000
mpp = 0.5

[patch]
input_size = 64
epochs = 1
steps = 2
val_steps = 1
batch_size = 8
workers = 0
eval_per_class = 4

[refine]
input_size = 256
epochs = 2
filters = [4, 8, 8, 16, 16, 16, 16, 16, 16]
"""


def test_miniature_study_runs_and_resumes(tmp_path: Path, capsys) -> None:
    config = tmp_path / "mini.toml"
    config.write_text(MINI)
    out = tmp_path / "study"
    assert main(["-q", "demo", str(out), "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "(VI) Mob-PW-UNet" in printed and "report.html" in printed
    results = out / "results"
    for name in ("table1.md", "table1.csv", "table2.md", "tukey.md", "slides.csv", "report.html",
                 "dice_boxplot.png", "figure4.png", "results.json"):
        assert (results / name).exists(), name
    table1 = (results / "table1.md").read_text()
    assert "(I) Otsu" in table1 and "(II) UNet-LR" in table1 and "0.669 ± 0.179" in table1  # paper column
    report = (results / "report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and "data:image/png;base64," in report
    assert "data:image/jpeg;base64," in report and "http://" not in report and "https://" not in report
    data = json.loads((results / "results.json").read_text())
    assert set(data["designs"]) == {"otsu", "unet-lr", "mob-pw", "mob-pw-unet"}
    # every test slide has a prediction per design
    tests = [line for line in (out / "cohort" / "manifest.csv").read_text().splitlines() if line.endswith(",test")]
    assert tests and len(list((out / "predictions" / "mob-pw-unet").glob("*.mask.tiff"))) == len(tests)
    # run again: nothing is retrained
    stamp = (out / "runs" / "mob" / "model.onnx").stat().st_mtime_ns
    stamp_unet = (out / "runs" / "unet" / "model.onnx").stat().st_mtime_ns
    assert main(["-q", "demo", str(out), "--config", str(config)]) == 0
    assert (out / "runs" / "mob" / "model.onnx").stat().st_mtime_ns == stamp
    assert (out / "runs" / "unet" / "model.onnx").stat().st_mtime_ns == stamp_unet


def test_bad_config(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("designs = [\"nope\"]\n")
    assert main(["-q", "ablation", "-o", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "unknown design" in capsys.readouterr().err
    bad.write_text("designs = [\n")
    assert main(["-q", "ablation", "-o", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
