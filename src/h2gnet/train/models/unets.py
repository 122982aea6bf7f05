"""Refinement networks of the H2G-Net second stage (paper sections 2.5 and 3.2).

Input: NCHW float32; channels 0-2 are the low-resolution RGB slide in [0, 1],
channel 3 (when ``in_channels == 4``) the tumour heatmap in [0, 1].  Every
network returns **logits** (N, n_classes, H, W) at input resolution;
softmax is added at ONNX export.

Deep supervision: ``model(x)`` returns the final logits only (what inference
and export use).  ``model(x, return_aux=True)`` returns a list whose first
element is the final output and whose other elements are the auxiliary
outputs, all as logits upsampled (bilinear) to the input resolution, so a
training loss can compare each of them with the same target:

* ``unet``, ``unet-lr``: ``[final]`` (no auxiliary output);
* ``agunet``, ``dagunet``: ``[final, aux_1, ..., aux_L-2]``, one per coarser
  decoder level, finest first;
* ``doubleunet``: ``[final (network 2), network 1's output]``.

Architectures (defaults are the paper's filters; tests pass smaller ones):

* ``unet``: nine levels {8, 16, 32, 64, 128, 128, 256, 256, 512}; eight
  encoder blocks ((Conv3x3-BN-ReLU) x 2 -> MaxPool), a 512-filter bottom block,
  a symmetric decoder (nearest x2 upsampling, concatenated skip,
  (Conv3x3-BN-ReLU) x 2) and a 1x1 convolution to ``n_classes``.  With a
  1024 x 1024 input the bottom is 4 x 4; sides must be multiples of 256.
* ``unet-lr``: the same U-Net on the RGB image alone (``in_channels = 3``).
* ``agunet`` (Bouget et al. 2021): eight levels {8, ..., 256} (no 512, seven
  poolings, sides multiples of 128); multi-scale input (the input
  average-pooled to each intermediate level, Conv3x3-ReLU, concatenated
  before that level's block), transposed-convolution upsampling, additive
  attention gates (Oktay et al.) on the skips, deep supervision.
* ``dagunet``: as ``agunet`` but with plain (ungated) skips and a DANet dual
  attention head (position + channel self-attention) on the bottom
  features, as in the authors' code.
* ``doubleunet`` (Jha et al. 2020): two stacked U-Nets, each eight pooled
  levels {8, ..., 256} (sides multiples of 256) of (Conv3x3-BN-ReLU) x 2 +
  squeeze-and-excitation, with ASPP (32 filters, see
  ``DOUBLEUNET_ASPP_FILTERS``) as the bottom and bilinear upsampling.
  Network 2 sees the input multiplied by network 1's foreground probability
  (1 - P(class 0), the tumour probability for two classes) and its decoder
  concatenates the skips of both encoders.  Both are trained from scratch:
  the original's ImageNet VGG19 encoder in network 1 is replaced by the same
  block design as network 2, as in H2G-Net.

Every convolution that feeds a BatchNorm has no bias (Keras keeps one);
BatchNorm is plain BatchNorm (the authors used batch renormalisation for
some models).  Spatial dropout (default 0.1, from the authors' code; the
paper does not mention it) follows each decoder convolution, and also each
DoubleU-Net encoder convolution and the DAGU-Net attention head.

Run ``python -m h2gnet.train.models.unets`` for the parameter-count table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from h2gnet.train.config import REFINER_ARCHS
from h2gnet.train.models.blocks import ASPP, AttentionGate, DoubleConv, DualAttention, SqueezeExcite
from h2gnet.train.models.common import keras_style_count, parameter_count

ARCHS = REFINER_ARCHS
UNET_FILTERS = (8, 16, 32, 64, 128, 128, 256, 256, 512)
EIGHT_LEVEL_FILTERS = UNET_FILTERS[:-1]
# The paper's text says "42 atrous spatial pyramid pooling filters", but the
# authors' training code uses 32, and only 32 reproduces the paper's 16.04M
# parameter count when counted as Keras does (42 gives 16.24M): 42 is taken to be a typo.
DOUBLEUNET_ASPP_FILTERS = 32
# Parameter counts reported in the paper (section 3.2): Keras "Total params".
PAPER_PARAMETERS = {"unet": 11.58e6, "agunet": 7.68e6, "dagunet": 9.99e6, "doubleunet": 16.04e6}
# Whether the authors' Keras models used batch renormalisation (which adds
# non-trainable variables to Keras' count); from their training code.
_AUTHORS_USED_RENORM = {"unet": True, "unet-lr": True, "agunet": True, "dagunet": False, "doubleunet": True}


class Refiner(nn.Module):
    """Base class: shape checks and the attributes export and training rely on.

    Attributes: ``arch``, ``in_channels``, ``n_classes``, ``size_multiple``
    (input height and width must be multiples of it; it is also the smallest
    allowed size) and ``has_aux`` (whether ``return_aux`` yields auxiliary outputs).
    """

    def __init__(
        self, arch: str, in_channels: int, n_classes: int, size_multiple: int, *, has_aux: bool
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.arch = arch
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.size_multiple = size_multiple
        self.has_aux = has_aux

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``height`` and ``width`` are multiples of ``size_multiple``."""
        m = self.size_multiple
        if height < m or width < m or height % m or width % m:
            raise ValueError(
                f"{self.arch}: input height and width must be multiples of {m} (2 ** number of poolings); "
                f"the smallest allowed input is {m}x{m}, got {height}x{width}"
            )

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (N, in_channels, H, W) with a valid H, W."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.arch}: expected an (N, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}"
            )
        self.check_size(int(x.shape[-2]), int(x.shape[-1]))

    def _validate(self, x: Tensor) -> None:
        """Check ``x`` unless tracing for export (the shapes are then checked by the exporter)."""
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            self.check_input(x)


def _check_filters(filters: Sequence[int], min_levels: int) -> tuple[int, ...]:
    """Validate a filter list (positive ints, at least ``min_levels``) and return it as a tuple."""
    result = tuple(int(f) for f in filters)
    if len(result) < min_levels or any(f < 1 for f in result):
        raise ValueError(f"filters must be at least {min_levels} positive integers, got {list(filters)}")
    return result


def _upsample_to(x: Tensor, reference: Tensor) -> Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``reference`` (no-op if equal)."""
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class UNet(Refiner):
    """The paper's U-Net: ``len(filters)`` levels, the last one the bottom block.

    Encoder level i: DoubleConv(filters[i]) -> MaxPool 2x2 (skip taken before
    pooling); bottom: DoubleConv(filters[-1]); decoder level i: nearest x2
    upsampling, concat skip i, DoubleConv(filters[i]) with spatial dropout
    ``dropout`` (0.1, as in the authors' code); 1x1 conv to ``n_classes``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        n_classes: int = 2,
        filters: Sequence[int] = UNET_FILTERS,
        dropout: float = 0.1,
        arch: str = "unet",
    ) -> None:
        filters = _check_filters(filters, 2)
        super().__init__(arch, in_channels, n_classes, 2 ** (len(filters) - 1), has_aux=False)
        self.filters = filters
        self.encoder = nn.ModuleList()
        channels = in_channels
        for f in filters[:-1]:
            self.encoder.append(DoubleConv(channels, f))
            channels = f
        self.bottom = DoubleConv(channels, filters[-1])
        channels = filters[-1]
        self.decoder = nn.ModuleList()
        for f in reversed(filters[:-1]):
            self.decoder.append(DoubleConv(channels + f, f, dropout))
            channels = f
        self.classify = nn.Conv2d(channels, n_classes, 1)

    def forward(self, x: Tensor, *, return_aux: bool = False) -> Tensor | list[Tensor]:
        """Logits (N, n_classes, H, W); ``[logits]`` if ``return_aux``."""
        self._validate(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([skip, F.interpolate(x, scale_factor=2.0, mode="nearest")], dim=1))
        logits = self.classify(x)
        return [logits] if return_aux else logits


class _MultiScaleEncoder(nn.Module):
    """Encoder with multi-scale input (AGU-Net/DAGU-Net).

    Level 0 is a DoubleConv on the input.  Each intermediate level i
    average-pools the input by 2**i, maps it with Conv3x3-ReLU to filters[i]
    channels, concatenates that to the max-pooled features of level i - 1 and
    applies DoubleConv(filters[i]).  The last level (the bottom) is a
    DoubleConv on the max-pooled features alone, as in the authors' code.
    ``forward`` returns the per-level outputs (before pooling).
    """

    def __init__(self, in_channels: int, filters: tuple[int, ...]) -> None:
        super().__init__()
        inner = filters[1:-1]
        self.pyramid = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, f, 3, padding=1), nn.ReLU(inplace=True)) for f in inner
        )
        self.first = DoubleConv(in_channels, filters[0])
        self.blocks = nn.ModuleList(
            DoubleConv(filters[i] + filters[i + 1], filters[i + 1]) for i in range(len(inner))
        )
        self.bottom = DoubleConv(filters[-2], filters[-1])

    def forward(self, x: Tensor) -> list[Tensor]:
        """Outputs of every level, finest first (the last is the bottom)."""
        outputs = [self.first(x)]
        scaled = x
        for pyramid, block in zip(self.pyramid, self.blocks, strict=True):
            scaled = F.avg_pool2d(scaled, 2)
            outputs.append(block(torch.cat([pyramid(scaled), F.max_pool2d(outputs[-1], 2)], dim=1)))
        outputs.append(self.bottom(F.max_pool2d(outputs[-1], 2)))
        return outputs


class _UpBlock(nn.Module):
    """Decoder level of AGU-Net/DAGU-Net.

    ConvTranspose 3x3 stride 2 -> BN -> ReLU to ``out_channels``; the skip is
    passed through an attention gate (if ``gated``), concatenated, and a
    DoubleConv with spatial dropout follows.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, *, gated: bool, dropout: float
    ) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(
                in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.gate = AttentionGate(out_channels, skip_channels, out_channels // 2) if gated else None
        self.conv = DoubleConv(out_channels + skip_channels, out_channels, dropout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Upsample ``x`` by 2 and merge it with ``skip``."""
        x = self.up(x)
        if self.gate is not None:
            skip = self.gate(x, skip)
        return self.conv(torch.cat([x, skip], dim=1))


class AttentionUNet(Refiner):
    """AGU-Net (``dual_attention=False``) or DAGU-Net (``dual_attention=True``).

    Both: multi-scale input encoder over ``len(filters)`` levels (the last is
    the bottom), transposed-convolution decoder, deep supervision (a 1x1
    convolution to ``n_classes`` after every decoder level).  AGU-Net gates
    the skips with additive attention; DAGU-Net keeps plain skips and puts a
    DANet dual attention head (position + channel) on the bottom features.
    """

    def __init__(
        self,
        in_channels: int = 4,
        n_classes: int = 2,
        filters: Sequence[int] = EIGHT_LEVEL_FILTERS,
        dropout: float = 0.1,
        *, dual_attention: bool = False,
    ) -> None:
        filters = _check_filters(filters, 2)
        arch = "dagunet" if dual_attention else "agunet"
        super().__init__(arch, in_channels, n_classes, 2 ** (len(filters) - 1), has_aux=True)
        self.filters = filters
        self.encoder = _MultiScaleEncoder(in_channels, filters)
        self.bottom_attention = DualAttention(filters[-1], dropout) if dual_attention else nn.Identity()
        self.decoder = nn.ModuleList()
        channels = filters[-1]
        for f in reversed(filters[:-1]):
            self.decoder.append(_UpBlock(channels, f, f, gated=not dual_attention, dropout=dropout))
            channels = f
        self.heads = nn.ModuleList(nn.Conv2d(f, n_classes, 1) for f in reversed(filters[:-1]))

    def forward(self, x: Tensor, *, return_aux: bool = False) -> Tensor | list[Tensor]:
        """Final logits (N, n_classes, H, W); with ``return_aux`` the list [final, aux...] (finest first)."""
        self._validate(x)
        levels = self.encoder(x)
        y = self.bottom_attention(levels[-1])
        decoded = []
        for block, skip in zip(self.decoder, reversed(levels[:-1]), strict=True):
            y = block(y, skip)
            decoded.append(y)
        if not return_aux:
            return self.heads[-1](decoded[-1])
        outputs = [_upsample_to(head(d), x) for head, d in zip(self.heads, decoded, strict=True)]
        return outputs[::-1]


class _SEBlock(nn.Sequential):
    """DoubleU-Net block: (Conv3x3-BN-ReLU) x 2 with spatial dropout, then squeeze-and-excitation."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(DoubleConv(in_channels, out_channels, dropout), SqueezeExcite(out_channels))


class _SEUNet(nn.Module):
    """One of DoubleU-Net's two U-Nets.

    Encoder: ``len(filters)`` SE blocks each followed by 2x2 max pooling; ASPP
    at the bottom; decoder: bilinear x2 upsampling, concatenation of the skip
    of this encoder and of ``extra_skips`` (network 1's, for network 2), SE block.
    """

    def __init__(
        self, in_channels: int, filters: tuple[int, ...], aspp_filters: int, *, extra_skips: bool, dropout: float
    ) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        channels = in_channels
        for f in filters:
            self.encoder.append(_SEBlock(channels, f, dropout))
            channels = f
        self.aspp = ASPP(channels, aspp_filters, dropout=dropout)
        channels = aspp_filters
        self.decoder = nn.ModuleList()
        for f in reversed(filters):
            skip_channels = 2 * f if extra_skips else f
            self.decoder.append(_SEBlock(channels + skip_channels, f, dropout))
            channels = f
        self.out_channels = channels

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Bottom features (after ASPP) and the skips, finest first."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return self.aspp(x), skips

    def decode(self, x: Tensor, skips: list[Tensor], other_skips: list[Tensor] | None = None) -> Tensor:
        """Decoder features at input resolution."""
        for index, block in enumerate(self.decoder):
            level = len(skips) - 1 - index
            parts = [F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), skips[level]]
            if other_skips is not None:
                parts.append(other_skips[level])
            x = block(torch.cat(parts, dim=1))
        return x


class DoubleUNet(Refiner):
    """DoubleU-Net (Jha et al. 2020) with the paper's filters, trained from scratch.

    Network 1 maps the input to logits ``out1``; network 2 sees
    ``input * (1 - softmax(out1)[:, 0])`` (the foreground probability; the
    tumour probability for two classes) and its decoder also concatenates
    network 1's encoder skips.  The final output is network 2's logits.
    """

    def __init__(
        self,
        in_channels: int = 4,
        n_classes: int = 2,
        filters: Sequence[int] = EIGHT_LEVEL_FILTERS,
        aspp_filters: int = DOUBLEUNET_ASPP_FILTERS,
        dropout: float = 0.1,
    ) -> None:
        filters = _check_filters(filters, 1)
        super().__init__("doubleunet", in_channels, n_classes, 2 ** len(filters), has_aux=True)
        self.filters = filters
        self.aspp_filters = aspp_filters
        self.net1 = _SEUNet(in_channels, filters, aspp_filters, extra_skips=False, dropout=dropout)
        self.head1 = nn.Conv2d(self.net1.out_channels, n_classes, 1)
        self.net2 = _SEUNet(in_channels, filters, aspp_filters, extra_skips=True, dropout=dropout)
        self.head2 = nn.Conv2d(self.net2.out_channels, n_classes, 1)

    def forward(self, x: Tensor, *, return_aux: bool = False) -> Tensor | list[Tensor]:
        """Network 2's logits; with ``return_aux`` the list [network 2's, network 1's]."""
        self._validate(x)
        bottom1, skips1 = self.net1.encode(x)
        out1 = self.head1(self.net1.decode(bottom1, skips1))
        foreground = 1.0 - torch.softmax(out1, dim=1)[:, :1]
        bottom2, skips2 = self.net2.encode(x * foreground)
        out2 = self.head2(self.net2.decode(bottom2, skips2, skips1))
        return [out2, out1] if return_aux else out2


def build_refiner(
    arch: str,
    in_channels: int | None = None,
    n_classes: int = 2,
    *,
    filters: Sequence[int] | None = None,
    dropout: float = 0.1,
    aspp_filters: int = DOUBLEUNET_ASPP_FILTERS,
) -> Refiner:
    """Build a refinement network; its forward returns logits (N, n_classes, H, W).

    ``arch``: one of "unet", "agunet", "dagunet", "doubleunet", "unet-lr".
    ``in_channels``: 4 (RGB + heatmap) by default; "unet-lr" takes 3 (RGB only)
    and rejects any other value.  ``filters``: per-level filters, default the
    paper's (nine levels for U-Net, eight for the others); fewer levels allow
    smaller inputs (tests).  ``dropout``: spatial dropout in the decoder (and
    DoubleU-Net encoder/ASPP, DAGU-Net attention head).  ``aspp_filters``:
    DoubleU-Net only.  The input height and width must be multiples of
    ``model.size_multiple``.
    """
    arch = arch.lower()
    if arch not in ARCHS:
        raise ValueError(f"unknown refiner architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if arch == "unet-lr":
        if in_channels not in (None, 3):
            raise ValueError(f"unet-lr takes the RGB image alone: in_channels must be 3, not {in_channels}")
        return UNet(3, n_classes, filters or UNET_FILTERS, dropout, arch="unet-lr")
    channels = 4 if in_channels is None else in_channels
    if arch == "unet":
        return UNet(channels, n_classes, filters or UNET_FILTERS, dropout)
    if arch in ("agunet", "dagunet"):
        dual = arch == "dagunet"
        filters = filters or EIGHT_LEVEL_FILTERS
        return AttentionUNet(channels, n_classes, filters, dropout, dual_attention=dual)
    return DoubleUNet(channels, n_classes, filters or EIGHT_LEVEL_FILTERS, aspp_filters, dropout)


def keras_equivalent_count(model: nn.Module, *, batch_renorm: bool) -> int:
    """Our model's size as the authors' Keras code would count it ("Total params").

    Keras convolutions keep their bias in front of BatchNorm (ours drop it:
    one value per BatchNorm channel), Keras counts BatchNorm moving mean and
    variance, and TF 1.13's batch renormalisation adds a renorm mean and
    standard deviation per channel plus two scalar weights per layer.
    """
    total = keras_style_count(model)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            total += module.num_features
            if batch_renorm:
                total += 2 * module.num_features + 2
    return total


def parameter_table() -> list[tuple[str, int, int, float | None]]:
    """(arch, our parameters, our Keras-equivalent count, paper's figure) for every default refiner."""
    rows = []
    for arch in ARCHS:
        model = build_refiner(arch)
        keras = keras_equivalent_count(model, batch_renorm=_AUTHORS_USED_RENORM[arch])
        rows.append((arch, parameter_count(model), keras, PAPER_PARAMETERS.get(arch)))
    return rows


def format_parameter_table(rows: list[tuple[str, int, int, float | None]]) -> str:
    """Render :func:`parameter_table` rows as aligned text (millions of parameters)."""
    lines = [f"{'arch':<11} {'ours (M)':>9} {'ours, Keras-counted (M)':>24} {'paper (M)':>10}"]
    for arch, ours, keras, paper in rows:
        paper_text = f"{paper / 1e6:.2f}" if paper is not None else "-"
        lines.append(f"{arch:<11} {ours / 1e6:>9.3f} {keras / 1e6:>24.3f} {paper_text:>10}")
    return "\n".join(lines)


def main() -> None:
    """Print the parameter-count table of the default refiners."""
    print(format_parameter_table(parameter_table()))


if __name__ == "__main__":
    main()
