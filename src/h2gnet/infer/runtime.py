"""ONNX Runtime models: load, validate and run the exported networks (no PyTorch).

Patch classifiers take float32 RGB in [0, 1], NCHW, and return softmax
probabilities (N, classes); refiners take (N, C, H, W) and return (N, classes,
H, W). The metadata written at export (``h2gnet_kind``, ``input_size``,
``mpp``, …) tells how to feed them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from h2gnet.errors import H2GNetError

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


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


@dataclass
class OnnxModel:
    """A loaded h2gnet ONNX model.

    ``path``: the .onnx file; ``expect``: the kind it must be; ``threads``:
    intra-op threads (None: ONNX Runtime's default, all cores).
    """

    path: Path
    expect: str
    device: str = "cpu"
    threads: int | None = None
    precision: str = "fp32"
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
        if kind != self.expect:
            raise H2GNetError(self.path, f"is {'an ONNX model without h2gnet metadata' if kind is None else kind!r}"
                                         f", expected a {self.expect} exported by h2gnet")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        if len(self.input_shape) != 4:
            raise H2GNetError(self.path, f"has input shape {self.input_shape}; expected (N, C, H, W)")
        channels = self.input_shape[1]
        want_c = 3 if self.expect == "patch-classifier" else None
        if want_c is not None and channels != want_c:
            raise H2GNetError(self.path, f"takes {channels} input channels; a patch classifier takes 3 (RGB)")
        self._check_metadata()
        self._openvino = None
        if self.device == "openvino" and "OpenVINOExecutionProvider" not in available_providers():
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
        """Side of the square input in px (fixed in the graph or in the metadata)."""
        side = self.input_shape[2]
        return int(side) if isinstance(side, int) else int(self.metadata.get("input_size", 0))

    @property
    def in_channels(self) -> int:
        """Channels of the model input (3 RGB, 4 RGB + heatmap, 1 ...)."""
        return int(self.input_shape[1])

    @property
    def mpp(self) -> float:
        """µm/px the patch classifier was trained at (default 1.0: 10×)."""
        return float(self.metadata.get("mpp", 1.0))

    @property
    def classes(self) -> list[str]:
        """Class names of the model output, in channel order."""
        return self.metadata.get("classes", "non-tumour,tumour").split(",")

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
        """Run on a float32 NCHW batch; returns the model's probabilities."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._openvino is not None:
            return self._openvino(batch)
        return self.session.run(None, {self.input_name: batch})[0]


class _OpenVinoEngine:
    """The OpenVINO runtime on an ONNX file, compiled once per batch size (static shapes are fastest).

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
        compiled = self.compiled.get(n)
        if compiled is None:
            model = self.core.read_model(str(self.path))
            model.reshape([n, *batch.shape[1:]])
            compiled = self.compiled[n] = self.core.compile_model(model, "CPU", self.config)
        return next(iter(compiled(batch).values()))


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
