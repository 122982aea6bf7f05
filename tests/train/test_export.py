"""ONNX export: ONNX Runtime agrees with PyTorch, dynamic batch, names, metadata, atomic writes.

Small models and sizes: MobileNetV2 at 64x64, InceptionV3 at 80x80, 4-level
refiners at 64x64.  BatchNorm statistics are calibrated first so that the
outputs vary (a random network in eval mode is nearly constant, which would
make the comparison meaningless).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import h2gnet  # noqa: E402
from h2gnet.train import export  # noqa: E402
from h2gnet.train.models import blocks  # noqa: E402
from h2gnet.train.models.classifier import build_classifier  # noqa: E402
from h2gnet.train.models.common import calibrate_batchnorm  # noqa: E402
from h2gnet.train.models.unets import ARCHS, build_refiner  # noqa: E402

TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def batches(channels: int, size: int, seed: int = 0, n: int = 3, batch: int = 4) -> list[torch.Tensor]:
    """[0, 1] batches with varied brightness per sample."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.rand(batch, channels, size, size, generator=g) * torch.rand(batch, 1, 1, 1, generator=g)
        for _ in range(n)
    ]


def classifier(arch: str, size: int) -> torch.nn.Module:
    """A seeded, BatchNorm-calibrated random classifier in training mode."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random initialisation"):
        model = build_classifier(arch)
    calibrate_batchnorm(model, batches(3, size))
    return model.train()


def refiner(arch: str, size: int = 64) -> torch.nn.Module:
    """A seeded 4-level refiner, calibrated, with the DANet attention switched on (gamma != 0)."""
    torch.manual_seed(0)
    model = build_refiner(arch, filters=(4, 8, 8, 16))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (blocks.PositionAttention, blocks.ChannelAttention)):
                module.gamma.fill_(0.5)
    calibrate_batchnorm(model, batches(model.in_channels, size))
    return model.train()


def graph_io(path: Path) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """(name, dims) of the graph inputs and outputs; dims are ints or dimension names."""

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    graph = onnx.load(str(path)).graph
    return [(v.name, dims(v)) for v in graph.input], [(v.name, dims(v)) for v in graph.output]


def ort_run(path: Path, x: torch.Tensor) -> np.ndarray:
    """The ONNX model's probabilities for ``x``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size"), [("mobilenetv2", 64), ("inceptionv3", 80)])
def test_classifier_export_matches_pytorch_for_any_batch(tmp_path: Path, arch: str, size: int) -> None:
    model = classifier(arch, size)
    path = export.export_classifier_onnx(model, tmp_path / f"{arch}.onnx", input_size=size, mpp=0.9)
    assert model.training  # export restored the mode
    inputs, outputs = graph_io(path)
    assert inputs == [("image", ["batch", 3, size, size])]
    assert outputs == [("probabilities", ["batch", 2])]
    for n in (1, 3):
        x = batches(3, size, seed=10 + n, n=1, batch=n)[0]
        assert export.verify_onnx(model, path, x) <= TOLERANCE
        probabilities = ort_run(path, x)
        assert probabilities.shape == (n, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # the input's division by std is folded into the first convolution: no Div before it
    graph = onnx.load(str(path)).graph
    first_conv = next(i for i, n in enumerate(graph.node) if n.op_type == "Conv")
    assert "Div" not in [n.op_type for n in graph.node[:first_conv]]
    assert not model.std_folded  # the caller's model is untouched
    # The comparison means something: the probabilities vary between patches.
    spread = ort_run(path, torch.cat(batches(3, size, seed=3)))[:, 1]
    assert spread.std() > 0.01
    assert export.read_metadata(path) == {
        "h2gnet_kind": "patch-classifier",
        "input_size": str(size),
        "mpp": "0.9",
        "classes": "non-tumour,tumour",
        "arch": arch,
        "h2gnet_version": h2gnet.__version__,
    }


def test_classifier_export_uses_opset_17_or_later(tmp_path: Path) -> None:
    path = export.export_classifier_onnx(classifier("mobilenetv2", 64), tmp_path / "m.onnx", input_size=64)
    opsets = {entry.domain: entry.version for entry in onnx.load(str(path)).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) >= 17
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export.export_classifier_onnx(
            classifier("mobilenetv2", 64), tmp_path / "old.onnx", input_size=64, opset=13
        )


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_refiner_export_matches_pytorch_for_any_batch(tmp_path: Path, arch: str) -> None:
    model = refiner(arch)
    channels = model.in_channels
    path = export.export_refiner_onnx(model, tmp_path / f"{arch}.onnx", input_size=64)
    assert model.training
    inputs, outputs = graph_io(path)
    assert inputs == [("input", ["batch", channels, 64, 64])]
    assert outputs == [("probabilities", ["batch", 2, 64, 64])]  # the final output only, no deep supervision
    for n in (1, 3):
        x = batches(channels, 64, seed=20 + n, n=1, batch=n)[0]
        assert export.verify_onnx(model, path, x) <= TOLERANCE
        np.testing.assert_allclose(ort_run(path, x).sum(axis=1), 1.0, atol=1e-5)
    assert export.read_metadata(path) == {
        "h2gnet_kind": "refiner",
        "input_size": "64",
        "in_channels": str(channels),
        "arch": arch,
        "h2gnet_version": h2gnet.__version__,
    }


def test_verify_onnx_detects_a_different_model(tmp_path: Path) -> None:
    model = refiner("unet")
    path = export.export_refiner_onnx(model, tmp_path / "unet.onnx", input_size=64)
    with torch.no_grad():
        model.classify.bias.add_(torch.tensor([1.0, -1.0]))
    assert export.verify_onnx(model, path, batches(4, 64, n=1, batch=1)[0]) > 0.05


def test_bad_export_arguments_write_nothing(tmp_path: Path) -> None:
    model = refiner("unet")
    with pytest.raises(ValueError, match="multiples of 8"):
        export.export_refiner_onnx(model, tmp_path / "a.onnx", input_size=60)
    with pytest.raises(ValueError, match="in_channels=3 but the model takes 4"):
        export.export_refiner_onnx(model, tmp_path / "b.onnx", input_size=64, in_channels=3)
    with pytest.raises(ValueError, match="2 outputs but 3 class names"):
        export.export_classifier_onnx(
            classifier("mobilenetv2", 64), tmp_path / "c.onnx", input_size=64, classes=("a", "b", "c")
        )
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "unet.onnx"
    target.parent.mkdir()
    target.write_bytes(b"old")
    export.export_refiner_onnx(refiner("unet"), target, input_size=64, arch="custom-name")
    assert [p.name for p in target.parent.iterdir()] == ["unet.onnx"]
    assert export.read_metadata(target)["arch"] == "custom-name"
