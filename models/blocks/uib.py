"""MobileNetV4 Universal Inverted Bottleneck (Qin et al., 2024) and a C3 whose inner blocks are UIBs."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks.csp import CSPBase
from models.layers import Conv, DWConv, round_channels
from models.registry import register

# variant -> (start depthwise?, middle depthwise?)  (MobileNetV4 paper, Fig. 4)
UIB_VARIANTS = {"extradw": (True, True), "ib": (False, True), "convnext": (True, False), "ffn": (False, False)}


def uib_kernels(kind: str, k: int = 3) -> tuple[int, int]:
    """Variant name -> (start kernel, middle kernel); 0 means that depthwise conv is absent."""
    key = str(kind).lower().replace("-", "").replace("_", "").replace("like", "")
    if key not in UIB_VARIANTS:
        raise ValueError(f"unknown UIB variant '{kind}'; use one of ExtraDW, IB, ConvNeXt, FFN")
    start, mid = UIB_VARIANTS[key]
    return (k if start else 0), (k if mid else 0)


@register
class UIB(nn.Module):
    """Universal Inverted Bottleneck (MobileNetV4, Qin et al., 2024): [dw] -> 1x1 expand -> [dw] -> 1x1 project."""
    yaml_args = "channels"

    def __init__(self, c1: int, c2: int, k_start: int = 3, k_mid: int = 3, s: int = 1, e: float = 4.0,
                 shortcut: bool = True, act: nn.Module | bool = True):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"UIB stride must be 1 or 2, got {s}")
        # the stride sits on the middle depthwise conv when there is one, else on the start one
        s_start, s_mid = (1, s) if k_mid else (s, 1)
        if s == 2 and not (k_start or k_mid):
            raise ValueError("a stride-2 UIB needs a start or middle depthwise conv (the FFN variant has neither)")
        c_ = round_channels(c1 * e, 8)
        self.dw_start = DWConv(c1, c1, k_start, s_start, act=False) if k_start else nn.Identity()
        self.expand = Conv(c1, c_, 1, 1, act=act)
        self.dw_mid = DWConv(c_, c_, k_mid, s_mid, act=act) if k_mid else nn.Identity()
        self.project = Conv(c_, c2, 1, 1, act=False)
        self.add = shortcut and s == 1 and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw_mid(self.expand(self.dw_start(x))))
        return x + y if self.add else y


@register
class C3_UIB(CSPBase):
    """C3 (YOLOv5) with MobileNetV4 UIBs (Qin et al., 2024) as inner blocks; variant and expand ratio from the yaml."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 kind: str = "ExtraDW", ratio: float = 1.0, k: int = 3):
        self.uib_kernels = uib_kernels(kind, k)  # read by make_inner, which the base __init__ calls
        self.uib_ratio = ratio
        super().__init__(c1, c2, n, shortcut, g, e)

    def make_inner(self, c: int, shortcut: bool, g: int) -> nn.Module:
        k_start, k_mid = self.uib_kernels
        return UIB(c, c, k_start, k_mid, 1, self.uib_ratio, shortcut)
