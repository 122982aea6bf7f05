"""Stand-ins for the published H2G-Net models, built from h2gnet's own exports by ONNX graph edits.

The published models are Keras graphs run by FAST: NHWC float32 input (FAST scales uint8 RGB by
1/255), Keras-like tensor names (``input_1``, ``dense_1``), a softmax output; the refiner takes two
inputs, image then heatmap (``input_1``, ``input_2``), and returns (N, S, S, 2). These functions wrap
an h2gnet export in exactly those conventions without touching its numerics (transposes, a Concat,
optional average pooling / resizing to change the input size) and drop its h2gnet metadata, so
h2gnet must run it as a foreign model described by a card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _strip(model) -> None:
    del model.metadata_props[:]


def _replace_input(graph, old_name: str, new_inputs: list) -> None:
    original = next(i for i in graph.input if i.name == old_name)
    graph.input.remove(original)
    for i, value in enumerate(new_inputs):
        graph.input.insert(i, value)


def keras_like_patch(src: str | Path, dst: str | Path, pool: int = 1) -> Path:
    """``src`` (h2gnet patch classifier, NCHW [0, 1]) as a Keras-like NHWC graph ``input_1`` → ``dense_1``.

    ``pool`` > 1 makes the stand-in take ``pool``× larger patches, average-pooled to the original size
    in the graph (so a 64-px model stands in for a 256-px one).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    g = model.graph
    inp = g.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    size = dims[2] * pool
    nodes = [helper.make_node("Transpose", ["input_1"], ["sb_nchw"], perm=[0, 3, 1, 2], name="sb_transpose_in")]
    last = "sb_nchw"
    if pool > 1:
        nodes.append(helper.make_node("AveragePool", [last], ["sb_pooled"], kernel_shape=[pool, pool],
                                      strides=[pool, pool], name="sb_pool"))
        last = "sb_pooled"
    nodes.append(helper.make_node("Identity", [last], [inp.name], name="sb_identity_in"))
    _replace_input(g, inp.name, [helper.make_tensor_value_info("input_1", TensorProto.FLOAT,
                                                               ["N", size, size, 3])])
    for i, node in enumerate(nodes):
        g.node.insert(i, node)
    out = g.output[0]
    g.node.append(helper.make_node("Identity", [out.name], ["dense_1"], name="sb_identity_out"))
    g.output.remove(out)
    g.output.append(helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, ["N", 2]))
    _strip(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def keras_like_refiner(src: str | Path, dst: str | Path) -> Path:
    """``src`` (h2gnet 4-channel refiner, NCHW) with two NHWC inputs ``input_1`` (image, 3 channels) and
    ``input_2`` (heatmap, 1 channel), concatenated in the graph, and an NHWC output ``conv2d_final``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    g = model.graph
    inp = g.input[0]
    size = inp.type.tensor_type.shape.dim[2].dim_value
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["sb_img"], perm=[0, 3, 1, 2], name="sb_t_img"),
        helper.make_node("Transpose", ["input_2"], ["sb_heat"], perm=[0, 3, 1, 2], name="sb_t_heat"),
        helper.make_node("Concat", ["sb_img", "sb_heat"], [inp.name], axis=1, name="sb_concat"),
    ]
    _replace_input(g, inp.name, [
        helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", size, size, 3]),
        helper.make_tensor_value_info("input_2", TensorProto.FLOAT, ["N", size, size, 1])])
    for i, node in enumerate(nodes):
        g.node.insert(i, node)
    out = g.output[0]
    g.node.append(helper.make_node("Transpose", [out.name], ["conv2d_final"], perm=[0, 2, 3, 1], name="sb_t_out"))
    g.output.remove(out)
    g.output.append(helper.make_tensor_value_info("conv2d_final", TensorProto.FLOAT, ["N", size, size, 2]))
    _strip(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def heatmap_follower_refiner(dst: str | Path, size: int = 1024, centre: float = 0.5, gain: float = 12.0, *,  # noqa: PLR0913
                             names: tuple[str, str] = ("input_1", "input_2"), heatmap_first: bool = False) -> Path:
    """A published-style refiner (two NHWC inputs, image then heatmap; (N, S, S, 2) softmax) whose tumour
    logit is ``gain`` × (3×3 mean of the heatmap − ``centre``) − 0.5 × (mean RGB − 0.5): it follows the
    heatmap and, weakly, the image's darkness.

    Used against pyFAST: its mask is meaningful (unlike a random network's), and it depends on the
    input order and on both inputs' resizing and normalisation. ``names``: the (image, heatmap) inputs'
    names; ``heatmap_first``: declare the heatmap input first in the graph.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w_heat = np.full((1, 1, 3, 3), gain / 9.0, np.float32)  # gain × 3×3 mean of the heatmap
    w_img = np.full((1, 3, 1, 1), -0.5 / 3.0, np.float32)   # − 0.5 × mean RGB (dark tissue: more tumour)
    bias = np.array([0.25], np.float32)
    # the centre is subtracted before the gain: no large terms cancel (FAST's OpenVINO may compute in bfloat16)
    inits = [numpy_helper.from_array(w_heat, "hf_w_heat"), numpy_helper.from_array(w_img, "hf_w_img"),
             numpy_helper.from_array(bias, "hf_bias"), numpy_helper.from_array(np.zeros((1,), np.float32), "hf_zero"),
             numpy_helper.from_array(np.array([centre], np.float32), "hf_centre")]
    nodes = [
        helper.make_node("Transpose", [names[0]], ["img"], perm=[0, 3, 1, 2]),
        helper.make_node("Transpose", [names[1]], ["heat_raw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["heat_raw", "hf_centre"], ["heat"]),
        helper.make_node("Conv", ["heat", "hf_w_heat", "hf_bias"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["img", "hf_w_img"], ["i"]),
        helper.make_node("Add", ["h", "i"], ["logit"]),
        helper.make_node("Mul", ["logit", "hf_zero"], ["zero"]),
        helper.make_node("Concat", ["zero", "logit"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Transpose", ["probs"], ["conv2d_final"], perm=[0, 2, 3, 1]),
    ]
    inputs = [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [1, size, size, 3]),
              helper.make_tensor_value_info(names[1], TensorProto.FLOAT, [1, size, size, 1])]
    graph = helper.make_graph(nodes, "heatmap_follower", inputs[::-1] if heatmap_first else inputs,
        [helper.make_tensor_value_info("conv2d_final", TensorProto.FLOAT, [1, size, size, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def colour_classifier(dst: str | Path, size: int = 256) -> Path:
    """A published-style patch classifier (NHWC ``input_1`` of ``size`` px, x/255, softmax ``dense_1``) that
    calls purple (haematoxylin-dark, the phantoms' tumour) tumour and pink not: tumour logit
    6.6 − 6 × (mean R + mean G) on the [0, 1] scale (pink 230/150/190: p ≈ 0.09; purple 120/60/160: p ≈ 0.91).

    Against pyFAST it stands in for the published classifier where h2gnet's briefly trained test classifier
    cannot: that one returns nearly the same probability for every patch (no mask edge to compare), and an
    untrained network is too sensitive to FAST's default engine computing in bfloat16 on some CPUs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[0.0, -6.0], [0.0, -6.0], [0.0, 0.0]], np.float32)
    b = np.array([0.0, 6.6], np.float32)
    graph = helper.make_graph([
        helper.make_node("ReduceMean", ["input_1"], ["mean_rgb"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["mean_rgb", "cc_w", "cc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["dense_1"], axis=1)], "colour_classifier",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "cc_w"), numpy_helper.from_array(b, "cc_b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)
