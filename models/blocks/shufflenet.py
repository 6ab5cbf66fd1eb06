"""ShuffleNetV2 unit and its /4 stem (Ma et al., 2018)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import Conv, DWConv, block_act, channel_shuffle  # channel_shuffle: old path
from models.registry import register


@register
class conv_bn_relu_maxpool(nn.Module):  # the name ShuffleNetV2 yamls use
    """ShuffleNetV2 stem (Ma et al., 2018): 3x3 stride-2 conv, BN, ReLU, then 3x3 stride-2 max-pool (/4). ReLU
    unless `act` or the yaml's ``activation:`` says otherwise (the name is the one YOLOv5-Lite yamls use)."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, act=None):
        super().__init__()
        self.conv = Conv(c1, c2, 3, 2, act=block_act(act, nn.ReLU()))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


@register
class ShuffleNetV2_Block(nn.Module):
    """ShuffleNetV2 unit (Ma et al., 2018): split (or copy at stride 2), transform one half, concat, shuffle.
    The 1x1 convs use the paper's ReLU unless `act` or the yaml's ``activation:`` says otherwise; the depthwise
    convs stay linear, as in the paper."""
    yaml_args = "channels"
    gather_shuffle = True  # channel shuffle as a gather; utils.export.graphs.classic_shuffle flips it per instance

    def __init__(self, c1: int, c2: int, s: int = 1, act=None):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"ShuffleNetV2_Block stride must be 1 or 2, got {s}")
        if c2 % 2:
            raise ValueError(f"ShuffleNetV2_Block needs an even output width to split in two, got {c2}")
        if s == 1 and c1 != c2:
            raise ValueError(f"a stride-1 ShuffleNetV2_Block keeps its width: input {c1} != output {c2}")
        c_ = c2 // 2
        self.s = s
        act = block_act(act, nn.ReLU())
        if s == 2:
            self.branch1 = nn.Sequential(DWConv(c1, c1, 3, s, act=False), Conv(c1, c_, 1, 1, act=act))
        else:
            self.branch1 = nn.Identity()  # stride 1: the left half passes through untouched
        c_in = c1 if s == 2 else c_
        self.branch2 = nn.Sequential(Conv(c_in, c_, 1, 1, act=act),
                                     DWConv(c_, c_, 3, s, act=False),
                                     Conv(c_, c_, 1, 1, act=act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1) if self.s == 1 else (x, x)
        return channel_shuffle(torch.cat((self.branch1(x1), self.branch2(x2)), 1), 2, self.gather_shuffle)


register(ShuffleNetV2_Block, name="Shuffle_Block")  # the name YOLOv5-Lite style yamls use
