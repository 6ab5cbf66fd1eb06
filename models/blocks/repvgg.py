"""RepVGG block with structural re-parameterisation (Ding et al., 2021)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import SE, Conv, block_act, fuse_conv_and_bn
from models.registry import register


def _fold(unit: Conv) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel, bias) of a Conv unit with its BN folded in; Conv.reparameterize may already have folded it."""
    conv = fuse_conv_and_bn(unit.conv, unit.bn) if isinstance(unit.bn, nn.BatchNorm2d) else unit.conv
    return conv.weight.detach(), conv.bias.detach()


@register
class RepVGGBlock(nn.Module):
    """RepVGG block (Ding et al., 2021): kxk+BN, 1x1+BN and BN-identity branches summed, folded into one kxk conv.
    The activation after the sum is the paper's ReLU unless `act` or the yaml's ``activation:`` says otherwise."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, se: bool = False,
                 act=None):
        super().__init__()
        if k % 2 == 0 or k < 3:
            raise ValueError(f"RepVGGBlock kernel must be odd and >= 3, got {k}")
        if c1 % g or c2 % g:
            raise ValueError(f"RepVGGBlock groups {g} must divide both input ({c1}) and output ({c2}) channels")
        self.dense = Conv(c1, c2, k, s, g=g, act=False)
        self.one = Conv(c1, c2, 1, s, p=0, g=g, act=False)
        self.identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None
        self.se = SE(c2, max(1, c2 // 16)) if se else nn.Identity()  # RepVGG-SE: gate on the summed branches
        self.act = block_act(act, nn.ReLU())

    @property
    def g(self) -> int:
        return self.dense.conv.groups

    @property
    def fused(self) -> bool:
        return self.one is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x)
        if self.one is not None:
            y = y + self.one(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(self.se(y))

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One kxk kernel and bias equal (in eval mode) to the sum of the three branches."""
        w, b = _fold(self.dense)
        k, c1 = w.shape[-1], self.dense.conv.in_channels
        if self.one is not None:
            w1, b1 = _fold(self.one)
            pad = k // 2
            w = w + F.pad(w1, [pad, pad, pad, pad])  # the 1x1 kernel sits at the centre tap
            b = b + b1
        if self.identity is not None:
            # grouped conv: output channel i reads input channel i from within its group, i.e. slot i mod (c/g)
            idx = torch.arange(c1, device=w.device)
            eye = torch.zeros_like(w)
            eye[idx, idx % (c1 // self.g), k // 2, k // 2] = 1.0
            bn = self.identity
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w = w + eye * scale.view(-1, 1, 1, 1)
            b = b + bn.bias.detach() - bn.running_mean * scale
        return w, b

    def reparameterize(self) -> None:
        """Replace the branches by a single biased kxk conv in `dense`; SE and activation stay as they are."""
        if self.fused:
            return
        w, b = self.equivalent_kernel_bias()
        self.dense.reparameterize()  # turns dense into a frozen biased conv; its values are replaced next
        self.dense.conv.weight.data.copy_(w)
        self.dense.conv.bias.data.copy_(b)
        self.one, self.identity = None, None
