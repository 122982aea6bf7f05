"""The VGG16 feature network of cluster guiding (paper section 2.3): 512-d globally average-pooled
features of the convolutional stack, ImageNet weights when the user has them, else seeded random ones."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from h2gnet.errors import H2GNetError

EXTRACTOR_NAME = "vgg16-features-gap512"
RANDOM_PREFIX = "random(seed="  # weights_source of a randomly initialised extractor: "random(seed=N)"

# torchvision's VGG16 "D" configuration: conv widths, "M" = 2x2 max-pool.  Written out
# here (same module indices as torchvision's ``vgg16().features``, so its state dicts
# load) to avoid building and initialising the unused 120M-parameter classifier.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomFeaturesWarning(UserWarning):
    """The clustering feature extractor has no pretrained weights."""


# --------------------------------------------------------------------------- feature extractor


def _vgg16_conv_stack() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """VGG16 convolutional features + global average pooling: (N, 3, H, W) → (N, 512).

    Input is float32 RGB in [0, 1]; ImageNet mean/std normalisation is done
    inside.  ``weights_source`` records where the weights came from
    ("imagenet", "random(seed=N)" or a file path) and is saved with the clustering.
    The module is frozen (no gradients, always in eval mode).
    """

    mean: Tensor  # buffers registered in __init__
    std: Tensor

    name = EXTRACTOR_NAME

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_conv_stack()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.weights_source = f"{RANDOM_PREFIX}unknown)"  # set by vgg16_features
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:  # noqa: ARG002, FBT001, FBT002 - overrides nn.Module.train: frozen, always eval
        """Stay in eval mode whatever a parent module asks."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) RGB images in [0, 1] -> (N, 512) globally average-pooled features."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        x = (images.float() - self.mean) / self.std
        return self.features(x).mean(dim=(2, 3))


def _load_features_state(module: VGG16Features, state: dict[str, Tensor], source: str | Path) -> None:
    """Load the ``features.*`` entries of a torchvision VGG16 (or our own) state dict."""
    nested = state.get("state_dict")
    if isinstance(nested, dict):
        state = nested
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise H2GNetError(source, "not a VGG16 state dict (no 'features.*' entries)")
    try:
        module.features.load_state_dict(features, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()[1:] if line.strip()]
        detail = (lines[0] if lines else str(exc).strip() or type(exc).__name__)[:200]
        raise H2GNetError(source, f"weights do not fit VGG16 features ({detail})") from None


def _warn_random(reason: str) -> None:
    warnings.warn(
        f"no ImageNet weights for the VGG16 feature extractor ({reason}); "
        "clustering runs on random features, so clusters will not reflect tissue types",
        RandomFeaturesWarning,
        stacklevel=3,
    )


def _seeded_vgg16(seed: int) -> VGG16Features:
    """A randomly initialised extractor, identical for the same seed; the global torch RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = VGG16Features()
    module.weights_source = f"{RANDOM_PREFIX}{seed})"
    return module


def vgg16_features(weights: str | Path | None, *, random_seed: int = 0) -> VGG16Features:
    """Build the frozen VGG16 feature extractor used for clustering.

    Args:
        weights: ``None`` for random initialisation (warns with
            :class:`RandomFeaturesWarning`); ``"imagenet"`` for torchvision's
            ``VGG16_Weights.IMAGENET1K_V1`` (taken from the torch hub cache or
            downloaded; if that fails, warns and falls back to random); or a
            path to a saved state dict (torchvision ``vgg16`` or this module's).
        random_seed: seed of the random initialisation.  Random weights are
            recorded as ``"random(seed=N)"`` so the very same network can be
            rebuilt when the clustering is used for training.

    Raises:
        H2GNetError: the weights file is missing, unreadable or does not fit.
    """
    module = _seeded_vgg16(random_seed)
    if weights is None:
        _warn_random("weights=None")
        return module
    if str(weights) == "imagenet":
        from torchvision.models import VGG16_Weights

        try:
            state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except (OSError, RuntimeError, ValueError) as exc:  # offline, partial download, bad hash
            _warn_random(f"could not obtain torchvision's ImageNet weights: {exc}")
            return module
        _load_features_state(module, state, "torchvision VGG16_Weights.IMAGENET1K_V1")
        module.weights_source = "imagenet"
        return module
    path = Path(weights)
    if not path.is_file():
        raise H2GNetError(path, "VGG16 weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, runtime)
        raise H2GNetError(path, f"not a readable PyTorch state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise H2GNetError(path, "not a state dict (expected a mapping of parameter names to tensors)")
    _load_features_state(module, state, path)
    module.weights_source = str(path)
    return module
