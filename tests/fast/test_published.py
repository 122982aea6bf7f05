"""The published pipeline text is FastPathology's own, and only its model paths change when h2gnet runs it."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from h2gnet.errors import H2GNetError
from h2gnet.fast.published import (
    PUBLISHED_MODEL_PATHS,
    published_header,
    published_pipeline,
    published_text,
    without_renderers,
)
from h2gnet.infer.model_card import load_preset

PRESET = "h2gnet-2022"
#: SHA-256 of data/pipelines/breast_tumour_segmentation.fpl at AICAN-Research/FAST-Pathology commit 1a142c1a
FASTPATHOLOGY_SHA256 = "533efb455ab7a5873f6a22cd0291f14147457d0722ca95e84332d360e8ea67de"


def test_the_shipped_text_is_fastpathologys_published_file() -> None:
    assert hashlib.sha256(published_text().encode("utf-8")).hexdigest() == FASTPATHOLOGY_SHA256
    text = published_text()
    # the conventions the preset's card states are the ones this text sets (or leaves to FAST's defaults)
    patch = load_preset(PRESET).cards["patch-classifier"]
    assert "Attribute patch-size 256 256" in text and patch.input_size == 256
    assert "Attribute patch-magnification 10" in text and patch.mpp == 1.0
    assert "mask-threshold" not in text and patch.tissue is not None and patch.tissue.min_fraction == 0.5  # default
    assert "Attribute scale-factor 0.003921568627451" in text and patch.scale == pytest.approx(0.003921568627451)
    assert "Attribute level -1" in text and "IntensityNormalization" in text
    assert text.index("Input 0 scale 0") < text.index("Input 1 tensorToImage 0")  # image on port 0
    assert "Attribute inference-engine OpenVINO" in text


def test_published_pipeline_changes_only_the_model_paths_and_drops_the_renderers(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    fpl = published_pipeline(a, b, tmp_path / "p" / "breast_tumour_segmentation.fpl")
    headless = without_renderers(published_text())
    assert not [ln for ln in headless.splitlines() if ln.startswith("Renderer")]
    # only the two renderer blocks are gone: every processing line of FAST's text is kept
    dropped = Counter(published_text().splitlines()) - Counter(headless.splitlines())
    assert dropped == Counter(["Renderer imgRenderer ImagePyramidRenderer", "Input 0 WSI",
                               "Renderer renderer2 SegmentationRenderer", "Attribute border-opacity 1.0",
                               "Input 0 refinement 0", "", ""])  # and the blank lines between them
    original, written = headless.splitlines(), fpl.read_text().splitlines()
    changed = [(o, w) for o, w in zip(original, written, strict=True) if o != w]
    assert [w for _, w in changed] == [f'Attribute model "{a.resolve()}"', f'Attribute model "{b.resolve()}"']
    assert all(PUBLISHED_MODEL_PATHS[k] in o for (o, _), k in zip(changed, ("patch-classifier", "refiner"),
                                                                   strict=True))
    with pytest.raises(H2GNetError, match="no such model file"):
        published_pipeline(tmp_path / "missing.onnx", b, tmp_path / "q.fpl")
    header = published_header()
    assert header["magnification"] == 10 and header["objects"]["segmentation"] == "refinement"
