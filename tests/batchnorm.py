"""Non-trivial BatchNorm statistics for tests that fold, copy or compare BatchNorm layers (the identity statistics
of a fresh layer would hide a wrong fold or a mis-copied tensor)."""
from __future__ import annotations

import torch
import torch.nn as nn


def randomize_bn(module: nn.Module, seed: int = 0, eps: float | None = None) -> nn.Module:
    """Every BatchNorm2d of module gets seeded random weight, bias and running statistics (and eps if given)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if eps is not None:
                    m.eps = eps
    return module
