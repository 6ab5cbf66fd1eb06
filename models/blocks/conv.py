"""The shared conv-norm-act unit and the other plain YOLOv5 layers (Conv, DWConv, Focus, Concat)."""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from models.registry import register


def autopad(k, p=None, d: int = 1):
    """'same' padding for odd kernels, accounting for dilation."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding convolution: W' = W*g/sqrt(var+eps), b' = beta + (b-mu)*g/sqrt."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused = fused.to(conv.weight.device)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.data.copy_(conv.weight.detach() * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data.copy_(bn.bias.detach() + (conv_bias - bn.running_mean) * scale)
    fused.requires_grad_(False)
    return fused


def make_act(act) -> nn.Module:
    """True -> Conv.default_act, False/None -> Identity, a module -> a copy of it."""
    if act is True:
        return copy.deepcopy(Conv.default_act)
    if isinstance(act, nn.Module):
        return copy.deepcopy(act)
    return nn.Identity()


@register
class Conv(nn.Module):
    """Conv2d -> BatchNorm2d -> activation (SiLU unless the model yaml sets ``activation``)."""
    yaml_args = "channels"
    default_act: nn.Module = nn.SiLU()

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, p=None, g: int = 1, d: int = 1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def reparameterize(self) -> None:
        """Fold BN into the conv; the BN slot becomes Identity so forward() stays the same."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            self.bn = nn.Identity()


@contextmanager
def default_activation(act: nn.Module | None):
    """Temporarily change Conv's default activation (the model yaml's ``activation:`` key)."""
    previous = Conv.default_act
    if act is not None:
        Conv.default_act = act
    try:
        yield
    finally:
        Conv.default_act = previous


@register
class DWConv(Conv):
    """Depthwise conv (groups = gcd(c1, c2)), as in MobileNets (Howard et al., 2017)."""

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, d: int = 1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


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
