"""Transfer ImageNet weights from a torchvision MobileNetV2 state_dict into a yaml-built MobileNetV2 backbone.

Both nets have the same layers in the same order but different names (``features.3.conv.0.0.weight`` against
``model.3.expand.conv.weight``), so tensors are paired unit by unit: torchvision's ``features.j`` is the j-th unit
of the yaml backbone (the stem Conv, then every MobileNetV2_Block, with repeated rows unrolled).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from models.blocks.mobilenet import MobileNetV2_Block
from models.blocks.torchvision_backbone import load_state_dict_file
from models.layers import Conv
from utils.general import LOGGER
from utils.torch_utils import matching_tensors


@dataclass
class TransferReport:
    """How many backbone tensors received ImageNet values, and which units were left as they were."""
    matched: int = 0
    total: int = 0
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"transferred {self.matched}/{self.total} tensors"
        return s + (f"; kept initial values for {', '.join(self.skipped)}" if self.skipped else "")


def mobilenet_v2_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the stem Conv and every MobileNetV2_Block of a yaml model, in forward order."""
    layers = model.model if hasattr(model, "model") else model
    units = []
    for i, layer in enumerate(layers):
        blocks = list(layer) if isinstance(layer, nn.Sequential) else [layer]
        if i == 0 and isinstance(layer, Conv):
            units.append(("model.0", layer))
        elif all(isinstance(b, MobileNetV2_Block) for b in blocks):
            units += [(f"model.{i}" + (f".{j}" if len(blocks) > 1 else ""), b) for j, b in enumerate(blocks)]
        elif units:
            break  # the backbone ends at the first layer that is not a MobileNetV2 unit
    return units


def transfer_mobilenet_v2(model: nn.Module, weights: str | Path | dict, prefix: str = "features.") -> TransferReport:
    """Copy torchvision ``mobilenet_v2`` tensors (a state_dict or a local file) into ``model``'s MobileNetV2
    backbone. A unit whose tensors differ in number or shape (other width/depth multiples) keeps its values."""
    src = weights if isinstance(weights, dict) else load_state_dict_file(weights)
    report = TransferReport()
    for j, (name, unit) in enumerate(mobilenet_v2_units(model)):
        dst = unit.state_dict()
        report.total += len(dst)
        key = f"{prefix}{j}."
        src_items = [v for k, v in src.items() if k.startswith(key)]
        # the names differ, the order is the same: rename by position, then take the unit only if every tensor fits
        picked = matching_tensors(dst, dict(zip(dst, src_items))) if len(src_items) == len(dst) else {}
        if len(picked) != len(dst):
            report.skipped.append(name)
            continue
        unit.load_state_dict(picked, strict=True)
        report.matched += len(dst)
    where = "state_dict" if isinstance(weights, dict) else str(weights)
    LOGGER.info(f"MobileNetV2 ImageNet transfer from {where}: {report}")
    return report

