"""EfficientNetV2 blocks (Tan & Le, 2021): FusedMBConv and MBConv with SE and stochastic depth."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import SE, Conv, DropPath, DWConv  # DropPath: old import path
from models.registry import register


@register
class FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2, Tan & Le, 2021): kxk expand conv replaces 1x1 expand + depthwise. One
    activation throughout, SE's squeeze included: Conv's default (SiLU, the paper's, or the yaml's ``activation:``)
    unless `act` says otherwise."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, e: float = 1, se: float = 0, dp: float = 0.0,
                 act=True):
        super().__init__()
        # e == 1: the kxk conv (with activation) writes c2 directly and there is no projection, as in torchvision
        c_ = int(c1 * e) if e != 1 else c2
        self.expand = Conv(c1, c_, k, s, act=act)
        self.se = SE(c_, max(1, int(c1 * se)), act) if se > 0 else nn.Identity()
        self.project = Conv(c_, c2, 1, 1, act=False) if e != 1 else nn.Identity()
        self.add = s == 1 and c1 == c2
        self.drop_path = DropPath(dp) if self.add and dp > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.expand(x)))
        return x + self.drop_path(y) if self.add else y


@register
class MBConv(nn.Module):
    """MBConv (MobileNetV2 inverted residual with SE, Tan & Le, 2019/2021); SE width from the block input. One
    activation throughout, as FusedMBConv."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, e: float = 4, se: float = 0.25, dp: float = 0.0,
                 act=True):
        super().__init__()
        c_ = int(c1 * e)
        self.expand = Conv(c1, c_, 1, 1, act=act) if e != 1 else nn.Identity()
        self.dw = DWConv(c_, c_, k, s, act=act)
        self.se = SE(c_, max(1, int(c1 * se)), act) if se > 0 else nn.Identity()
        self.project = Conv(c_, c2, 1, 1, act=False)
        self.add = s == 1 and c1 == c2
        self.drop_path = DropPath(dp) if self.add and dp > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + self.drop_path(y) if self.add else y
