"""YOLOv5's CSP blocks and spatial pyramid pooling (Wang et al., 2019 CSPNet; He et al., 2014 SPP)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import Conv
from models.registry import register


@register
class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3, with a residual when shapes allow (He et al., 2016)."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class CSPBase(nn.Module):
    """C3 layout: cv1 -> inner blocks, cv2 bypass, concat, cv3. Subclasses choose the inner block via make_inner."""
    yaml_args = "csp"

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(self.make_inner(c_, shortcut, g) for _ in range(n)))

    def make_inner(self, c: int, shortcut: bool, g: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register
class C3(CSPBase):
    """CSP bottleneck with 3 convolutions (YOLOv5)."""

    def make_inner(self, c: int, shortcut: bool, g: int) -> nn.Module:
        return Bottleneck(c, c, shortcut, g, e=1.0)


@register
class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools (He et al., 2014)."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


@register
class SPPF(nn.Module):
    """SPP with three chained k-pools: same receptive fields as SPP(k, 2k-1, 3k-2), fewer FLOPs."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))
