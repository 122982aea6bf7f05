"""Building blocks shared by the refinement networks (PyTorch, training extra).

All blocks work on NCHW tensors and keep the spatial size unless their name
says otherwise.  Convolutions that feed a BatchNorm carry no bias (the
BatchNorm shift makes it redundant).  Every reshape uses ``flatten``/
``reshape_as`` so the ONNX graph keeps a dynamic batch dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
) -> nn.Sequential:
    """Convolution ("same" padding, no bias) -> BatchNorm -> ReLU."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> BN -> ReLU) x 2, with optional spatial dropout after each ReLU.

    The encoder/decoder block of every refinement network in H2G-Net
    (paper section 3.2).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for index in range(2):
            layers.extend(conv_bn_relu(in_channels if index == 0 else out_channels, out_channels))
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel re-weighting (Hu et al. 2018), reduction ``ratio``.

    Implemented with 1x1 convolutions on the pooled (N, C, 1, 1) tensor, so no
    reshape is needed and channels-last tensors stay channels-last.
    """

    def __init__(self, channels: int, ratio: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.squeeze = nn.Conv2d(channels, hidden, 1, bias=False)
        self.excite = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` by a learnt gate in (0, 1)."""
        weights = F.adaptive_avg_pool2d(x, 1)
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(weights))))
        return x * weights


def _conv1x1_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 convolution (no bias) -> BatchNorm."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018).

    ``gate`` (the upsampled decoder features) and ``skip`` (the encoder
    features) have the same spatial size.  Each is projected by a 1x1
    convolution + BN to ``inter_channels``; the sum goes through ReLU, a 1x1
    convolution to one channel, BN and a sigmoid, giving a per-pixel weight in
    (0, 1) that multiplies ``skip``.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        inter_channels = max(1, inter_channels)
        self.project_gate = _conv1x1_bn(gate_channels, inter_channels)
        self.project_skip = _conv1x1_bn(skip_channels, inter_channels)
        self.psi = _conv1x1_bn(inter_channels, 1)

    def attention_map(self, gate: Tensor, skip: Tensor) -> Tensor:
        """The (N, 1, H, W) weights in (0, 1) that the gate applies to ``skip``."""
        return torch.sigmoid(self.psi(F.relu(self.project_gate(gate) + self.project_skip(skip))))

    def forward(self, gate: Tensor, skip: Tensor) -> Tensor:
        """``skip`` weighted pixel-wise by the attention map."""
        return skip * self.attention_map(gate, skip)


class PositionAttention(nn.Module):
    """Position (spatial) self-attention module of DANet (Fu et al. 2019).

    Every pixel becomes ``x + gamma * sum_j softmax_j(q_i . k_j) v_j`` with
    query/key projections to ``channels // 8`` and ``gamma`` initialised to 0,
    so at initialisation the module is the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = max(1, channels // 8)
        self.query = nn.Conv2d(channels, reduced, 1)
        self.key = nn.Conv2d(channels, reduced, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """Apply spatial self-attention; output has the shape of ``x``."""
        query = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        key = self.key(x).flatten(2)  # (N, C', HW)
        value = self.value(x).flatten(2)  # (N, C, HW)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (N, HW, HW)
        out = torch.bmm(value, attention.transpose(1, 2))  # (N, C, HW)
        return x + self.gamma * out.reshape_as(x)


class ChannelAttention(nn.Module):
    """Channel self-attention module of DANet (Fu et al. 2019).

    Channel affinities ``A A^T`` (over all pixels) are turned into weights by
    a softmax of ``max - energy`` (DANet's stabilised form); the output is
    ``x + gamma * weights @ x`` with ``gamma`` initialised to 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """Apply channel self-attention; output has the shape of ``x``."""
        flat = x.flatten(2)  # (N, C, HW)
        energy = torch.bmm(flat, flat.transpose(1, 2))  # (N, C, C)
        energy = energy.amax(dim=-1, keepdim=True) - energy
        attention = torch.softmax(energy, dim=-1)
        out = torch.bmm(attention, flat)
        return x + self.gamma * out.reshape_as(x)


class DualAttention(nn.Module):
    """DANet-style dual attention head: position and channel branches, summed.

    Each branch is ``attention -> Conv3x3-BN-ReLU -> Dropout2d -> Conv3x3``;
    the sum of both goes through Dropout2d and a 1x1 Conv-BN-ReLU fusion.
    Channels in = channels out.
    """

    def __init__(self, channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.position = nn.Sequential(
            PositionAttention(channels),
            conv_bn_relu(channels, channels),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.channel = nn.Sequential(
            ChannelAttention(),
            conv_bn_relu(channels, channels),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.fuse = nn.Sequential(nn.Dropout2d(dropout), conv_bn_relu(channels, channels, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        """Sum of the position- and channel-attention branches, fused."""
        return self.fuse(self.position(x) + self.channel(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3, as used in DoubleU-Net).

    Five parallel branches with ``filters`` channels each: image pooling
    (global average -> 1x1 conv -> ReLU, broadcast back), a 1x1 conv and
    three 3x3 convs with dilation 6, 12 and 18 (Conv-BN-ReLU); concatenated and
    projected by a 1x1 Conv-BN-ReLU to ``filters`` channels.  The pooling
    branch has a bias instead of BatchNorm so that training with a batch of one
    works (BatchNorm over a single value per channel is undefined).
    """

    def __init__(
        self, in_channels: int, filters: int, dilations: tuple[int, ...] = (6, 12, 18), dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.pool_conv = nn.Conv2d(in_channels, filters, 1)
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, filters, kernel_size=1)]
            + [conv_bn_relu(in_channels, filters, kernel_size=3, dilation=rate) for rate in dilations]
        )
        n_branches = len(dilations) + 2
        self.project = nn.Sequential(
            conv_bn_relu(filters * n_branches, filters, kernel_size=1), nn.Dropout2d(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Multi-rate context features with ``filters`` channels, same H and W as ``x``."""
        pooled = F.relu(self.pool_conv(F.adaptive_avg_pool2d(x, 1)))
        outputs = [pooled.expand(-1, -1, x.shape[-2], x.shape[-1])]
        outputs.extend(branch(x) for branch in self.branches)
        return self.project(torch.cat(outputs, dim=1))
