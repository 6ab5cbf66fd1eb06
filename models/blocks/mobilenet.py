"""MobileNet blocks: depthwise-separable conv (V1, Howard et al., 2017), inverted residual with linear bottleneck
(V2, Sandler et al., 2018) and the V3 block with hard-swish and a hard-sigmoid SE gate (Howard et al., 2019)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import SE, Conv, DWConv, block_act, round_channels  # round_channels: old path
from models.registry import Row, YamlError, channels, register


@register
class DWSConv(nn.Module):
    """Depthwise-separable conv (MobileNetV1, Howard et al., 2017): kxk depthwise then 1x1 pointwise. Both take
    Conv's default activation (SiLU, or the yaml's ``activation:``) unless `act` says otherwise."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act: nn.Module | bool = True):
        super().__init__()
        self.dw = DWConv(c1, c1, k, s, act=act)
        self.pw = Conv(c1, c2, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


@register
class MobileNetV2_Block(nn.Module):
    """Inverted residual with linear bottleneck (MobileNetV2, Sandler et al., 2018). Expand and depthwise convs use
    ReLU (the paper's ReLU6 without the cap; torchvision uses ReLU6) unless `act` or the yaml's ``activation:``
    says otherwise; the projection stays linear, as the paper requires."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, s: int = 1, t: float = 1, act=None):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"MobileNetV2_Block stride must be 1 or 2, got {s}")
        act = block_act(act, nn.ReLU())
        c_ = int(round(c1 * t))
        self.expand = Conv(c1, c_, 1, 1, act=act) if t != 1 else nn.Identity()
        self.dw = DWConv(c_, c_, 3, s, act=act)
        self.project = Conv(c_, c2, 1, 1, act=False)  # linear bottleneck: no activation on the narrow output
        self.add = s == 1 and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.add else y


@register
class conv_bn_hswish(nn.Module):  # the lower-case name is the one MobileNetV3 yamls use
    """MobileNetV3 stem (Howard et al., 2019): 3x3 conv, BN, hard-swish. The paper fixes hard-swish here, so the
    yaml's ``activation:`` key does not reach it."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, s: int = 2):
        super().__init__()
        self.conv = Conv(c1, c2, 3, s, act=nn.Hardswish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def mobilenetv3_args(row: Row):
    """Rows are [c2, c_exp, k, s, se, hs]: both the output and the expanded width follow width_multiple."""
    if len(row.args) < 2:
        raise YamlError("MobileNetV3_Block needs [c2, c_exp, (k, s, se, hs)]")
    args, c2, n = channels(row)  # [c1, c2, c_exp, ...]
    args[2] = row.scale_width(args[2])
    return args, c2, n


@register
class MobileNetV3_Block(nn.Module):
    """MobileNetV3 bottleneck (Howard et al., 2019): 1x1 expand, kxk depthwise, optional SE, linear 1x1 project.
    The activation is the paper's per-layer schedule, set by the row's `hs` flag (hard-swish, else ReLU), and the
    SE is ReLU + hard-sigmoid: the paper fixes both, so the yaml's ``activation:`` key does not reach this block."""
    yaml_args = staticmethod(mobilenetv3_args)

    def __init__(self, c1: int, c2: int, c_exp: int, k: int = 3, s: int = 1, se: bool = False, hs: bool = False):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"MobileNetV3_Block stride must be 1 or 2, got {s}")
        act = nn.Hardswish() if hs else nn.ReLU()
        # torchvision skips the expansion when it would not change the width
        self.expand = Conv(c1, c_exp, 1, 1, act=act) if c_exp != c1 else nn.Identity()
        self.dw = DWConv(c_exp, c_exp, k, s, act=act)
        self.se = SE(c_exp, round_channels(c_exp // 4, 8), nn.ReLU(), nn.Hardsigmoid()) if se else nn.Identity()
        self.project = Conv(c_exp, c2, 1, 1, act=False)
        self.add = s == 1 and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.add else y
