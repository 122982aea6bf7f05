"""Patch classifiers of the H2G-Net detection stage (paper sections 2.3 and 3.2).

A torchvision backbone (MobileNetV2 or InceptionV3, convolutional features
only) followed by the paper's simplified head: global average pooling ->
Linear(features, 100) -> Dropout(0.5) -> ReLU -> BatchNorm1d(100) ->
Linear(100, n_classes).

Input convention: float32 RGB in [0, 1], NCHW (channels-last memory format
works too).  The model normalises internally (a registered buffer), so ONNX
users feed [0, 1] RGB.  The forward pass returns **logits**; softmax is added
at ONNX export (:mod:`h2gnet.train.export`).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from h2gnet.errors import H2GNetError
from h2gnet.train.config import CLASSIFIER_ARCHS

ARCHS = CLASSIFIER_ARCHS
HEAD_HIDDEN = 100

# Per-architecture input normalisation, applied to [0, 1] RGB.  MobileNetV2's
# torchvision weights expect ImageNet mean/std.  torchvision's InceptionV3
# weights are the port of Google's and expect (x - 0.5) / 0.5; torchvision
# reaches that through ``transform_input=True`` on ImageNet-normalised input,
# which is the same map.  The normalisation is fixed per architecture, with
# or without pretrained weights, so switching weights never changes it.
_NORMALISATION = {
    "mobilenetv2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inceptionv3": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# Smallest input height/width each backbone accepts (pixels).
_MIN_INPUT_SIZE = {"mobilenetv2": 32, "inceptionv3": 75}
# Keys of the torchvision classification models that are not part of the backbone.
_TORCHVISION_HEAD_PREFIXES = {"mobilenetv2": ("classifier.",), "inceptionv3": ("fc.", "AuxLogits.")}


class PatchClassifier(nn.Module):
    """Backbone features + simplified head; returns logits (N, n_classes).

    Attributes: ``arch``, ``n_classes``, ``min_input_size`` (pixels),
    ``backbone`` (the torchvision feature extractor) and ``head``.
    """

    mean: Tensor  # buffers registered in __init__
    std: Tensor

    def __init__(
        self, arch: str, backbone: nn.Module, n_features: int, n_classes: int, dropout: float
    ) -> None:
        super().__init__()
        self.arch = arch
        self.n_classes = n_classes
        self.min_input_size = _MIN_INPUT_SIZE[arch]
        mean, std = _NORMALISATION[arch]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.std_folded = False  # True once 1/std is folded into the first convolution (export)
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(n_features, HEAD_HIDDEN),
            nn.Dropout(dropout),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(HEAD_HIDDEN),
            nn.Linear(HEAD_HIDDEN, n_classes),
        )

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (N, 3, H, W) with H, W >= ``min_input_size``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) RGB batch, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"{self.arch} needs patches of at least {self.min_input_size}x{self.min_input_size} pixels, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (N, n_features) of a [0, 1] RGB batch."""
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            self.check_input(x)
        x = x - self.mean if self.std_folded else (x - self.mean) / self.std
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.backbone(x), 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, n_classes) of a float32 [0, 1] RGB batch (N, 3, H, W)."""
        return self.head(self.features(x))


def fold_input_scale(model: PatchClassifier) -> PatchClassifier:
    """A copy of ``model`` whose division of the input by ``std`` is done by its first convolution
    (weights divided by ``std`` per input channel): the same function — zero padding of the centred
    input is unchanged — with one pass less over every input batch (for export)."""
    folded = copy.deepcopy(model)
    if folded.std_folded:
        return folded
    conv = next((m for m in folded.backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels != 3 or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"cannot fold the input scale into {type(conv).__name__}: not a plain RGB convolution")
    with torch.no_grad():
        conv.weight.div_(folded.std.view(1, 3, 1, 1))
    folded.std_folded = True
    return folded


def _mobilenetv2_backbone() -> tuple[nn.Module, int]:
    """MobileNetV2 feature extractor (randomly initialised) and its output channels."""
    net = tvm.mobilenet_v2(weights=None)
    return net.features, net.last_channel


def _inceptionv3_backbone() -> tuple[nn.Module, int]:
    """InceptionV3 feature extractor without aux logits (random init) and its output channels.

    The layers up to ``Mixed_7c`` in torchvision's order and names, so a
    torchvision state dict (minus ``fc``/``AuxLogits``) loads into it directly.
    """
    net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
    skip = {"avgpool", "dropout", "fc", "AuxLogits"}
    layers = OrderedDict((name, module) for name, module in net.named_children() if name not in skip)
    return nn.Sequential(layers), net.fc.in_features


def _backbone(arch: str) -> tuple[nn.Module, int]:
    """Build the randomly initialised backbone of ``arch``."""
    if arch == "mobilenetv2":
        return _mobilenetv2_backbone()
    return _inceptionv3_backbone()


def _imagenet_weights_enum(arch: str) -> Any:
    """torchvision's ImageNet weights entry for ``arch``."""
    if arch == "mobilenetv2":
        return tvm.MobileNet_V2_Weights.IMAGENET1K_V1
    return tvm.Inception_V3_Weights.IMAGENET1K_V1


def download_imagenet_state_dict(arch: str) -> Mapping[str, Tensor]:
    """torchvision's ImageNet state dict for ``arch`` (from the torch hub cache, else downloaded).

    The only function here that may touch the network; tests replace it.
    """
    return _imagenet_weights_enum(arch).get_state_dict(progress=False)


def backbone_state_dict(arch: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The backbone part of a torchvision-format state dict for ``arch``.

    Accepts a whole torchvision model's state dict (the classification head's
    keys are dropped, MobileNetV2's ``features.`` prefix is removed) or a
    backbone-only one.
    """
    head_prefixes = _TORCHVISION_HEAD_PREFIXES[arch]
    result: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(head_prefixes):
            continue
        if arch == "mobilenetv2" and key.startswith("features."):
            key = key[len("features.") :]
        result[key] = value
    return result


def _random_init_warning(arch: str, reason: str, stacklevel: int = 3) -> None:
    """Warn that ``arch`` is randomly initialised, and why (attributed to ``build_classifier``'s caller)."""
    warnings.warn(
        f"{arch}: no ImageNet weights loaded ({reason}); using random initialisation",
        UserWarning,
        stacklevel=stacklevel,
    )


def _read_state_dict_file(path: Path) -> Mapping[str, Tensor]:
    """Load a state dict saved with ``torch.save``; H2GNetError naming ``path`` if impossible."""
    if not path.is_file():
        raise H2GNetError(path, "weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        problem = f"cannot read weights as a PyTorch state dict ({type(exc).__name__}: {exc})"
        raise H2GNetError(path, problem) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise H2GNetError(path, "not a state dict (a mapping of parameter names to tensors)")
    return state


def _describe_keys(keys: list[str], limit: int = 5) -> str:
    """First ``limit`` keys, comma-separated, with a count of the rest."""
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_backbone_weights(model: PatchClassifier, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Load a torchvision-format state dict into ``model.backbone``, strictly.

    Raises :class:`H2GNetError` naming ``source`` when keys or shapes do not
    match the backbone of ``model.arch``.
    """
    wanted = backbone_state_dict(model.arch, state)
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_describe_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_describe_keys(unexpected)}")
        raise H2GNetError(source, f"not a torchvision {model.arch} state dict; " + "; ".join(parts))
    wrong = sorted(k for k in own if tuple(own[k].shape) != tuple(wanted[k].shape))
    if wrong:
        raise H2GNetError(source, f"tensor shapes do not match {model.arch}: {_describe_keys(wrong)}")
    model.backbone.load_state_dict(wanted, strict=True)


def _load_imagenet(model: PatchClassifier, fetch: Callable[[str], Mapping[str, Tensor]]) -> None:
    """Load ImageNet weights via ``fetch``; on any failure warn and keep random init."""
    try:
        state = fetch(model.arch)
    except Exception as exc:  # noqa: BLE001 - offline machines fail in many ways (URLError, OSError, ...)
        _random_init_warning(model.arch, f"download failed: {type(exc).__name__}: {exc}", stacklevel=4)
        return
    load_backbone_weights(model, state, source=f"torchvision ImageNet weights for {model.arch}")


def build_classifier(
    arch: str = "mobilenetv2",
    n_classes: int = 2,
    weights: str | Path | None = None,
    dropout: float = 0.5,
) -> PatchClassifier:
    """Build a patch classifier; its forward returns logits (N, n_classes).

    ``arch``: "mobilenetv2" or "inceptionv3".
    ``weights``: None -> random initialisation (with a warning); "imagenet" ->
    torchvision's ImageNet weights (downloaded on an online machine; if that
    fails the model stays randomly initialised, with a warning); any other
    value is the path of a torchvision-format state dict for the backbone
    (a whole torchvision model's state dict is fine: its head is ignored).
    The head is always randomly initialised.
    """
    arch = arch.lower()
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    backbone, n_features = _backbone(arch)
    model = PatchClassifier(arch, backbone, n_features, n_classes, dropout)
    if weights is None:
        _random_init_warning(arch, "weights=None")
    elif str(weights).lower() == "imagenet":
        _load_imagenet(model, download_imagenet_state_dict)
    else:
        path = Path(weights)
        load_backbone_weights(model, _read_state_dict_file(path), source=path)
    return model
