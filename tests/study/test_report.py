"""The study's tables say which cohort they are about: the phantom one, or the one a manifest names."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import phantom_image, tumour_geojson, write_pyramid_tiff  # noqa: E402
from h2gnet.cli import main  # noqa: E402


@pytest.mark.slow  # runs a (one-design) study
def test_study_of_a_manifest_cohort_does_not_call_it_phantom(tmp_path: Path, capsys) -> None:
    rows = ["slide,annotation,grade,split"]
    for i, name in enumerate(("s1", "s2")):
        write_pyramid_tiff(tmp_path / f"{name}.tiff", phantom_image(1024, 768, seed=i)[0], 0.5, (1, 4))
        tumour_geojson(tmp_path / f"{name}.geojson", (512, 384), 110)
        rows.append(f"{name}.tiff,{name}.geojson,{i + 1},test")
    (tmp_path / "lab.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "study.toml"
    config.write_text(f'designs = ["otsu"]\n\n[cohort]\nmanifest = "{tmp_path / "lab.csv"}"\n')
    assert main(["-q", "ablation", "-o", str(tmp_path / "study"), "--config", str(config)]) == 0
    table1 = (tmp_path / "study" / "results" / "table1.md").read_text()
    assert "Test slides of lab.csv: n = 2." in table1 and "hantom" not in table1
    assert "hantom" not in (tmp_path / "study" / "results" / "report.html").read_text()
    assert "Test slides of lab.csv: n = 2." in capsys.readouterr().out
