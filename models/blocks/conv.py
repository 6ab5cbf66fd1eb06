"""The plain YOLOv5 layers Focus and Concat; Conv, DWConv and their helpers live in models.layers (re-exported)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import Conv, DWConv, autopad, default_activation, fuse_conv_and_bn, make_act
from models.registry import register


@register
class Focus(nn.Module):
    """Space-to-depth (2x2 pixels into channels) followed by a Conv; the pre-v6.0 YOLOv5 stem."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, p=None, g: int = 1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


@register
class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension (channels by default)."""
    yaml_args = "concat"

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
