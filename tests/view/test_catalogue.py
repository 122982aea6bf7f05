"""Reading a results folder: status rows, summaries, slide files, annotations, evaluation; bad folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from view_helpers import results_copy_fixture, view_results_fixture  # noqa: F401 (fixtures by name)

from h2gnet.errors import H2GNetError
from h2gnet.view import load_catalogue


def test_rows_from_status_and_summaries(view_results) -> None:
    results, manifest = view_results
    cat = load_catalogue(results)
    assert list(cat.records) == ["wide", "tall", "broken"]
    wide, broken = cat.records["wide"], cat.records["broken"]
    assert wide.status == "done" and wide.slide == manifest.parent / "wide.tiff" and wide.slide_mpp == 0.5
    assert wide.number("tumour_area_mm2") > 0 and wide.number("tissue_area_mm2") > wide.number("tumour_area_mm2")
    assert wide.design() == "patch-wise (heatmap > 0.5)" and wide.model_cards() == "patch: h2gnet"
    assert wide.dimensions() == (3072, 2048) and wide.seconds is not None
    assert broken.status == "failed" and "broken.tiff" in broken.error and broken.summary is None
    # the evaluation beside the results is found; its Dice is the one `evaluate` wrote
    assert cat.evaluation == results / "evaluation" and cat.metric_columns == ["dice", "recall", "precision"]
    assert 0.9 < wide.metrics["dice"] <= 1 and broken.metrics == {}
    assert wide.annotation is None  # annotations come from a manifest only


def test_slides_from_a_manifest_or_a_folder(results_copy) -> None:
    results, manifest = results_copy  # the recorded paths lead to the session's slides, not to these copies
    cat = load_catalogue(results, manifest)
    wide = cat.records["wide"]
    assert wide.slide == manifest.parent / "wide.tiff" and wide.annotation == manifest.parent / "wide.geojson"
    assert load_catalogue(results, manifest.parent).records["tall"].slide == manifest.parent / "tall.tiff"


def test_moved_slides_are_reported_not_fatal(results_copy) -> None:
    results, manifest = results_copy
    for name in ("wide", "tall"):
        summary = results / f"{name}.json"
        doc = json.loads(summary.read_text())
        summary.write_text(json.dumps({**doc, "slide": f"/nowhere/{name}.tiff"}))
    (results / "status.csv").write_text("slide,status,seconds,error\nrel/wide.tiff,done,1.00,\n")
    cat = load_catalogue(results)
    assert cat.records["wide"].slide is None and "--slides" in cat.records["wide"].problems[-1]
    (manifest.parent / "tall.tiff").unlink()
    cat = load_catalogue(results, manifest)
    assert cat.records["wide"].slide == manifest.parent / "wide.tiff"
    assert cat.records["tall"].slide is None and "no such slide file" in cat.records["tall"].problems[-1]


def test_relative_recorded_paths(results_copy, monkeypatch) -> None:
    results, manifest = results_copy
    (results / "status.csv").write_text("slide,status,seconds,error\nslides/wide.tiff,done,1.00,\n")
    (results / "wide.json").write_text(json.dumps({**json.loads((results / "wide.json").read_text()),
                                                   "slide": "slides/wide.tiff"}))
    monkeypatch.chdir(results.parent)
    assert load_catalogue(results).records["wide"].slide == Path("slides/wide.tiff").absolute()
    monkeypatch.chdir(manifest.parent)  # elsewhere: relative to the results folder's parent
    assert load_catalogue(results).records["wide"].slide == results.parent / "slides" / "wide.tiff"


def test_corrupt_status_is_a_note_and_is_left_alone(results_copy) -> None:
    results, _ = results_copy
    (results / "status.csv").write_text("not,a,status\ntable\n")
    cat = load_catalogue(results)  # read-only: the table stays where it is
    assert (results / "status.csv").read_text() == "not,a,status\ntable\n"
    assert not (results / "status.csv.corrupt").exists()
    assert "status.csv: unreadable" in cat.notes[0] and set(cat.records) == {"wide", "tall"}


def test_unreadable_summary_is_a_problem_of_its_slide(results_copy) -> None:
    results, _ = results_copy
    (results / "wide.json").write_text("{not json")
    (results / "stray.json").write_text("[1, 2]")  # a JSON no status row names is not a slide
    cat = load_catalogue(results)
    assert "unreadable slide summary" in cat.records["wide"].problems[0] and "stray" not in cat.records


@pytest.mark.parametrize("make, problem", [
    (lambda p: None, "no such results folder"),
    (lambda p: p.write_text("x"), "is not a folder"),
    (lambda p: p.mkdir(), "not an output folder of `h2gnet segment`"),
])
def test_not_a_results_folder(tmp_path: Path, make, problem: str) -> None:
    make(tmp_path / "res")
    with pytest.raises(H2GNetError, match=problem) as info:
        load_catalogue(tmp_path / "res")
    assert info.value.path == str(tmp_path / "res")


def test_bad_slides_and_evaluation_options(view_results, tmp_path: Path) -> None:
    results, _ = view_results
    with pytest.raises(H2GNetError, match="no such slide folder or manifest"):
        load_catalogue(results, tmp_path / "nothere")
    with pytest.raises(H2GNetError, match="holds no slides.csv"):
        load_catalogue(results, evaluation=tmp_path)
    (tmp_path / "slides.csv").write_text("a,b\n1,2\n")
    with pytest.raises(H2GNetError, match="not an evaluation table"):
        load_catalogue(results, evaluation=tmp_path)


def test_outputs_outside_the_results_folder_are_refused(results_copy, tmp_path: Path) -> None:
    results, _ = results_copy
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (results / "wide.overlay.png").unlink()
    os.symlink(secret, results / "wide.overlay.png")
    cat = load_catalogue(results)
    with pytest.raises(H2GNetError, match="outside the results folder"):
        cat.output_file("wide", "overlay")
    assert cat.output_file("tall", "overlay") == results / "tall.overlay.png"
    with pytest.raises(H2GNetError, match="no mask output"):
        cat.output_file("broken", "mask")
