"""Optimiser construction and learning-rate schedules for detection training (Jocher et al., YOLOv5).

Parameter groups follow YOLOv5's layout, so optimizer state_dicts line up with its checkpoints:
group 0 biases (no decay, warmed up from warmup_bias_lr), group 1 conv/linear weights (weight decay),
group 2 normalisation-layer weights (no decay: decaying a BN scale only fights the next layer's weights).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from utils.general import LOGGER, colorstr

OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSProp")
# every normalisation layer torch ships: their scales stay undecayed
_NORM_TYPES = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))


def param_groups(model: nn.Module) -> tuple[list, list, list]:
    """(biases, decayed weights, undecayed weights): biases anywhere; norm-layer and 1-D extras undecayed."""
    biases, decay, no_decay = [], [], []
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue  # tied/shared parameters go in one group only
            seen.add(id(p))
            if name == "bias":
                biases.append(p)
            elif isinstance(module, _NORM_TYPES) or p.ndim <= 1:
                no_decay.append(p)  # BN/LN scales, layer-scale gammas and other per-channel gains
            else:
                decay.append(p)
    return biases, decay, no_decay


def smart_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.001, momentum: float = 0.9,
                    decay: float = 1e-5) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam, AdamW or RMSProp over the three YOLOv5 parameter groups; Adam betas are
    (momentum, 0.999)."""
    biases, weights, norm = param_groups(model)
    if name == "Adam":
        opt = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "RMSProp":
        opt = torch.optim.RMSprop(biases, lr=lr, momentum=momentum)
    elif name == "SGD":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"--optimizer {name!r} not recognised; choose one of {', '.join(OPTIMIZERS)}")
    opt.add_param_group({"params": weights, "weight_decay": decay})
    opt.add_param_group({"params": norm, "weight_decay": 0.0})
    LOGGER.info(f"{colorstr('optimizer:')} {type(opt).__name__}(lr={lr}) with parameter groups "
                f"{len(norm)} weight(decay=0.0), {len(weights)} weight(decay={decay}), {len(biases)} bias")
    return opt


def linear_lr(epochs: int, lrf: float) -> Callable[[float], float]:
    """LR factor falling linearly from 1 at epoch 0 to lrf at epoch `epochs`."""
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def cosine_lr(epochs: int, lrf: float) -> Callable[[float], float]:
    """LR factor on a half cosine from 1 to lrf over `epochs` (Loshchilov & Hutter, SGDR, without restarts)."""
    return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1


def lr_lambda(epochs: int, lrf: float, cos: bool = False) -> Callable[[float], float]:
    return cosine_lr(epochs, lrf) if cos else linear_lr(epochs, lrf)


def warmup_iterations(warmup_epochs: float, nb: int, minimum: int = 100) -> int:
    """Warmup length in iterations: max(warmup_epochs * batches per epoch, 100); 0 epochs turns warmup off."""
    return max(round(warmup_epochs * nb), minimum) if warmup_epochs > 0 else 0


def warmup_step(optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch_lr: Callable[[float], float], epoch: int,
                hyp: dict, nbs: int, batch_size: int) -> int:
    """Set each group's lr/momentum for iteration ni < nw and return the gradient-accumulation count to use.

    Biases start at warmup_bias_lr (large, so the detection priors adapt first), weights at 0; all reach
    lr0 * schedule(epoch) at nw. Momentum rises warmup_momentum -> momentum; accumulation 1 -> nbs / batch.
    """
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
    for j, g in enumerate(optimizer.param_groups):
        g["lr"] = float(np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 0 else 0.0,
                                           g["initial_lr"] * epoch_lr(epoch)]))
        if "momentum" in g:  # SGD/RMSProp; Adam's betas stay fixed, as in YOLOv5
            g["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
    return accumulate
