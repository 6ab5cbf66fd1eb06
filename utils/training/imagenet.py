"""Which published ImageNet file fits which yaml, torchvision's files in the torch hub cache, and the --weights
hook train.py calls.

``train.py --cfg X.yaml --weights file`` keeps YOLOv5's meaning for YOLOv5/project checkpoints; a file that holds
only a classifier's state_dict (torchvision's ``features.*``, timm's ``conv_stem.*``/``blocks.*``/``stages.*``,
bare or under 'state_dict'/'model') starts the yaml's backbone instead, mapped by
structure (utils/training/transfer.py). ``--weights imagenet`` looks for torchvision's published file of the
yaml's backbone in ``torch.hub.get_dir()/checkpoints`` ($TORCH_HOME/hub/checkpoints); nothing is downloaded.
A yaml may say the same with a top-level ``pretrained: file.pth`` (or ``imagenet``) key, used when --weights is
empty.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision

from models.blocks.torchvision_backbone import TorchVisionBackbone, read_weights_file
from models.yolo import load_model_yaml
from utils.training.transfer import TransferReport, backbone_state_dict, read_state_dict, transfer_backbone

IMAGENET = "imagenet"  # --weights imagenet: the yaml's published file from the torch hub cache


@dataclass(frozen=True)
class Published:
    """A published ImageNet model whose weights fill a yaml's whole backbone."""
    library: str  # 'torchvision' or 'timm'
    name: str     # the model's name there


# yaml -> the published model whose file fills every backbone tensor (tests/test_pretrained_transfer.py checks
# each against that model's key/shape layout); TorchVisionBackbone yamls take their torchvision model's file
PUBLISHED: dict[str, Published] = {
    "yolov5_MobileNetv2.yaml": Published("torchvision", "mobilenet_v2"),
    "yolov5n_MobileNetV3_small.yaml": Published("torchvision", "mobilenet_v3_small"),
    "yolov5s_MobileNetV3_large.yaml": Published("torchvision", "mobilenet_v3_large"),
    "yolov5n_ShuffleNetV2_x0_5.yaml": Published("torchvision", "shufflenet_v2_x0_5"),
    "yolov5s_ShuffleNetV2_x1_5.yaml": Published("torchvision", "shufflenet_v2_x1_5"),
    "yolov5s_EfficientNetV2_s.yaml": Published("torchvision", "efficientnet_v2_s"),
    "yolov5n_MobileNetV1_100.yaml": Published("timm", "mobilenetv1_100"),
    "yolov5n_RepVGG_A0.yaml": Published("timm", "repvgg_a0"),
    "yolov5n_MobileNetV4_conv_small.yaml": Published("timm", "mobilenetv4_conv_small"),
    "yolov5n_GhostNet_100.yaml": Published("timm", "ghostnet_100"),
}


def published_for(model: nn.Module) -> Published | None:
    """The published model for a built yaml: a TorchVisionBackbone's own, else the PUBLISHED row of its file."""
    first = model.model[0] if hasattr(model, "model") else None
    if isinstance(first, TorchVisionBackbone):
        return Published("torchvision", first.name)
    return PUBLISHED.get(getattr(model, "yaml_file", ""))


def torchvision_files(name: str) -> list[str]:
    """torchvision's published file names for model `name` (IMAGENET1K_V1 first), from its weights enum."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except (KeyError, ValueError):
        return []
    return [PurePosixPath(urlparse(w.url).path).name for w in enum]


def hub_checkpoints() -> Path:
    """Where torch.hub keeps downloaded weights: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_imagenet_file(model: nn.Module) -> Path:
    """The yaml's published ImageNet file in the torch hub cache; a one-line error says what to place where."""
    pub, cfg = published_for(model), getattr(model, "yaml_file", "this model")
    if pub is None:
        raise ValueError(f"--weights {IMAGENET}: no published ImageNet file is known to fill {cfg}'s backbone; "
                         f"README 'ImageNet backbones' lists the yamls that take one")
    if pub.library != "torchvision":
        raise FileNotFoundError(f"--weights {IMAGENET}: {cfg} takes timm's {pub.name} weights, which torch's hub "
                                f"cache does not hold: pass --weights path/to/{pub.name}.pth")
    folder, files = hub_checkpoints(), torchvision_files(pub.name)
    for f in files:
        if (folder / f).is_file():
            return folder / f
    raise FileNotFoundError(f"--weights {IMAGENET}: {cfg} takes torchvision's {pub.name} ImageNet file; place "
                            f"{' or '.join(files)} in {folder}/ (nothing is downloaded) or pass --weights FILE")


def yaml_pretrained(cfg) -> str:
    """The model yaml's optional ``pretrained:`` key (a file or 'imagenet'): what --weights would say."""
    if not cfg:
        return ""
    value = load_model_yaml(cfg)[0].get("pretrained") or ""
    if not isinstance(value, str):
        raise ValueError(f"{cfg}: 'pretrained' must be a file path or '{IMAGENET}', got {type(value).__name__}")
    return value


def imagenet_weights(weights: str, cfg: str) -> str | dict | None:
    """What train.py's --weights means: None for a YOLOv5/project checkpoint (or nothing), else the ImageNet
    source for the --cfg backbone: IMAGENET, or the state_dict read from a backbone-only file. Without --weights,
    the yaml's ``pretrained:`` key says the same (and a bad file there is an error, not ignored)."""
    if not weights:
        key = yaml_pretrained(cfg)
        return key if key == IMAGENET else read_state_dict(key) if key else None
    if weights == IMAGENET:
        src: str | dict | None = IMAGENET
    else:
        path = Path(weights)
        if not path.is_file():
            return None  # train.py's own 'not found' message
        if path.suffix == ".safetensors":
            read_state_dict(path)  # says why it is refused
        try:  # weights-only: a YOLOv5 checkpoint (pickled modules) stops at its first class, before its tensors
            src = backbone_state_dict(read_weights_file(path))
        except ValueError:
            return None  # a YOLOv5 checkpoint, or unreadable: load_checkpoint reads it (or says why), as before
        if src is None:
            return None
    if not cfg:
        raise ValueError(f"--weights {weights} holds ImageNet backbone weights, not a detector: pass --cfg "
                         f"model.yaml for the model it starts (README 'ImageNet backbones')")
    return src


def transfer_imagenet(model: nn.Module, src: str | dict, weights: str) -> TransferReport:
    """Start `model`'s backbone from imagenet_weights()'s source; logs the transfer report."""
    if src == IMAGENET:
        path = find_imagenet_file(model)
        return transfer_backbone(model, read_state_dict(path), source=str(path))
    return transfer_backbone(model, src, source=weights or str(getattr(model, "yaml", {}).get("pretrained")))
