"""The refiner's graph edit for FAST: two inputs (image 0-255, heatmap), numerics bit-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fast_helpers import ENGINE, PATCH_SIZE, REFINE_SIZE, exported, parse_fpl, tiny_models  # noqa: F401 (fixtures)

from h2gnet.fast.fpl import read_header
from h2gnet.fast.graph import FAST_HEATMAP_INPUT, FAST_IMAGE_INPUT


def test_export_copies_models_and_keeps_the_refiner_numerics(exported: Path, tiny_models: dict[str, Path]) -> None:  # noqa: F811 (pytest fixtures)
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
