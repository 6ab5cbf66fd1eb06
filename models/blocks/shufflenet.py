"""ShuffleNetV2 unit and its /4 stem (Ma et al., 2018)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks.conv import Conv, DWConv
from models.registry import register


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave channel groups so information crosses the two branches (ShuffleNet, Zhang et al., 2018).
    A gather of channels rather than view-transpose-reshape: the same permutation, about 2x faster on
    channels_last tensors, and one ONNX Gather instead of three ops (fewer layout transposes in INT8 graphs)."""
    c = x.shape[1]
    order = torch.arange(c, device=x.device).view(groups, c // groups).t().reshape(-1)
    return x.index_select(1, order)


@register
class conv_bn_relu_maxpool(nn.Module):  # noqa: N801  (the name ShuffleNetV2 yamls use)
    """ShuffleNetV2 stem (Ma et al., 2018): 3x3 stride-2 conv, BN, ReLU, then 3x3 stride-2 max-pool (/4)."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.conv = Conv(c1, c2, 3, 2, act=nn.ReLU())
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


@register
class ShuffleNetV2_Block(nn.Module):  # noqa: N801
    """ShuffleNetV2 unit (Ma et al., 2018): split (or copy at stride 2), transform one half, concat, shuffle."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, s: int = 1):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"ShuffleNetV2_Block stride must be 1 or 2, got {s}")
        if c2 % 2:
            raise ValueError(f"ShuffleNetV2_Block needs an even output width to split in two, got {c2}")
        if s == 1 and c1 != c2:
            raise ValueError(f"a stride-1 ShuffleNetV2_Block keeps its width: input {c1} != output {c2}")
        c_ = c2 // 2
        self.s = s
        if s == 2:
            self.branch1 = nn.Sequential(DWConv(c1, c1, 3, s, act=False), Conv(c1, c_, 1, 1, act=nn.ReLU()))
        else:
            self.branch1 = nn.Identity()  # stride 1: the left half passes through untouched
        c_in = c1 if s == 2 else c_
        self.branch2 = nn.Sequential(Conv(c_in, c_, 1, 1, act=nn.ReLU()),
                                     DWConv(c_, c_, 3, s, act=False),
                                     Conv(c_, c_, 1, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1) if self.s == 1 else (x, x)
        return channel_shuffle(torch.cat((self.branch1(x1), self.branch2(x2)), 1), 2)


register(ShuffleNetV2_Block, name="Shuffle_Block")  # the name YOLOv5-Lite style yamls use
