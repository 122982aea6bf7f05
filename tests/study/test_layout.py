"""The study folder's places and the designs' data."""

from __future__ import annotations

from pathlib import Path

from h2gnet.study.designs import DESIGNS, PAPER_TABLE1
from h2gnet.study.layout import StudyLayout


def test_study_layout_names_the_documented_places() -> None:
    s = StudyLayout(Path("study"))
    assert (s.cohort, s.manifest, s.index) == (Path("study/cohort"), Path("study/cohort/manifest.csv"),
                                               Path("study/index"))
    assert (s.run("mob"), s.heatmaps("mob"), s.predictions("otsu")) == (
        Path("study/runs/mob"), Path("study/heatmaps/mob"), Path("study/predictions/otsu"))
    assert (s.results, s.table1, s.report) == (Path("study/results"), Path("study/results/table1.md"),
                                               Path("study/results/report.html"))


def test_every_design_says_what_it_trains() -> None:
    assert list(DESIGNS) == list(PAPER_TABLE1)
    for key, d in DESIGNS.items():
        assert d.key == key and d.label.startswith("(")
        assert (d.model is not None) == (d.kind == "patchwise")
        assert (d.arch is not None) == (d.kind in ("lowres", "refined"))
