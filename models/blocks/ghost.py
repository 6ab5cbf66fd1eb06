"""GhostNet blocks (Han et al., 2020) in YOLOv5's layout: GhostConv, GhostBottleneck, C3Ghost."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks.csp import CSPBase
from models.layers import Conv, DWConv
from models.registry import register


@register
class GhostConv(nn.Module):
    """Half the channels from a cheap 5x5 depthwise conv over the other half."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act=True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act=act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


@register
class GhostBottleneck(nn.Module):
    """Ghost bottleneck: GhostConv expand -> (depthwise stride-2) -> GhostConv project, plus shortcut."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1):
        super().__init__()
        c_ = c2 // 2
        self.conv = nn.Sequential(
            GhostConv(c1, c_, 1, 1),
            DWConv(c_, c_, k, s, act=False) if s == 2 else nn.Identity(),
            GhostConv(c_, c2, 1, 1, act=False))
        self.shortcut = nn.Sequential(DWConv(c1, c1, k, s, act=False),
                                      Conv(c1, c2, 1, 1, act=False)) if s == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


@register
class C3Ghost(CSPBase):
    """C3 whose inner blocks are GhostBottlenecks."""

    def make_inner(self, c: int, shortcut: bool, g: int) -> nn.Module:
        return GhostBottleneck(c, c)
