"""Channel and spatial attention: CBAM (Woo et al., 2018); squeeze-and-excitation (Hu et al., 2018) lives in
models.layers and is re-exported here."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import SE, block_act, keep_channels  # SE and keep_channels: old import path
from models.registry import register


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al., 2018): a shared MLP over avg- and max-pooled descriptors; the MLP's
    activation is the paper's ReLU unless `act` or the yaml's ``activation:`` says otherwise."""

    def __init__(self, c1: int, r: int = 16, act=None):
        super().__init__()
        c_ = max(1, c1 // r)
        self.mlp = nn.Sequential(nn.Conv2d(c1, c_, 1, bias=False), block_act(act, nn.ReLU()),
                                 nn.Conv2d(c_, c1, 1, bias=False))

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

    def __init__(self, c1: int, r: int = 16, k: int = 7, act=None):
        super().__init__()
        self.channel = ChannelAttention(c1, r, act)
        self.spatial = SpatialAttention(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
