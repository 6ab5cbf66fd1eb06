"""GhostNet blocks (Han et al., 2020): YOLOv5's GhostConv, GhostBottleneck and C3Ghost, and the paper's own
bottleneck (GhostModule, GhostNetBottleneck: expanded width, optional SE) that ImageNet GhostNets are made of."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks.csp import CSPBase
from models.blocks.mobilenet import mobilenetv3_args
from models.layers import SE, Conv, DWConv, round_channels
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


class GhostModule(nn.Module):
    """The paper's Ghost module: a 1x1 conv makes half the channels, a 3x3 depthwise conv the other half (ReLU on
    both, or none for the projecting module). Not YOLOv5's GhostConv, whose cheap conv is 5x5."""

    def __init__(self, c1: int, c2: int, relu: bool = True):
        super().__init__()
        c_ = (c2 + 1) // 2
        act = nn.ReLU() if relu else False
        self.c2 = c2
        self.primary = Conv(c1, c_, 1, 1, act=act)
        self.cheap = Conv(c_, c_, 3, 1, g=c_, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        y = torch.cat((y, self.cheap(y)), 1)
        return y[:, :self.c2] if y.shape[1] != self.c2 else y  # odd widths only: no Slice in exported graphs


@register
class GhostNetBottleneck(nn.Module):
    """GhostNet bottleneck (Han et al., 2020), as in the ImageNet GhostNets: Ghost module expanding to `c_mid`,
    a stride-2 depthwise conv when s == 2, an optional SE (ReLU, hard-sigmoid gate, width `se` x c_mid rounded to
    4), a linear Ghost module projecting to c2, plus the input (through depthwise + 1x1 convs when the shape
    changes). Yaml rows: [c2, c_mid, k, s, se]; both widths follow width_multiple."""
    yaml_args = staticmethod(mobilenetv3_args)

    def __init__(self, c1: int, c2: int, c_mid: int, k: int = 3, s: int = 1, se: float = 0.0):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"GhostNetBottleneck stride must be 1 or 2, got {s}")
        self.ghost1 = GhostModule(c1, c_mid, relu=True)
        self.dw = DWConv(c_mid, c_mid, k, s, act=False) if s == 2 else nn.Identity()
        self.se = SE(c_mid, round_channels(c_mid * se, 4), nn.ReLU(), nn.Hardsigmoid()) if se else nn.Identity()
        self.ghost2 = GhostModule(c_mid, c2, relu=False)
        self.shortcut = nn.Identity() if c1 == c2 and s == 1 else \
            nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.dw(self.ghost1(x)))) + self.shortcut(x)
