"""ONNX Runtime models: load, validate and run the exported networks (no PyTorch).

Patch classifiers take float32 RGB in [0, 1], NCHW, and return softmax
probabilities (N, classes); refiners take (N, C, H, W) and return (N, classes,
H, W). The metadata written at export (``h2gnet_kind``, ``input_size``,
``mpp``, …) tells how to feed them. Other ONNX models run with a model card
(:mod:`h2gnet.infer.model_card`: a JSON file beside the model or a named preset):
the card is checked against the graph (number of inputs, channels, layout, sizes,
output classes) when the model is loaded, before any slide is read, and
:class:`OnnxModel` converts h2gnet's NCHW [0, 1] input to what the graph takes and
its output back to probabilities, so the rest of the pipeline does not change.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.infer.model_card import (
    ModelCard,
    card_beside,
    card_from_metadata,
    load_card,
    load_preset,
    with_graph,
)

if TYPE_CHECKING:
    import onnxruntime as ort

KINDS = ("patch-classifier", "refiner")
#: Rounding slack on probabilities in [0, 1] (float32 softmax may overshoot by a few ulps).
PROBABILITY_SLACK = 1e-4
#: Plausible µm/px of a patch classifier's input (a 40× scan to a 0.16× thumbnail).
MODEL_MPP_RANGE = (0.05, 64.0)


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers on this machine (e.g. ``CPUExecutionProvider``)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def openvino_available() -> bool:
    """True when the ``openvino`` runtime package is importable (used when ORT has no OpenVINO provider)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


#: Accepted ``device`` values (ONNX Runtime execution providers, or the OpenVINO runtime).
DEVICES = ("cpu", "cuda", "tensorrt", "openvino", "auto")
#: Accepted ``precision`` values (bf16 only matters with OpenVINO).
PRECISIONS = ("fp32", "bf16")


def choose_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device``: "cpu", "cuda", "tensorrt", "openvino" or "auto" (best installed)."""
    have = available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "openvino" and "OpenVINOExecutionProvider" not in have and openvino_available():
        return ["CPUExecutionProvider"]  # metadata only: the OpenVINO runtime itself runs the model
    wanted = {
        "cuda": ["CUDAExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
        "openvino": ["OpenVINOExecutionProvider"],
        "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    }.get(device)
    if wanted is None:
        raise H2GNetError(None, f"unknown device {device!r} (cpu, cuda, tensorrt, openvino or auto)")
    chosen = [p for p in wanted if p in have]
    if device != "auto" and not chosen:
        raise H2GNetError(None, f"device {device!r} asked for but ONNX Runtime here has only {', '.join(have)}")
    return [*chosen, "CPUExecutionProvider"]


#: SHA-256s computed in this process, by (resolved path, size, modification time in ns).
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file (computed once per process while the file's size and modification time stay:
    a segment run quotes its models' in the worker-cache key and in every summary)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    digest = _SHA256_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = _SHA256_CACHE[key] = h.hexdigest()
    return digest


def _load_session(path: Path, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """An ONNX Runtime session, or an :class:`H2GNetError` naming the file when it cannot be loaded."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise H2GNetError(path, f"is not a loadable ONNX model ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def model_kind(path: str | Path) -> str | None:
    """The ``h2gnet_kind`` an exported model declares ("patch-classifier", "refiner"), None for other
    ONNX models; :class:`H2GNetError` for a missing or unloadable file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise H2GNetError(path, "no such model file")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # metadata only
    session = _load_session(path, opts, ["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map.get("h2gnet_kind")


# -- binding a card to a graph ------------------------------------------------------------------
def _dim(value: object) -> int | None:
    """A fixed dimension of a graph shape, None when symbolic."""
    return value if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class _Binding:
    """How h2gnet's NCHW [0, 1] tensors map onto a graph's inputs and its output back to probabilities.

    ``names``: graph inputs in role order (image[, heatmap]); ``size``: input side in px; ``channels``:
    3 (RGB) or 4 (RGB + heatmap) in h2gnet's terms; ``native``: an h2gnet export, fed as it is.
    """

    card: ModelCard
    names: tuple[str, ...]
    size: int
    channels: int
    native: bool = False
    nhwc: bool = False

    def _layout(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if self.nhwc else x)

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Graph inputs for a float32 NCHW batch in h2gnet's convention."""
        card = self.card
        if card.kind == "patch-classifier":
            factor = card.scale * 255.0
            x = batch * np.float32(factor) if abs(factor - 1.0) > 1e-9 else batch
            if card.mean is not None and card.std is not None:
                mean = np.asarray(card.mean, np.float32)[None, :, None, None]
                std = np.asarray(card.std, np.float32)[None, :, None, None]
                x = (x - mean) / std
            return {self.names[0]: self._layout(x.astype(np.float32, copy=False))}
        if len(self.names) == 2:
            return {self.names[0]: self._layout(batch[:, :3]), self.names[1]: self._layout(batch[:, 3:4])}
        return {self.names[0]: self._layout(batch)}

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """The graph's output as probabilities along axis 1 ((N, classes) or (N, classes, H, W))."""
        out = np.asarray(out, np.float32)
        if out.ndim == 4 and self.nhwc:
            out = out.transpose(0, 3, 1, 2)
        if self.card.output == "logits":
            e = np.exp(out - out.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        elif self.card.output == "sigmoid":
            p = out[:, :1]
            out = np.concatenate([1.0 - p, p], axis=1)
        return out


def _mismatch(path: Path, card: ModelCard, key: str, problem: str) -> H2GNetError:
    return H2GNetError(path, f"does not match its model card ({card.origin}), key {key!r}: {problem}")


def _layout_of(path: Path, card: ModelCard, shape: list, channels: tuple[int, ...], key: str) -> bool:
    """True for NHWC: from the card, or read from the graph (the axis holding ``channels``)."""
    first, last = _dim(shape[1]), _dim(shape[3])
    if card.layout == "NCHW":
        if first is not None and first not in channels:
            raise _mismatch(path, card, "input.layout", f"NCHW, but the graph's input {key} has shape {shape}")
        return False
    if card.layout == "NHWC":
        if last is not None and last not in channels:
            raise _mismatch(path, card, "input.layout", f"NHWC, but the graph's input {key} has shape {shape}")
        return True
    nchw, nhwc = first in channels, last in channels
    if nchw == nhwc:
        raise _mismatch(path, card, "input.layout", f"cannot tell NCHW from NHWC in the graph's input {key} "
                                                    f"{shape}; say it in the card")
    return nhwc


def _side(path: Path, card: ModelCard, shape: list, key: str, *, nhwc: bool) -> int:
    h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
    h, w = _dim(h), _dim(w)
    if h is not None and w is not None and h != w:
        raise _mismatch(path, card, key, f"the graph's input is {w}×{h} px; h2gnet feeds square inputs")
    graph = h or w
    if card.input_size is not None and graph is not None and card.input_size != graph:
        raise _mismatch(path, card, key, f"{card.input_size} px, but the graph takes {graph} px")
    size = card.input_size or graph
    if size is None:
        raise _mismatch(path, card, key, "the graph's input size is not fixed; give it in the card")
    return int(size)


def _check_output(path: Path, card: ModelCard, session: object, *, nhwc: bool) -> None:
    out = list(session.get_outputs()[0].shape)  # type: ignore[attr-defined]
    want = card.channels
    if card.kind == "patch-classifier":
        got = _dim(out[-1]) if len(out) == 2 else None
        if len(out) != 2:
            raise _mismatch(path, card, "output", f"the graph's output has shape {out}; expected (N, classes)")
    else:
        if len(out) != 4:
            raise _mismatch(path, card, "output", f"the graph's output has shape {out}; expected 4 dimensions")
        got = _dim(out[3] if nhwc else out[1])
    if got is not None and got != want:
        key = "output" if card.output == "sigmoid" or got == 1 else "class_names"
        raise _mismatch(path, card, key, f"{want} output channel(s) expected, the graph gives {got}")


def _find_card(path: Path, expect: str, preset: str | None) -> ModelCard:
    beside = card_beside(path)
    if beside.is_file():
        return load_card(beside)
    if preset is not None:
        cards = load_preset(preset).cards
        if expect not in cards:
            raise H2GNetError(path, f"preset {preset!r} has no {expect} card")
        return cards[expect]
    raise H2GNetError(path, f"is an ONNX model without h2gnet metadata and without a model card: put "
                            f"{beside.name} beside it (see h2gnet.infer.model_card) or name a preset "
                            f"(--preset h2gnet-2022); expected a {expect}")


def bind_card(session: object, path: Path, expect: str, metadata: dict[str, str], card: ModelCard | None,
              preset: str | None) -> tuple[ModelCard, _Binding]:
    """The model's card (from its h2gnet metadata, ``card``, ``NAME.card.json`` beside it, or ``preset``),
    checked against the graph; :class:`H2GNetError` naming the file and the card's key on a mismatch."""
    inputs = [(i.name, list(i.shape)) for i in session.get_inputs()]  # type: ignore[attr-defined]
    kind = metadata.get("h2gnet_kind")
    if kind is not None:
        if kind != expect:
            raise H2GNetError(path, f"is {kind!r}, expected a {expect} exported by h2gnet")
        name, shape = inputs[0]
        if len(shape) != 4:
            raise H2GNetError(path, f"has input shape {shape}; expected (N, C, H, W)")
        if expect == "patch-classifier" and shape[1] != 3:
            raise H2GNetError(path, f"takes {shape[1]} input channels; a patch classifier takes 3 (RGB)")
        native = card_from_metadata(metadata, expect, origin=f"metadata of {path.name}")
        side = _dim(shape[2]) or (int(metadata["input_size"]) if metadata.get("input_size", "").isdigit() else 0)
        return with_graph(native, input_size=side or None), _Binding(native, (name,), side, int(shape[1]), True)
    card = card if card is not None else _find_card(path, expect, preset)
    if card.kind != expect:
        raise H2GNetError(card.origin or path, f"model card key 'kind': {card.kind!r}, but {path.name} is used "
                                               f"as a {expect}")
    for name, shape in inputs:
        if len(shape) != 4:
            raise _mismatch(path, card, "input", f"the graph's input {name!r} has shape {shape}; expected 4 "
                                                 "dimensions (NCHW or NHWC)")
    if expect == "patch-classifier":
        if len(inputs) != 1:
            raise _mismatch(path, card, "input", f"the graph has {len(inputs)} inputs; a patch classifier takes one")
        name, shape = inputs[0]
        nhwc = _layout_of(path, card, shape, (3,), repr(name))
        names: tuple[str, ...] = (name,)
        channels = 3
        side = _side(path, card, shape, "patch_size_pixels", nhwc=nhwc)
    elif card.refiner_inputs == "separate":
        if len(inputs) != 2:
            raise _mismatch(path, card, "input.inputs", f"'separate' (image, heatmap), but the graph has "
                                                        f"{len(inputs)} input(s)")
        by_name = dict(inputs)
        if card.input_names is not None:
            if sorted(card.input_names) != sorted(by_name):
                raise _mismatch(path, card, "input.names", f"{list(card.input_names)}, but the graph's inputs are "
                                                           f"{list(by_name)}")
            order = list(card.input_names)
        elif card.input_order == "alphabetical":  # FAST: its ports go to the inputs in sorted order of name
            order = sorted(by_name)
            if 3 not in (_dim(by_name[order[0]][1]), _dim(by_name[order[0]][3])):
                raise _mismatch(path, card, "input.order", f"FAST gives the image (port 0) to the input "
                                                           f"{order[0]!r} (the first name in alphabetical order), "
                                                           f"whose shape {by_name[order[0]]} takes no RGB image: "
                                                           "FAST cannot run this model in the published pipeline; "
                                                           "name the inputs in the card (input.names) to bind them")
        else:  # the 3-channel input is the image, the 1-channel one the heatmap; else the graph's order
            probe = [n for n, s in inputs if 3 in (_dim(s[1]), _dim(s[3]))]
            order = [probe[0], next(n for n, _ in inputs if n != probe[0])] if len(probe) == 1 else \
                [n for n, _ in inputs]
        nhwc = _layout_of(path, card, by_name[order[0]], (3,), f"{order[0]!r} (image)")
        heat = by_name[order[1]]
        if _dim(heat[3] if nhwc else heat[1]) not in (None, 1):
            raise _mismatch(path, card, "input.names", f"the heatmap input {order[1]!r} has shape {heat}; "
                                                       "expected 1 channel")
        names, channels = tuple(order), 4
        side = _side(path, card, by_name[order[0]], "refiner.input_size_pixels", nhwc=nhwc)
    else:
        if len(inputs) != 1:
            raise _mismatch(path, card, "input.inputs", f"'concatenated', but the graph has {len(inputs)} inputs")
        name, shape = inputs[0]
        nhwc = _layout_of(path, card, shape, (3, 4), repr(name))
        names, channels = (name,), int(_dim(shape[3] if nhwc else shape[1]) or 4)
        side = _side(path, card, shape, "refiner.input_size_pixels", nhwc=nhwc)
    _check_output(path, card, session, nhwc=nhwc)
    card = with_graph(card, layout="NHWC" if nhwc else "NCHW", input_size=side)
    return card, _Binding(card, names, side, channels, False, nhwc)


@dataclass
class OnnxModel:
    """A loaded ONNX model: one of h2gnet's exports, or a model described by a card.

    A model without h2gnet metadata takes its card from ``card``, else ``NAME.card.json`` beside it,
    else the preset named by ``preset`` (see :func:`bind_card`).

    ``path``: the .onnx file; ``expect``: the kind it must be; ``threads``:
    intra-op threads (None: ONNX Runtime's default, all cores).
    """

    path: Path
    expect: str
    device: str = "cpu"
    threads: int | None = None
    precision: str = "fp32"
    card: ModelCard | None = None
    preset: str | None = None
    metadata: dict[str, str] = field(init=False)
    _sha256: str | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.path = Path(self.path)
        if not self.path.is_file():
            raise H2GNetError(self.path, "no such model file")
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        opts.log_severity_level = 3
        if self.device == "cpu":
            # no busy-waiting between parallel sections: the patch readers share the cores
            # (benchmark: heatmap of 510 patches 3.69 s vs 3.79 s with spinning)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = _load_session(self.path, opts, choose_providers(self.device))
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        kind = self.metadata.get("h2gnet_kind")
        inp = self.session.get_inputs()[0]
        self.input_shape = list(inp.shape)
        if kind is not None:  # one of h2gnet's exports: its metadata are checked as they are
            if kind != self.expect:
                raise H2GNetError(self.path, f"is {kind!r}, expected a {self.expect} exported by h2gnet")
            if len(self.input_shape) != 4:
                raise H2GNetError(self.path, f"has input shape {self.input_shape}; expected (N, C, H, W)")
            channels = self.input_shape[1]
            if self.expect == "patch-classifier" and channels != 3:
                raise H2GNetError(self.path, f"takes {channels} input channels; a patch classifier takes 3 (RGB)")
            self._check_metadata()
        self.card, self._binding = bind_card(self.session, self.path, self.expect, self.metadata, self.card,
                                             self.preset)
        self.input_name = self._binding.names[0]
        self._openvino = None
        if self.device == "openvino" and "OpenVINOExecutionProvider" not in available_providers():
            if not self._binding.native:
                raise H2GNetError(self.path, "device 'openvino' runs h2gnet's own exports only; use cpu for "
                                             "models described by a card")
            if not openvino_available():
                raise H2GNetError(None, "device 'openvino' needs `pip install openvino` (or onnxruntime-openvino)")
            self._openvino = _OpenVinoEngine(self.path, self.threads, self.precision)
            del self.session  # the OpenVINO runtime runs the model; ORT only read its metadata

    def _check_metadata(self) -> None:
        """Refuse metadata and output shapes inference cannot use (clear errors instead of IndexErrors)."""
        raw = self.metadata.get("mpp", "1.0")
        try:
            mpp = float(raw)
        except ValueError:
            mpp = float("nan")
        if not (np.isfinite(mpp) and MODEL_MPP_RANGE[0] <= mpp <= MODEL_MPP_RANGE[1]):
            raise H2GNetError(self.path, f"metadata 'mpp' is {raw!r}; expected the µm/px the model was trained at "
                                         f"({MODEL_MPP_RANGE[0]}–{MODEL_MPP_RANGE[1]})")
        raw_size = self.metadata.get("input_size")
        side = self.input_shape[2]
        if not isinstance(side, int):
            try:
                side = int(raw_size or "")
            except ValueError:
                side = 0
        if side < 8:
            raise H2GNetError(self.path, f"has no usable input size (graph {self.input_shape}, metadata "
                                         f"'input_size' {raw_size!r})")
        outputs = self.session.get_outputs()
        shape = list(outputs[0].shape) if outputs else []
        columns = shape[1] if len(shape) >= 2 else None
        if self.expect == "patch-classifier":
            if len(shape) != 2 or (isinstance(columns, int) and columns < 2):
                raise H2GNetError(self.path, f"has output shape {shape}; a patch classifier returns (N, classes >= 2)")
            if isinstance(columns, int) and columns != len(self.classes):
                raise H2GNetError(self.path, f"returns {columns} columns but its metadata 'classes' names "
                                             f"{len(self.classes)}: {','.join(self.classes)}")
            if "tumour" not in self.classes and len(self.classes) != 2:
                raise H2GNetError(self.path, f"metadata 'classes' {','.join(self.classes)} has no 'tumour' class")
        elif len(shape) != 4 or (isinstance(columns, int) and columns < 2):
            raise H2GNetError(self.path, f"has output shape {shape}; a refiner returns (N, classes >= 2, H, W)")

    @property
    def input_size(self) -> int:
        """Side of the square input in px (from the graph or the card; 0 when neither fixes it)."""
        return self._binding.size

    @property
    def in_channels(self) -> int:
        """Channels the network takes in h2gnet's terms: 3 (RGB) or 4 (RGB + heatmap), whatever the layout."""
        return self._binding.channels

    @property
    def mpp(self) -> float:
        """µm/px the patch classifier was trained at (default 1.0: 10×)."""
        assert self.card is not None
        return float(self.card.mpp) if self.card.mpp is not None else float(self.metadata.get("mpp", 1.0))

    @property
    def classes(self) -> list[str]:
        """Class names of the model output, in channel order."""
        if self.card is None:  # while h2gnet's metadata are checked, before the card is made
            return self.metadata.get("classes", "non-tumour,tumour").split(",")
        return list(self.card.class_names)

    @property
    def tumour_channel(self) -> int:
        """Column (patch classifiers) or channel (refiners) of the tumour probability in this model's output."""
        assert self.card is not None and self.card.tumour_class is not None
        return 1 if self.card.output == "sigmoid" else self.card.tumour_class

    def sha256(self) -> str:
        """SHA-256 of the model file (computed once: summaries of every slide quote it)."""
        if self._sha256 is None:
            self._sha256 = sha256_of(self.path)
        return self._sha256

    @property
    def engine(self) -> str:
        """What runs the model: "openvino" or "onnxruntime:<providers>"."""
        if self._openvino is not None:
            return f"openvino ({self.precision})"
        return "onnxruntime:" + ",".join(self.session.get_providers())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run on a float32 NCHW batch in h2gnet's convention (RGB in [0, 1], plus the heatmap channel for
        4-channel refiners); returns probabilities, (N, classes) or (N, classes, H, W)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._openvino is not None:
            return self._openvino(batch)
        if self._binding.native:
            return self.session.run(None, {self.input_name: batch})[0]
        feeds = self._binding.feeds(batch)
        return self._binding.probabilities(self.session.run(None, feeds)[0])


#: A batch smaller than an already compiled size runs padded to it when that adds at most this many rows: compiling
#: a new size took 0.15–0.3 s on a 2-core EPYC (MobileNetV2, 256 px), as long as 30–60 of its patches in bf16, and
#: every round of adaptive evaluation ends in a partial batch of its own size.
OPENVINO_PAD_ROWS = 32


class _OpenVinoEngine:
    """The OpenVINO runtime on an ONNX file, compiled per batch size (static shapes are fastest); a smaller batch
    runs padded to a compiled size (:data:`OPENVINO_PAD_ROWS`).

    ``precision`` "fp32" pins f32 inference (OpenVINO would otherwise pick bf16 on CPUs that have it);
    "bf16" allows bf16.
    """

    def __init__(self, path: Path, threads: int | None, precision: str) -> None:
        import openvino as ov

        if precision not in ("fp32", "bf16"):
            raise H2GNetError(None, f"OpenVINO precision must be fp32 or bf16, not {precision!r}")
        self.core = ov.Core()
        self.path = path
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                       "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled: dict[int, Any] = {}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        size = min((m for m in self.compiled if n <= m <= n + OPENVINO_PAD_ROWS), default=n)
        compiled = self.compiled.get(size)
        if compiled is None:
            model = self.core.read_model(str(self.path))
            model.reshape([size, *batch.shape[1:]])
            compiled = self.compiled[size] = self.core.compile_model(model, "CPU", self.config)
        if size > n:  # the rows are independent (inference mode): zero rows in, their outputs dropped
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        return next(iter(compiled(batch).values()))[:n]


def check_probabilities(probs: np.ndarray, model: Path, slide: str | Path | None = None) -> np.ndarray:
    """``probs`` if every value is a probability (finite, in [0, 1] up to rounding); else an
    :class:`H2GNetError` naming the model, so a broken model never yields an empty mask marked done."""
    probs = np.asarray(probs)
    bad = ~np.isfinite(probs)
    if bad.any():
        on = f" on {Path(slide).name}" if slide is not None else ""
        raise H2GNetError(model, f"returned {int(bad.sum())} non-finite value(s) (NaN/inf){on}: a broken model?")
    if probs.size and (probs.min() < -PROBABILITY_SLACK or probs.max() > 1 + PROBABILITY_SLACK):
        raise H2GNetError(model, f"returned values in [{probs.min():.3g}, {probs.max():.3g}], not probabilities in "
                                 "[0, 1] (a model without its softmax?)")
    return probs


def default_threads() -> int:
    """Physical-ish core count for ONNX Runtime intra-op threads."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
