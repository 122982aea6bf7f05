"""Start a training run from a trained model (``--init``): h2gnet's own runs and exports, or foreign ONNX
models with a model card (the published ``h2gnet-2022`` models through their preset).

Two ways into PyTorch, chosen by what the model is:

* **an h2gnet run folder** (``config.json`` + ``checkpoint_best.pt`` + ``model.onnx``, or that ``model.onnx``):
  the architecture is rebuilt from ``config.json`` and the best checkpoint loaded (tensors only). Nothing is
  converted: the network keeps its BatchNorm layers and its named backbone, and exports as before;
* **any other ONNX file** (an h2gnet export without its run folder, or a foreign graph with its card): the graph
  is converted by `onnx2torch <https://github.com/ENOT-AutoDL/onnx2torch>`_, a maintained converter that
  handles whole graphs (Keras-exported NHWC graphs with their Transposes, two-input refiners, opset-9 softmax)
  rather than a fixed architecture; the final Softmax/Sigmoid is cut off so that training sees logits.
  The converted module is checked against ONNX Runtime on random inputs (≤ :data:`MATCH_TOLERANCE`) before
  any training; a graph it cannot reproduce is an error naming the file.

Either way the trainer sees h2gnet's convention (NCHW float RGB in [0, 1], plus the heatmap channel for
refiners; logits for the classes (non-tumour, tumour)) and the result is exported **in the source's own
conventions**: the same graph inputs (names, NHWC/NCHW, separate image and heatmap), scaling, output layout and
class order, the source's ONNX metadata, and for card-described models the card written beside the export
(``NAME.card.json``), so ``h2gnet segment`` runs the fine-tuned model exactly as it ran the original.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import h2gnet
from h2gnet.conventions import MODEL_FILE
from h2gnet.errors import H2GNetError
from h2gnet.infer.model_card import ModelCard, card_beside, load_preset, preset_model, preset_names
from h2gnet.infer.runtime import OnnxModel

#: Largest difference allowed between the model training starts from and ONNX Runtime on the source file.
MATCH_TOLERANCE = 1e-4
#: ONNX nodes that only move values (between the final activation and the graph output).
_LAYOUT_OPS = {"Transpose", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
#: Converted modules where a classifier's backbone ends (global pooling) or a refiner's encoder ends (upsampling).
_CLASSIFIER_BOUNDARY = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "AdaptiveAvgPool", "Flatten")
_REFINER_BOUNDARY = ("Resize", "Upsample", "ConvTranspose")


@dataclass
class InitModel:
    """A trained model to start from, as a PyTorch module in h2gnet's convention, and how to export it back.

    ``model``: NCHW [0, 1] (+ heatmap) in, logits (N, 2[, H, W]) for (non-tumour, tumour) out. ``how``: "h2gnet
    checkpoint" or "onnx2torch". ``card``: the source's conventions (bound to its graph). ``backbone``: names of
    the parameters ``--freeze-backbone-steps`` freezes (empty when the graph's backbone cannot be told).
    """

    kind: str
    source: Path
    onnx_path: Path
    how: str
    model: nn.Module
    card: ModelCard
    input_size: int
    in_channels: int
    backbone: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    card_doc: dict | None = None
    arch: str = ""
    filters: tuple[int, ...] | None = None
    sha256: str = ""

    @property
    def mpp(self) -> float | None:
        """µm/px of a patch classifier's input (None for refiners)."""
        return None if self.card.mpp is None else float(self.card.mpp)

    def check_output(self, run_dir: Path) -> None:
        """Refuse to train into the folder the start comes from (its checkpoints would be replaced)."""
        if self.onnx_path.resolve().parent == Path(run_dir).resolve():
            raise H2GNetError(run_dir, f"is where --init {self.source} comes from; write the fine-tuned run to "
                                       "another folder")

    def describe(self) -> str:
        """Where training starts, for the plan line."""
        return f"{self.source} ({self.how}{', card ' + self.card.origin if self.card_doc else ''})"

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` records of the start."""
        return {"source": str(self.source), "onnx": str(self.onnx_path), "sha256": self.sha256, "how": self.how,
                "card": self.card.origin, "input_size": self.input_size}

    def export(self, model: nn.Module, path: str | Path, validation: dict[str, float | None] | None = None) -> Path:
        """Export ``model`` (this start's network, trained) in the source's conventions; the card beside it."""
        from h2gnet.train.export import export_classifier_onnx, export_refiner_onnx

        path = Path(path)
        if isinstance(model, ConvertedNet):
            out = export_converted(model, path, self.metadata, validation)
        elif self.kind == "patch-classifier":
            out = export_classifier_onnx(model, path, self.input_size, mpp=float(self.metadata.get("mpp", 1.0)),
                                         classes=self.card.class_names, arch=self.arch)
        else:
            out = export_refiner_onnx(model, path, self.input_size, arch=self.arch, validation=validation)
        if self.card_doc is not None:
            from h2gnet.io.atomic import write_text

            write_text(card_beside(out), json.dumps(self.card_doc, indent=2) + "\n")
        return out


# -- the converted graph ----------------------------------------------------------------------
class ConvertedNet(nn.Module):
    """An onnx2torch module fed in h2gnet's convention: it applies the card's scaling, layout and input split,
    and returns 2-class logits (non-tumour, tumour) in NCHW.

    ``graph`` returns the source graph's output without its final activation (``activation``: "softmax",
    "sigmoid" or "none" when the graph gives logits); ``class_axis`` is the class axis of that output.
    """

    factor: Tensor  # buffers registered in __init__
    mean: Tensor
    std: Tensor

    def __init__(self, graph: nn.Module, card: ModelCard, input_order: Sequence[int], *, nhwc: bool,
                 activation: str, class_axis: int, size: int) -> None:
        super().__init__()
        self.graph = graph
        self.kind = card.kind
        self.arch = card.name or "onnx"
        self.nhwc = nhwc
        self.activation = activation
        self.class_axis = class_axis
        self.input_order = tuple(input_order)  # graph input i takes role input_order[i] (0 image, 1 heatmap)
        self.input_size = size
        self.in_channels = 3 if card.kind == "patch-classifier" else 4
        self.separate = card.kind == "refiner" and card.refiner_inputs == "separate"
        self.tumour_class = int(card.tumour_class or 0)
        self.n_classes = card.channels
        self.has_aux = False
        #: the source graph's input names and shapes (batch 1) and output name (for the export)
        self.export_signature: tuple[list[str], list[list[int]]] = ([], [])
        self.output_name = "output"
        factor = card.scale * 255.0 if card.kind == "patch-classifier" else 1.0
        mean = card.mean if card.kind == "patch-classifier" and card.mean is not None else (0.0, 0.0, 0.0)
        std = card.std if card.kind == "patch-classifier" and card.std is not None else (1.0, 1.0, 1.0)
        self.register_buffer("factor", torch.tensor(float(factor)), persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless the input is the graph's size."""
        if height != self.input_size or width != self.input_size:
            raise ValueError(f"this model takes {self.input_size}×{self.input_size} px, got {width}×{height}")

    def _layout(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1) if self.nhwc else x

    def graph_inputs(self, x: Tensor) -> list[Tensor]:
        """The graph's inputs, in its order, for an h2gnet batch ``x``."""
        if self.kind == "patch-classifier":
            x = (x * self.factor - self.mean) / self.std
            return [self._layout(x)]
        if self.separate:
            roles = [self._layout(x[:, :3]), self._layout(x[:, 3:4])]
            return [roles[r] for r in self.input_order]
        return [self._layout(x)]

    def graph_logits(self, x: Tensor) -> Tensor:
        """The graph's output before its final activation, in the graph's layout."""
        out = self.graph(*self.graph_inputs(x))
        return out[0] if isinstance(out, (tuple, list)) else out

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, 2[, H, W]) for (non-tumour, tumour), whatever the graph's class order and layout."""
        out = self.graph_logits(x)
        if out.dim() == 4 and self.class_axis != 1:
            out = out.movedim(self.class_axis, 1)
        if self.activation == "sigmoid":
            return torch.cat([torch.zeros_like(out[:, :1]), out[:, :1]], dim=1)
        if self.activation == "log":  # the activation could not be cut: log-probabilities are logits too
            out = torch.log(out.clamp_min(1e-12))
        tumour = out[:, self.tumour_class:self.tumour_class + 1]
        others = [c for c in range(out.shape[1]) if c != self.tumour_class]
        rest = out[:, others[0]:others[0] + 1] if len(others) == 1 else torch.logsumexp(out[:, others], 1, True)
        return torch.cat([rest, tumour], dim=1)


class _GraphIO(nn.Module):
    """A :class:`ConvertedNet` with the source graph's own inputs and output (its activation restored)."""

    def __init__(self, net: ConvertedNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: Tensor) -> Tensor:
        """The source graph's output for its own inputs."""
        out = self.net.graph(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if self.net.activation == "softmax":
            return torch.softmax(out, dim=self.net.class_axis)
        if self.net.activation == "sigmoid":
            return torch.sigmoid(out)
        return out


def _strip_activation(proto: Any) -> tuple[Any, str]:
    """A copy of the ONNX model without the Softmax/Sigmoid that makes its output (through layout-only nodes):
    (model, "softmax" | "sigmoid"); ("log" when there is none to cut, e.g. a softmax inside a fused op)."""
    proto = copy.deepcopy(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    name = proto.graph.output[0].name
    node = producers.get(name)
    while node is not None and node.op_type in _LAYOUT_OPS:
        node = producers.get(node.input[0])
    if node is None or node.op_type not in ("Softmax", "Sigmoid"):
        return proto, "log"
    kind = node.op_type.lower()
    attrs = list(node.attribute)
    node.op_type = "Identity"
    for a in attrs:
        node.attribute.remove(a)
    return proto, kind


def _graph_input_names(proto: Any) -> list[str]:
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]


def _convert(path: Path, onnx_model: OnnxModel) -> ConvertedNet:
    """The ONNX file as a :class:`ConvertedNet` (onnx2torch), fed as ``onnx_model``'s card says."""
    import onnx

    try:
        from onnx2torch import convert
    except ImportError:
        raise H2GNetError(None, "fine-tuning an ONNX model needs onnx2torch: pip install 'h2gnet[train]'") from None
    card = onnx_model.card
    assert card is not None
    binding = onnx_model._binding
    proto = onnx.load(str(path))
    if card.output == "logits":
        stripped, activation = proto, "none"
    else:
        stripped, activation = _strip_activation(proto)
        if activation == "log" and card.output == "sigmoid":
            raise H2GNetError(path, "its card says a sigmoid output, but no Sigmoid node ends the graph")
    del stripped.metadata_props[:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = convert(stripped)
    except Exception as exc:  # onnx2torch raises NotImplementedError and others for graphs it cannot convert
        raise H2GNetError(path, f"cannot be converted to PyTorch by onnx2torch ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    order = [binding.names.index(n) for n in _graph_input_names(proto)]
    nhwc = binding.nhwc
    class_axis = 1 if card.kind == "patch-classifier" or not nhwc else 3
    net = ConvertedNet(graph, card, order, nhwc=nhwc, activation=activation, class_axis=class_axis,
                       size=binding.size)
    _set_signature(net, proto)
    return net


def _converted_backbone(net: ConvertedNet) -> list[str]:
    """Parameters before the first global pooling (classifier) or upsampling (refiner) in graph order."""
    from torch import fx

    graph = net.graph
    if not isinstance(graph, fx.GraphModule):
        return []
    boundary = _CLASSIFIER_BOUNDARY if net.kind == "patch-classifier" else _REFINER_BOUNDARY
    names: list[str] = []
    for node in graph.graph.nodes:
        if node.op == "call_module":
            module = graph.get_submodule(str(node.target))
            label = type(module).__name__
        elif node.op == "call_function":
            module, label = None, getattr(node.target, "__name__", str(node.target))
        else:
            continue
        if any(b.lower() in label.lower() for b in boundary):
            return names
        if module is not None:
            names += [f"graph.{node.target}.{n}" for n, _ in module.named_parameters()]
    return []  # no boundary: the whole graph would be "backbone"; say it cannot be told


# -- finding and loading the start ------------------------------------------------------------
def _run_folder(path: Path) -> Path | None:
    """The h2gnet run folder of ``path`` (a folder, or its ``model.onnx``), when it has a best checkpoint."""
    from h2gnet.train.run_state import BEST_CHECKPOINT, CONFIG_FILE

    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name != MODEL_FILE:
        return None
    if (folder / BEST_CHECKPOINT).is_file() and (folder / CONFIG_FILE).is_file():
        return folder
    return None


def resolve(spec: str, kind: str, preset: str | None = None) -> tuple[Path, Path, str | None]:
    """(what was named, its ONNX file, the preset giving its card) for ``--init SPEC``: a run folder, an ONNX
    file, or a preset's name (its fetched file)."""
    path = Path(spec)
    if not path.exists() and spec in preset_names():
        return path, preset_model(spec, kind), spec
    if not path.exists():
        raise H2GNetError(path, "no such model or run folder (--init takes an h2gnet run folder, an .onnx file "
                                f"or a preset: {', '.join(preset_names())})")
    if path.is_dir():
        onnx_path = path / MODEL_FILE
        if not onnx_path.is_file():
            raise H2GNetError(path, f"is a folder without {MODEL_FILE}: not a finished h2gnet run")
        return path, onnx_path, preset
    if path.suffix.lower() != ".onnx":
        raise H2GNetError(path, "is not an ONNX model (.onnx) or an h2gnet run folder")
    return path, path, preset


def _card_doc(onnx_model: OnnxModel, preset: str | None, kind: str) -> dict | None:
    """The JSON card of a card-described source (from the file beside it or the preset), for the export."""
    if onnx_model._binding.native:
        return None
    beside = card_beside(onnx_model.path)
    if beside.is_file():
        doc = json.loads(beside.read_text(encoding="utf-8"))
    else:
        assert preset is not None
        load_preset(preset)  # checked
        text = (resources.files("h2gnet.infer") / "presets" / f"{preset}.json").read_text(encoding="utf-8")
        doc = json.loads(text)["cards"][kind]
    doc = dict(doc)
    doc["name"] = f"{doc.get('name') or onnx_model.path.stem} (fine-tuned with h2gnet {h2gnet.__version__})"
    doc["description"] = (f"Fine-tuned from {onnx_model.path.name} (sha256 {onnx_model.sha256()[:16]}…); "
                          "the conventions of its card, unchanged. " + doc.get("description", "")).strip()
    return doc


def _native_from_run(folder: Path, onnx_model: OnnxModel, kind: str) -> tuple[nn.Module, str, tuple | None]:
    """The run's network rebuilt from ``config.json`` with its best checkpoint's weights."""
    from h2gnet.train.run_state import BEST_CHECKPOINT, CONFIG_FILE, load_checkpoint

    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    arch = str(config.get("arch") or onnx_model.metadata.get("arch", ""))
    filters = tuple(config["filters"]) if config.get("filters") else None
    try:
        if kind == "patch-classifier":
            from h2gnet.train.models import build_classifier

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "random initialisation": the checkpoint follows
                model: nn.Module = build_classifier(arch, int(config.get("n_classes", 2)))
        else:
            from h2gnet.train.models import build_refiner

            model = build_refiner(arch, filters=filters)
        model.load_state_dict(load_checkpoint(folder / BEST_CHECKPOINT)["model"])
    except (ValueError, RuntimeError, KeyError) as exc:
        raise H2GNetError(folder / BEST_CHECKPOINT, f"does not fit the run's {arch or 'unknown'} architecture "
                                                    f"({str(exc).splitlines()[0][:200]})") from None
    if kind == "patch-classifier":
        model = model.to(memory_format=torch.channels_last)
    return model, arch, filters


def _check_match(net: nn.Module, onnx_model: OnnxModel, path: Path, seed: int = 0) -> float:
    """Largest difference of tumour probabilities between ``net`` and ONNX Runtime on random inputs; an
    :class:`H2GNetError` above :data:`MATCH_TOLERANCE`."""
    rng = np.random.default_rng(seed)
    size, channels = onnx_model.input_size, onnx_model.in_channels
    x = rng.random((2, channels, size, size), dtype=np.float32)
    x *= rng.random((2, 1, 1, 1), dtype=np.float32)  # varied brightness: outputs that differ
    if channels == 4:
        x[:, 3] = rng.random((2, size, size), dtype=np.float32)
    want = onnx_model(x)
    want = want[:, onnx_model.tumour_channel]
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            got = torch.softmax(net(torch.from_numpy(x)), dim=1)[:, 1].numpy()
    finally:
        net.train(was)
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    if not math.isfinite(diff) or diff > MATCH_TOLERANCE:
        raise H2GNetError(path, f"its PyTorch conversion differs from ONNX Runtime by {diff:.3g} (more than "
                                f"{MATCH_TOLERANCE:g}); cannot fine-tune it faithfully")
    return diff


def load_init(spec: str, kind: str, preset: str | None = None) -> InitModel:
    """The model ``--init SPEC`` names, in PyTorch, checked against its ONNX file; :class:`H2GNetError` naming
    the file for a missing or wrong card, a model of another kind, or a graph that does not convert.

    >>> init = load_init("runs/mob", "patch-classifier")           # an h2gnet run folder
    >>> init = load_init("h2gnet-2022", "refiner")                 # a fetched preset, converted by onnx2torch
    >>> init.export(init.model.eval(), "before.onnx")              # the source's outputs (≤ 1e-4), its card beside
    """
    source, onnx_path, preset = resolve(spec, kind, preset)
    onnx_model = OnnxModel(onnx_path, kind, threads=1, preset=preset)  # checks the kind, the card and the graph
    card = onnx_model.card
    assert card is not None
    folder = _run_folder(source)
    arch, filters = card.name or onnx_path.stem, None
    if folder is not None and onnx_model._binding.native:
        model, arch, filters = _native_from_run(folder, onnx_model, kind)
        how = "h2gnet checkpoint"
        if kind == "patch-classifier":
            backbone = [f"backbone.{n}" for n, _ in model.backbone.named_parameters()]  # type: ignore[union-attr]
        else:
            backbone = [n for n, _ in model.named_parameters() if "encoder" in n.split(".")]
    else:
        net = _convert(onnx_path, onnx_model)
        model, how, backbone = net, "onnx2torch", _converted_backbone(net)
    model.train()
    _check_match(model, onnx_model, onnx_path)
    return InitModel(kind=kind, source=source, onnx_path=onnx_path, how=how, model=model, card=card,
                     input_size=onnx_model.input_size, in_channels=onnx_model.in_channels, backbone=backbone,
                     metadata=dict(onnx_model.metadata), card_doc=_card_doc(onnx_model, preset, kind), arch=arch,
                     filters=filters, sha256=onnx_model.sha256())


# -- export of a converted graph ------------------------------------------------------------------
def export_converted(net: ConvertedNet, path: str | Path, metadata: dict[str, str],
                     validation: dict[str, float | None] | None = None) -> Path:
    """Export ``net`` with the source graph's inputs (names, layout, order) and output (activation restored),
    its ONNX ``metadata`` (``h2gnet_version`` updated; the refiner's ``validation`` figures added)."""
    import onnx

    from h2gnet.train.export import DEFAULT_OPSET, _eval_mode, _write_with_metadata

    names, shapes = net.export_signature
    example = tuple(torch.rand(*s) for s in shapes)
    wrapper = _GraphIO(net)
    buffer = BytesIO()
    with _eval_mode(wrapper), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, buffer,  # type: ignore[arg-type]  # file-like objects work
                          input_names=list(names), output_names=[net.output_name],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, net.output_name: {0: "batch"}},
                          opset_version=DEFAULT_OPSET, do_constant_folding=True, dynamo=False)
    meta = dict(metadata)
    if "h2gnet_kind" in meta:
        meta["h2gnet_version"] = h2gnet.__version__
    if meta.get("h2gnet_kind") == "refiner":
        meta.update({k: repr(float(v)) for k, v in (validation or {}).items() if v is not None})
    out = _write_with_metadata(buffer.getvalue(), path, meta)
    onnx.checker.check_model(str(out))
    return out


def _set_signature(net: ConvertedNet, proto: Any) -> None:
    """Remember the source graph's input names and shapes (batch 1) and output name for the export."""
    inits = {i.name for i in proto.graph.initializer}
    names, shapes = [], []
    for value in proto.graph.input:
        if value.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
        names.append(value.name)
        shapes.append([1, *dims[1:]])
    net.export_signature = (names, shapes)
    net.output_name = proto.graph.output[0].name


class Freezer:
    """Keeps the ``backbone`` parameters of ``model`` still for the first ``steps`` optimizer steps.

    :meth:`before_step` drops their gradients before an optimizer step (Adam skips a parameter without one),
    so it works the same under DDP; BatchNorm statistics keep adapting to the new slides.
    """

    def __init__(self, model: nn.Module, backbone: Sequence[str], steps: int) -> None:
        params = dict(model.named_parameters())
        self.steps = steps
        self.frozen = [params[n] for n in backbone if n in params] if steps > 0 else []
        if steps > 0 and not self.frozen:
            raise H2GNetError(None, "--freeze-backbone-steps: this model's backbone cannot be told (no global "
                                    "pooling or upsampling in its graph); use --freeze-backbone-steps 0")
        self.trainable = sum(p.numel() for p in model.parameters())
        self.backbone_size = sum(p.numel() for p in self.frozen)

    def before_step(self, step: int) -> None:
        """Call before optimizer step ``step`` (0-based, over the whole run)."""
        if step < self.steps:
            for p in self.frozen:
                p.grad = None

    def describe(self) -> str:
        """What is trained, for the plan line."""
        if not self.frozen:
            return f"all {self.trainable:,} parameters"
        rest = self.trainable - self.backbone_size
        return (f"the head ({rest:,} parameters; backbone of {self.backbone_size:,} frozen) for the first "
                f"{self.steps} optimizer steps, then all {self.trainable:,}")
