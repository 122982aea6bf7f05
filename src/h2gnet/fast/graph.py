"""ONNX graph edits that make h2gnet's models take FAST's inputs (numerics unchanged).

``refine.onnx`` of an export is the refiner with its single 4-channel input split in
the graph into ``input_0_image`` (N, 3, S, S), RGB on the 0–255 scale and divided by
255 inside the graph, and ``input_1_heatmap`` (N, 1, S, S), concatenated back into the
original input. FAST gives a network's input ports to its input nodes in the
alphabetical order of their names (pyFAST 4.18), hence the prefixes; the division sits
in the graph because FAST's ``scale-factor`` would scale the heatmap too and no pipeline
object of 4.18 casts an image to float with a scale.
"""

from __future__ import annotations

from pathlib import Path

from h2gnet.errors import H2GNetError

#: Input node names of the exported refiner (FAST binds input ports in the alphabetical order of names).
FAST_IMAGE_INPUT = "input_0_image"
FAST_HEATMAP_INPUT = "input_1_heatmap"


def fast_refiner_graph(path: str | Path):
    """The refiner of ``path`` with FAST-friendly inputs (an ``onnx.ModelProto``; numerics unchanged).

    Inputs become ``input_0_image`` (N, 3, S, S) float32 RGB on the 0–255 scale, divided by 255
    in the graph, and — for 4-channel refiners — ``input_1_heatmap`` (N, 1, S, S) float32 in [0, 1];
    a ``Concat`` along the channels rebuilds the original input. The output is untouched.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise H2GNetError(None, "exporting a refiner for FAST needs the onnx package (pip install onnx, or "
                                "install h2gnet with the [train] extra)") from None
    model = onnx.load(str(path))
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise H2GNetError(path, f"has {len(inputs)} inputs; an h2gnet refiner has one")
    original = inputs[0]
    dims = original.type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    if len(shape) != 4 or shape[1] not in (3, 4):
        raise H2GNetError(path, f"has input shape {shape}; expected (N, 3 or 4, S, S)")
    batch, channels, height, width = shape
    names = {n for node in graph.node for n in (*node.input, *node.output)} | initialisers
    for taken in (FAST_IMAGE_INPUT, FAST_HEATMAP_INPUT):
        if taken in names:
            raise H2GNetError(path, f"already has a tensor named {taken!r}: is it exported for FAST already?")
    scaled = "h2gnet_fast_image_01" if channels == 4 else original.name
    graph.initializer.append(helper.make_tensor("h2gnet_fast_255", TensorProto.FLOAT, [], [255.0]))
    nodes = [helper.make_node("Div", [FAST_IMAGE_INPUT, "h2gnet_fast_255"], [scaled], name="h2gnet_fast_div255")]
    new_inputs = [helper.make_tensor_value_info(FAST_IMAGE_INPUT, TensorProto.FLOAT, [batch, 3, height, width])]
    if channels == 4:
        nodes.append(helper.make_node("Concat", [scaled, FAST_HEATMAP_INPUT], [original.name], axis=1,
                                      name="h2gnet_fast_concat"))
        new_inputs.append(helper.make_tensor_value_info(FAST_HEATMAP_INPUT, TensorProto.FLOAT,
                                                        [batch, 1, height, width]))
    graph.input.remove(original)
    for i, value in enumerate(new_inputs):
        graph.input.insert(i, value)
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    entry = model.metadata_props.add()
    entry.key = "fast_inputs"
    entry.value = (f"{FAST_IMAGE_INPUT}: RGB 0-255 (divided by 255 in the graph)"
                   + (f"; {FAST_HEATMAP_INPUT}: tumour probability 0-1" if channels == 4 else ""))
    onnx.checker.check_model(model)
    return model
