"""ONNX export of the PyTorch models (training extra: imports torch and onnx).

The exported graphs end in a softmax, so ONNX users get probabilities:

* patch classifier: input ``"image"`` (N, 3, S, S) float32 RGB in [0, 1],
  output ``"probabilities"`` (N, n_classes);
* refiner: input ``"input"`` (N, C, S, S) float32 (RGB in [0, 1] then, for
  C = 4, the tumour heatmap in [0, 1]), output ``"probabilities"``
  (N, n_classes, S, S).

The batch dimension N is dynamic, S is fixed.  Model metadata
(``metadata_props``) describe what the inference core needs to know; every
value is a string.  Files are written atomically.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

import h2gnet
from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import atomic_path, is_disk_full
from h2gnet.train.models.classifier import PatchClassifier, fold_input_scale

DEFAULT_OPSET = 17
DEFAULT_CLASSES = ("non-tumour", "tumour")


class _WithSoftmax(nn.Module):
    """Wrap a logits model so that its output is the softmax over dimension 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """Class probabilities of ``x``."""
        return torch.softmax(self.model(x), dim=1)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration, then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _export_bytes(model: nn.Module, example: Tensor, input_name: str, opset: int) -> bytes:
    """Trace ``softmax(model(example))`` with the TorchScript exporter; the ONNX bytes.

    ``dynamo=False``: the dynamo exporter needs ``onnxscript``, which the
    training extra does not install.  Only dimension 0 is dynamic.
    """
    buffer = io.BytesIO()
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            _WithSoftmax(model),
            (example,),
            buffer,  # type: ignore[arg-type]  # torch.onnx.export accepts file-like objects
            input_names=[input_name],
            output_names=["probabilities"],
            dynamic_axes={input_name: {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def _write_with_metadata(data: bytes, path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Add ``metadata`` to the ONNX model in ``data``, check it, write it atomically to ``path``."""
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            onnx.save(proto, str(tmp))
        except OSError as exc:
            if is_disk_full(exc, path.parent):
                raise  # atomic_path turns it into the disk-full error
            raise H2GNetError(path, f"cannot write the ONNX model ({exc.strerror or exc})") from None
    return path


def _check_opset(opset: int) -> None:
    """Reject opsets older than 17, the oldest this package exports and tests."""
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be >= {DEFAULT_OPSET}, got {opset}")


def export_classifier_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int = 256,
    *,
    mpp: float = 1.0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    arch: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a patch classifier (logits model) as ONNX with a softmax output; return ``path``.

    ``input_size``: patch height = width in pixels (fixed in the graph).
    ``mpp``: the patch resolution the model was trained at, micrometres per
    pixel (stored as metadata; the inference core reads patches at it).
    ``classes``: class names in output order; their number must equal the
    model's outputs.  ``arch`` defaults to ``model.arch``.
    Metadata: h2gnet_kind="patch-classifier", input_size, mpp, classes
    (comma-separated), arch, h2gnet_version.
    """
    _check_opset(opset)
    if input_size < 1 or mpp <= 0:
        raise ValueError(f"input_size and mpp must be positive, got {input_size} and {mpp}")
    if any("," in name or not name for name in classes):
        raise ValueError(f"class names must be non-empty and contain no commas, got {list(classes)}")
    example = torch.rand(1, 3, input_size, input_size, device=_device(model))
    with _eval_mode(model), torch.no_grad():
        n_outputs = int(model(example).shape[1])
    if n_outputs != len(classes):
        raise ValueError(
            f"the model has {n_outputs} outputs but {len(classes)} class names were given: {list(classes)}"
        )
    metadata = {
        "h2gnet_kind": "patch-classifier",
        "input_size": str(input_size),
        "mpp": repr(float(mpp)),
        "classes": ",".join(classes),
        "arch": arch or str(getattr(model, "arch", type(model).__name__)),
        "h2gnet_version": h2gnet.__version__,
    }

    graph_model = fold_input_scale(model) if isinstance(model, PatchClassifier) else model
    return _write_with_metadata(_export_bytes(graph_model, example, "image", opset), path, metadata)


def export_refiner_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int = 1024,
    in_channels: int | None = None,
    *,
    arch: str | None = None,
    validation: Mapping[str, float | None] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a refinement network (logits model) as ONNX with a softmax output; return ``path``.

    ``input_size``: height = width in pixels (fixed in the graph; must suit
    the network, see ``model.size_multiple``).  ``in_channels`` defaults to
    ``model.in_channels`` (else 4) and must agree with it.  Only the final
    output is exported (no deep-supervision outputs).
    Metadata: h2gnet_kind="refiner", input_size, in_channels, arch, h2gnet_version, and the figures of
    ``validation`` that are not None (the trainer gives ``val_dice`` and ``val_dice_patchwise``: the refiner's
    and the patch-wise mask's validation Dice, fractions; ``segment`` warns when the first is lower).
    """
    _check_opset(opset)
    model_channels = getattr(model, "in_channels", None)
    if in_channels is None:
        in_channels = model_channels or 4
    elif model_channels is not None and model_channels != in_channels:
        raise ValueError(f"in_channels={in_channels} but the model takes {model_channels} channels")
    check_size = getattr(model, "check_size", None)
    if check_size is not None:
        check_size(input_size, input_size)
    example = torch.rand(1, in_channels, input_size, input_size, device=_device(model))
    metadata = {
        "h2gnet_kind": "refiner",
        "input_size": str(input_size),
        "in_channels": str(in_channels),
        "arch": arch or str(getattr(model, "arch", type(model).__name__)),
        "h2gnet_version": h2gnet.__version__,
    }
    metadata.update({key: repr(float(value)) for key, value in (validation or {}).items() if value is not None})
    return _write_with_metadata(_export_bytes(model, example, "input", opset), path, metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    proto = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in proto.metadata_props}


def verify_onnx(model: nn.Module, path: str | Path, example: Tensor) -> float:
    """Max absolute difference between ONNX Runtime (CPU) and PyTorch on ``example``.

    Both compute probabilities: PyTorch as ``softmax(model(example), dim=1)``
    in eval mode.  ``example`` is an NCHW float32 batch of the exported size
    (any batch size).  Raises ``ValueError`` if the output shapes differ.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    array = example.detach().to("cpu", torch.float32).contiguous().numpy()
    (onnx_out,) = session.run(["probabilities"], {input_name: array})
    with _eval_mode(model), torch.no_grad():
        torch_out = torch.softmax(model(example.to(_device(model))), dim=1).cpu().numpy()
    if onnx_out.shape != torch_out.shape:
        raise ValueError(f"output shapes differ: ONNX {onnx_out.shape}, PyTorch {torch_out.shape}")
    return float(np.max(np.abs(onnx_out.astype(np.float64) - torch_out.astype(np.float64))))
