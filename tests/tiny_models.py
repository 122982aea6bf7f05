"""Tiny h2gnet ONNX models built with the ``onnx`` helpers (no PyTorch, milliseconds), for tests of
inference on bad models: NaN outputs, one output column, one refiner class, odd metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

MODEL_SIZE = 16


def tiny_patch_model(path: Path, *, columns: int = 2, nan: bool = False, raw: bool = False,
                     metadata: dict | None = None, size: int = MODEL_SIZE) -> Path:
    """A patch classifier graph: mean colour -> linear -> softmax (N, columns), with h2gnet metadata.

    ``nan``: every output is NaN; ``raw``: no softmax (outputs far outside [0, 1])."""
    from onnx import TensorProto, helper

    w = np.linspace(-3, 3, 3 * columns, dtype=np.float32).reshape(3, columns)
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["mean", "w"], ["logits"])]
    last = "logits"
    if raw:
        nodes.append(helper.make_node("Mul", ["logits", "ten"], ["scaled"]))
        last = "scaled"
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["soft"], axis=1))
        last = "soft"
    if nan:
        nodes.append(helper.make_node("Mul", [last, "nan"], ["withnan"]))
        last = "withnan"
    nodes.append(helper.make_node("Identity", [last], ["probabilities"]))
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("ten", TensorProto.FLOAT, [], [40.0]),
             helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", columns])], inits)
    meta = {"h2gnet_kind": "patch-classifier", "input_size": str(size), "mpp": "1.0",
            "classes": ",".join(["non-tumour", "tumour"][:columns] if columns <= 2 else
                                [f"c{i}" for i in range(columns)]), **(metadata or {})}
    return _save(graph, meta, path)


def tiny_refiner(path: Path, *, classes: int = 2, channels: int = 4, size: int = 32, nan: bool = False,
                 halve: bool = False) -> Path:
    """A refiner graph: 1×1 convolution -> softmax over ``classes`` channels, (N, classes, size, size).

    ``halve``: the output is half the input's size (2×2 average pooling), as a refiner of another design."""
    from onnx import TensorProto, helper

    out = size // 2 if halve else size
    w = np.linspace(-1, 1, classes * channels, dtype=np.float32).reshape(classes, channels, 1, 1)
    nodes = [helper.make_node("Conv", ["input", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["soft"], axis=1)]
    last = "soft"
    if nan:
        nodes.append(helper.make_node("Mul", [last, "nan"], ["withnan"]))
        last = "withnan"
    if halve:
        nodes.append(helper.make_node("AveragePool", [last], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]))
        last = "pooled"
    nodes.append(helper.make_node("Identity", [last], ["probabilities"]))
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])]
    graph = helper.make_graph(
        nodes, "tiny-refiner", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes, out, out])], inits)
    return _save(graph, {"h2gnet_kind": "refiner", "input_size": str(size), "in_channels": str(channels)}, path)


def _save(graph, meta: dict, path: Path) -> Path:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))
    return path


def colour_patch_model(path: Path, size: int = MODEL_SIZE) -> Path:
    """An h2gnet patch classifier (NCHW [0, 1], softmax) that calls dark purple tumour and pink not: tumour logit
    6.6 − 6 × (mean R + mean G) (the phantoms' purple 120/60/160: p ≈ 0.91; pink 230/150/190: p ≈ 0.09)."""
    from onnx import TensorProto, helper

    w = np.array([[0.0, -6.0], [0.0, -6.0], [0.0, 0.0]], np.float32)
    b = np.array([0.0, 6.6], np.float32)
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["mean", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.ravel())]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], inits)
    meta = {"h2gnet_kind": "patch-classifier", "input_size": str(size), "mpp": "1.0", "classes": "non-tumour,tumour"}
    return _save(graph, meta, path)
