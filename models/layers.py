"""The layers every block family builds on (the counterpart of timm's ``layers``).

Conv (conv -> norm -> activation, the YOLOv5 unit) and DWConv, the activation and norm factories, the model yaml's
``activation:`` key as the blocks see it, BatchNorm folding, DropPath, squeeze-and-excitation, the MobileNet
channel-rounding rule and the ShuffleNet channel shuffle. Old import paths (models.common, models.blocks.*,
utils.torch_utils) re-export these names.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from models.registry import Row, register, single_input

# The activation the model yaml's ``activation:`` key sets while that model is built; None when it sets none.
# Blocks whose paper names an activation (ReLU for RepVGG, ShuffleNetV2, MobileNetV2) use it only when the yaml
# asks for another one, so a yaml without the key builds exactly what the papers describe.
_yaml_act: nn.Module | None = None


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
    """Activation factory: True -> a copy of Conv.default_act (SiLU, or the yaml's ``activation:``), False/None ->
    Identity, a module instance -> a copy of it, a module class -> a new instance (nn.ReLU -> nn.ReLU())."""
    if act is True:
        return copy.deepcopy(Conv.default_act)
    if isinstance(act, nn.Module):
        return copy.deepcopy(act)
    if isinstance(act, type) and issubclass(act, nn.Module):
        return act()
    return nn.Identity()


def block_act(act, paper) -> nn.Module:
    """The activation of a block whose paper names one: `act` when given (as make_act takes it), else the model
    yaml's ``activation:`` when it sets one, else `paper` (a module instance or class)."""
    if act is None:
        act = _yaml_act if _yaml_act is not None else paper
    return make_act(act)


def make_norm(norm, c: int) -> nn.Module:
    """Norm factory: a class or callable taking the channel count (nn.BatchNorm2d, functools.partial(nn.GroupNorm,
    8)) -> norm(c); None/False -> Identity."""
    return norm(c) if norm else nn.Identity()


@register
class Conv(nn.Module):
    """Conv2d -> norm (BatchNorm2d unless `norm` says otherwise) -> activation (SiLU unless the model yaml sets
    ``activation``). `act`: True (the default activation), False/None (none), an activation instance or class.
    `norm`: a class or callable taking the channel count, or None for no norm (the conv then has a bias). The norm
    sits in the ``bn`` slot whatever its type, so state_dict keys stay YOLOv5's."""
    yaml_args = "channels"
    default_act: nn.Module = nn.SiLU()

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, p=None, g: int = 1, d: int = 1, act=True,
                 norm=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=not norm)
        self.bn = make_norm(norm, c2)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def reparameterize(self) -> None:
        """Fold BN into the conv; the BN slot becomes Identity so forward() stays the same (other norms stay)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            self.bn = nn.Identity()


@contextmanager
def default_activation(act: nn.Module | None):
    """While a model is built: the yaml's ``activation:`` key (None: not set) becomes Conv's default activation and
    the activation of every block whose paper allows another one (block_act)."""
    global _yaml_act
    previous, previous_yaml = Conv.default_act, _yaml_act
    if act is not None:
        Conv.default_act = act
    _yaml_act = act
    try:
        yield
    finally:
        Conv.default_act, _yaml_act = previous, previous_yaml


@register
class DWConv(Conv):
    """Depthwise conv (groups = gcd(c1, c2)), as in MobileNets (Howard et al., 2017)."""

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, d: int = 1, act=True, norm=nn.BatchNorm2d):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act, norm=norm)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drop a sample's residual branch with probability p while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep  # rescale so the expected output equals the eval-mode output

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_channels(row: Row):
    """Attention rows are [*options]: the block is built as (c1, *options) and keeps c1 channels."""
    c1 = single_input(row)
    return [c1, *row.args], c1, row.n


@register
class SE(nn.Module):
    """Squeeze-and-excitation gate (Hu et al., 2018): global pool -> 1x1 squeeze -> act -> 1x1 excite -> gate.
    The squeeze activation is the paper's ReLU unless `act` or the yaml's ``activation:`` says otherwise; the gate
    (sigmoid by default) is a gate, not an activation choice, and only changes when `gate` is given."""
    yaml_args = staticmethod(keep_channels)

    def __init__(self, c1: int, c_sq: int | float = 0.25, act=None, gate: nn.Module | None = None):
        super().__init__()
        # c_sq is a width when >= 1, else a ratio of c1 (yaml rows write [0.25])
        c_ = int(c_sq) if c_sq >= 1 else max(1, int(c1 * c_sq))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c1, c_, 1)
        self.act = block_act(act, nn.ReLU())
        self.fc2 = nn.Conv2d(c_, c1, 1)
        self.gate = make_act(gate if gate is not None else nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def round_channels(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Nearest multiple of divisor, never more than 10% below v (the MobileNet/EfficientNet width rule; timm's
    make_divisible). Not utils.general.make_divisible, which rounds up as YOLOv5's width_multiple does."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def channel_shuffle(x: torch.Tensor, groups: int = 2, gather: bool = True) -> torch.Tensor:
    """Interleave channel groups so information crosses the two branches (ShuffleNet, Zhang et al., 2018).
    gather=True: a gather of channels rather than view-transpose-reshape: the same permutation, about 2x faster on
    channels_last tensors, and one ONNX Gather instead of three ops (fewer layout transposes in INT8 graphs).
    gather=False: the classic view-transpose-reshape, which converters map to one channel-shuffle layer (pnnx makes
    ncnn's ShuffleChannel of it, while its index_select is unsupported and leaves an ncnn graph that crashes)."""
    if not gather:
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    c = x.shape[1]
    order = torch.arange(c, device=x.device).view(groups, c // groups).t().reshape(-1)
    return x.index_select(1, order)
