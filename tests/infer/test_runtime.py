from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from h2gnet.errors import H2GNetError
from h2gnet.infer.runtime import OnnxModel, choose_providers, openvino_available

pytest.importorskip("torch")


def test_model_kind_and_shape_checks(patch_run: Path, tmp_path: Path) -> None:
    with pytest.raises(H2GNetError, match="expected a refiner"):
        OnnxModel(patch_run / "model.onnx", "refiner")
    with pytest.raises(H2GNetError, match="no such model"):
        OnnxModel(tmp_path / "absent.onnx", "patch-classifier")
    # a valid ONNX model that h2gnet did not export
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "plain.onnx")
    with pytest.raises(H2GNetError, match="without h2gnet metadata"):
        OnnxModel(tmp_path / "plain.onnx", "patch-classifier")


def test_device_choice() -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(H2GNetError, match="unknown device"):
        choose_providers("tpu")


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed (pip install openvino)")
def test_openvino_engine_agrees_with_onnxruntime(patch_run: Path) -> None:
    x = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    ort_model = OnnxModel(patch_run / "model.onnx", "patch-classifier")
    ov_model = OnnxModel(patch_run / "model.onnx", "patch-classifier", device="openvino", threads=1)
    assert ov_model.engine.startswith("openvino")
    assert np.abs(ort_model(x) - ov_model(x)).max() < 1e-4
    # a smaller batch (an adaptive round's last) runs padded to the compiled size: same outputs, no new compile
    small = ov_model(x[:2])
    assert small.shape == (2, 2)
    assert np.abs(small - ort_model(x[:2])).max() < 1e-4
    assert sorted(ov_model._openvino.compiled) == [5]
    wide = np.concatenate([x] * 8)  # 40 rows: more than any compiled size, so compiled for
    assert np.abs(ov_model(wide) - ort_model(wide)).max() < 1e-4
    assert sorted(ov_model._openvino.compiled) == [5, 40]
