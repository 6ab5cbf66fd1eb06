"""torchvision ImageNet architectures as YOLOv5 backbones: one layer yielding the stride 8/16/32 maps, plus Index.

A yaml uses them as::

    [[-1, 1, TorchVisionBackbone, ['mobilenet_v3_small']],             # 0: [P3, P4, P5]
     [0, 1, Index, [0]], [0, 1, Index, [1]], [0, 1, Index, [2]], ...]    # 1-3: P3/8, P4/16, P5/32

A second argument is a local file with torchvision ImageNet weights (there is no network access at run time).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from models.layers import fuse_conv_and_bn
from models.registry import Row, YamlError, register, single_input
from utils.general import LOGGER, ROOT, first_line
from utils.safe_unpickle import read_torch_file
from utils.torch_utils import load_matching


@dataclass(frozen=True)
class BackboneSpec:
    """How to cut a torchvision classifier into a detector backbone."""
    body: Callable[[nn.Module], nn.Sequential]  # the feature layers, in order, up to the stride-32 tap
    taps: tuple[int, int, int]                  # body indices whose outputs are P3/8, P4/16, P5/32
    channels: tuple[int, int, int]              # widths of those outputs
    prefix: str                                 # torchvision state_dict key = prefix + body key


def _features(last: int) -> Callable[[nn.Module], nn.Sequential]:
    return lambda m: m.features[:last + 1]  # slicing keeps the torchvision child names ('0', '1', ...)


def _named(*names: str) -> Callable[[nn.Module], nn.Sequential]:
    return lambda m: nn.Sequential(OrderedDict((n, getattr(m, n)) for n in names))


_SHUFFLE = _named("conv1", "maxpool", "stage2", "stage3", "stage4")
_RESNET = _named("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

# taps and widths from torchvision's architectures (checked by a probe forward in tests/test_backbones.py)
BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(_features(17), (6, 13, 17), (32, 96, 320), "features."),
    "mobilenet_v3_small": BackboneSpec(_features(11), (3, 8, 11), (24, 48, 96), "features."),
    "mobilenet_v3_large": BackboneSpec(_features(15), (6, 12, 15), (40, 112, 160), "features."),
    "shufflenet_v2_x0_5": BackboneSpec(_SHUFFLE, (2, 3, 4), (48, 96, 192), ""),
    "shufflenet_v2_x1_0": BackboneSpec(_SHUFFLE, (2, 3, 4), (116, 232, 464), ""),
    "shufflenet_v2_x1_5": BackboneSpec(_SHUFFLE, (2, 3, 4), (176, 352, 704), ""),
    "shufflenet_v2_x2_0": BackboneSpec(_SHUFFLE, (2, 3, 4), (244, 488, 976), ""),
    "efficientnet_b0": BackboneSpec(_features(7), (3, 5, 7), (40, 112, 320), "features."),
    "efficientnet_v2_s": BackboneSpec(_features(6), (3, 5, 6), (64, 160, 256), "features."),
    "resnet18": BackboneSpec(_RESNET, (5, 6, 7), (128, 256, 512), ""),
    "resnet34": BackboneSpec(_RESNET, (5, 6, 7), (128, 256, 512), ""),
    "resnet50": BackboneSpec(_RESNET, (5, 6, 7), (512, 1024, 2048), ""),
}


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown torchvision backbone '{name}'; available: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def fold_batchnorms(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into it; returns how many were folded.

    A pair is 'conv then bn' when they are neighbours in a Sequential (torchvision's Conv2dNormActivation and
    block Sequentials) or named convN/bnN in a plain module (torchvision ResNet blocks)."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if isinstance(parent, nn.Sequential) or a.replace("conv", "") == b.replace("bn", ""):
                parent._modules[a] = fuse_conv_and_bn(conv, bn)
                parent._modules[b] = nn.Identity()
                folded += 1
    return folded


def read_weights_file(path: str | Path):
    """What a local .pt/.pth file holds, read by the project's safe unpickler (utils/safe_unpickle.py: tensors,
    containers and state_dict OrderedDicts with their _metadata; no code from the file runs, no size a file claims
    is allocated unchecked). Relative paths also try the repo."""
    p = Path(path)
    if not p.is_file() and not p.is_absolute() and (ROOT / p).is_file():
        p = ROOT / p
    if not p.is_file():
        raise FileNotFoundError(f"ImageNet weights file not found: {path} (also looked in {ROOT})")
    try:
        return read_torch_file(p)
    except Exception as e:  # truncated file, pickled whole model, not a torch file: one line, not a traceback
        raise ValueError(f"{p}: not a readable torchvision state_dict ({first_line(e)})") from None


def load_state_dict_file(path: str | Path) -> dict:
    """A state_dict from a local .pt/.pth file (bare or under 'state_dict'/'model')."""
    sd = read_weights_file(path)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(sd).__name__}")
    return sd


def torchvision_backbone_args(row: Row):
    """Rows are [name, (weights)]: built as (c1, name, weights); the layer outputs a list of three widths."""
    if not row.args or not isinstance(row.args[0], str):
        raise YamlError(f"TorchVisionBackbone needs a torchvision model name first, one of {', '.join(BACKBONES)}")
    return [single_input(row), *row.args], list(_spec(row.args[0]).channels), 1


@register
class TorchVisionBackbone(nn.Module):
    """A torchvision ImageNet classifier (MobileNetV2/V3, ShuffleNetV2, EfficientNet, ResNet) cut at strides 8/16/32."""
    yaml_args = staticmethod(torchvision_backbone_args)

    def __init__(self, c1: int, name: str, weights: str | None = None):
        super().__init__()
        if c1 != 3:
            raise ValueError(f"TorchVisionBackbone '{name}' takes 3-channel images, got {c1} channels")
        spec = _spec(name)
        self.name, self.taps, self.prefix = name, spec.taps, spec.prefix
        self.body = spec.body(getattr(torchvision.models, name)(weights=None))  # never downloads
        self.out_channels = list(spec.channels)
        self.loaded = (0, 0)
        if weights:
            self.load_weights(weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs

    def load_weights(self, weights: str | Path | dict) -> tuple[int, int]:
        """Copy tensors from a torchvision state_dict (or a file holding one) whose names and shapes match;
        logs and returns (matched, total) over this backbone's tensors."""
        src = weights if isinstance(weights, dict) else load_state_dict_file(weights)
        self.loaded = load_matching(self.body, src, self.prefix)
        where = "state_dict" if isinstance(weights, dict) else str(weights)
        LOGGER.info(f"TorchVisionBackbone {self.name}: transferred {self.loaded[0]}/{self.loaded[1]} tensors from "
                    f"{where}")
        return self.loaded

    def reparameterize(self) -> None:
        """Fold torchvision's BatchNorms into their convs for inference (Model.fuse() calls this)."""
        fold_batchnorms(self.body)


def index_args(row: Row):
    """Rows are [k] reading a multi-output layer: picks its k-th output and that output's width."""
    c_in = row.c_in
    if not isinstance(row.frm, int) or not isinstance(c_in, (list, tuple)):
        raise YamlError("Index reads one layer with several outputs (e.g. TorchVisionBackbone)")
    if not row.args or not isinstance(row.args[0], int) or not -len(c_in) <= row.args[0] < len(c_in):
        raise YamlError(f"Index needs an output number in 0..{len(c_in) - 1}, got {row.args}")
    return [row.args[0]], c_in[row.args[0]], 1


@register
class Index(nn.Module):
    """Select one tensor from a layer that returns a list (multi-scale backbones)."""
    yaml_args = staticmethod(index_args)

    def __init__(self, k: int = 0):
        super().__init__()
        self.k = k

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.k]
