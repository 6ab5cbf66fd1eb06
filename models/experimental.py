"""attempt_load: the loader YOLOv5 users' own scripts call."""
from __future__ import annotations

from pathlib import Path

import torch

from models.registry import YamlError
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.general import first_line


def check_fits(model: torch.nn.Module, sd: dict, weights) -> None:
    """Name the first missing, unexpected or mis-shaped key (load_state_dict only says 'Error(s) in loading')."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0][:80]}'"
        raise CheckpointError(f"'{weights}': weights do not fit the rebuilt model: {what} "
                              f"({len(missing)} missing, {len(extra)} unexpected keys)")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"'{weights}': weights do not fit the rebuilt model: '{k}' is "
                                  f"{tuple(sd[k].shape)} in the file but {tuple(v.shape)} in the model")


def build_from_checkpoint(weights: str | Path, verbose: bool = False):
    """Rebuild the model from a checkpoint's yaml and load its weights (strict). Returns (model, info dict)."""
    from models.yolo import Model
    info = load_checkpoint(weights)
    cfg = dict(info["yaml"])
    try:
        model = Model(cfg, ch=cfg.get("ch", 3), nc=cfg.get("nc"), verbose=verbose)
    except YamlError as e:
        raise CheckpointError(f"'{weights}': cannot rebuild its model: {first_line(e)}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:  # odd yaml values
        raise CheckpointError(f"'{weights}': cannot rebuild its model from its yaml: {type(e).__name__}: "
                              f"{first_line(e)[:100]}") from None
    check_fits(model, info["state_dict"], weights)  # before any copy: shapes come from the file
    sd = {k: v.float() if v.is_floating_point() else v for k, v in info["state_dict"].items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"'{weights}': weights do not fit the rebuilt model: {first_line(e)}") from None
    if info["names"]:
        model.names = {int(k): v for k, v in info["names"].items()}
    model.pt_source = info["source"]
    model.ckpt_info = {k: v for k, v in info.items() if k not in ("state_dict", "ckpt")}
    return model, info


def attempt_load(weights, device=None, inplace: bool = True, fuse: bool = True):
    """Load a checkpoint (ours or YOLOv5's) as a float32 eval-mode model, fused unless fuse=False."""
    if isinstance(weights, (list, tuple)):
        if len(weights) != 1:
            raise ValueError("model ensembles are not supported; pass one weights file")
        weights = weights[0]
    model, _ = build_from_checkpoint(weights)
    model = model.float().eval()
    if fuse:
        model.fuse(verbose=False)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = inplace
    if device is not None:
        model = model.to(device)
    return model
