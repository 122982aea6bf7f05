"""A results folder made by `h2gnet segment` (and `h2gnet evaluate`) on small phantom slides, for the viewer's tests.

Three slides: ``wide`` and ``tall`` (phantoms whose purple disc is the tumour, with GeoJSON annotations) segmented
with a colour classifier, and ``broken`` (not a slide), which fails. Built once per session (a few seconds).
Test modules import the fixtures (``view_results_fixture``, ``results_copy_fixture``) to use them by name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import phantom_image, tumour_geojson, write_pyramid_tiff


def make_results(root: Path) -> tuple[Path, Path]:
    """Slides, annotations and a manifest in ``root/slides``; segment and evaluate into ``root/results``.
    Returns (results folder, manifest)."""
    from h2gnet.cli import main
    from tiny_models import colour_patch_model

    slides = root / "slides"
    slides.mkdir(parents=True)
    rows = ["slide,annotation,grade,split"]
    for i, (name, (w, h)) in enumerate({"wide": (3072, 2048), "tall": (1536, 2048)}.items()):
        img, _ = phantom_image(w, h, seed=i)
        write_pyramid_tiff(slides / f"{name}.tiff", img, 0.5, (1, 4, 16))
        tumour_geojson(slides / f"{name}.geojson", (w / 2, h / 2), min(w, h) * 0.15)
        rows.append(f"{name}.tiff,{name}.geojson,{i + 1},test")
    (slides / "broken.tiff").write_bytes(b"II*\x00 this is not a slide")
    rows.append("broken.tiff,,,test")
    manifest = slides / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    model = colour_patch_model(root / "colour.onnx")
    results = root / "results"
    assert main(["-q", "segment", str(manifest), "--patch-model", str(model), "--no-refine", "-o", str(results)]) == 1
    assert main(["-q", "evaluate", str(manifest), "--predictions", str(results), "-o", str(results / "evaluation"),
                 "--split", "all"]) == 0
    return results, manifest


@pytest.fixture(scope="session", name="view_results")
def view_results_fixture(tmp_path_factory) -> tuple[Path, Path]:
    """(results folder, manifest) made once per session; tests that change files use ``results_copy``."""
    pytest.importorskip("onnx", reason="the test model is built with onnx (pip install -e '.[train]')")
    return make_results(tmp_path_factory.mktemp("view"))


@pytest.fixture(name="results_copy")
def results_copy_fixture(view_results, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the session's results folder and slides, which a test may damage."""
    results, manifest = view_results
    shutil.copytree(results.parent / "slides", tmp_path / "slides")
    shutil.copytree(results, tmp_path / "results")
    return tmp_path / "results", tmp_path / "slides" / "manifest.csv"
