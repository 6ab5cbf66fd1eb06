"""Channel and spatial attention: squeeze-and-excitation (Hu et al., 2018) and CBAM (Woo et al., 2018)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks.conv import make_act
from models.registry import Row, register, single_input


def keep_channels(row: Row):
    """Attention rows are [*options]: the block is built as (c1, *options) and keeps c1 channels."""
    c1 = single_input(row)
    return [c1, *row.args], c1, row.n


@register
class SE(nn.Module):
    """Squeeze-and-excitation gate (Hu et al., 2018): global pool -> 1x1 squeeze -> act -> 1x1 excite -> gate."""
    yaml_args = staticmethod(keep_channels)

    def __init__(self, c1: int, c_sq: int | float = 0.25, act: nn.Module | None = None, gate: nn.Module | None = None):
        super().__init__()
        # c_sq is a width when >= 1, else a ratio of c1 (yaml rows write [0.25])
        c_ = int(c_sq) if c_sq >= 1 else max(1, int(c1 * c_sq))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c1, c_, 1)
        self.act = make_act(act if act is not None else nn.ReLU())
        self.fc2 = nn.Conv2d(c_, c1, 1)
        self.gate = make_act(gate if gate is not None else nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al., 2018): a shared MLP over avg- and max-pooled descriptors."""

    def __init__(self, c1: int, r: int = 16):
        super().__init__()
        c_ = max(1, c1 // r)
        self.mlp = nn.Sequential(nn.Conv2d(c1, c_, 1, bias=False), nn.ReLU(), nn.Conv2d(c_, c1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean((2, 3), keepdim=True))
        mx = self.mlp(x.amax((2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al., 2018): kxk conv over channel-wise mean and max maps."""

    def __init__(self, k: int = 7):
        super().__init__()
        if k not in (3, 7):
            raise ValueError(f"SpatialAttention kernel must be 3 or 7, got {k}")
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)
        return x * torch.sigmoid(self.conv(desc))


@register
class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al., 2018): channel attention, then spatial attention."""
    yaml_args = staticmethod(keep_channels)

    def __init__(self, c1: int, r: int = 16, k: int = 7):
        super().__init__()
        self.channel = ChannelAttention(c1, r)
        self.spatial = SpatialAttention(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
