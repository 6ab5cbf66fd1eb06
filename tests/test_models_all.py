"""Every model yaml under models/: builds with P3/P4/P5 strides, runs eval/train forwards at several sizes and a
backward pass, and fuse() keeps eval outputs while leaving no BatchNorm or multi-branch block.

Cost control (2 CPU cores): batch 1, one intra-op thread, forwards under no_grad except the one that is
back-propagated; each yaml is built once and shared by its tests (the fuse test consumes the cached model last)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models.blocks.repvgg import RepVGGBlock
from models.yolo import ROOT, Model
from tests.batchnorm import randomize_bn
from utils.torch_utils import model_info

YAMLS = sorted(p.name for p in (ROOT / "models").glob("*.yaml"))
_CACHE: dict[str, Model] = {}


def built(cfg: str) -> Model:
    if cfg not in _CACHE:
        torch.manual_seed(0)
        _CACHE[cfg] = Model(cfg, verbose=False)
    return _CACHE[cfg]


def n_predictions(h: int, w: int, na: int = 3) -> int:
    return na * sum((h // s) * (w // s) for s in (8, 16, 32))


def test_every_family_is_present():
    families = ["MobileNetv2", "C3UIB", "EfficientNetV2", "RepVGG", "ShuffleNetV2", "MobileNetV3", "ghost", "_tv_"]
    for fam in families:
        scales = {c[6] for c in YAMLS if fam in c and c.startswith("yolov5") and c[6] in "ns"}
        assert "n" in scales, f"no nano-scale yaml for {fam}"
        if fam != "C3UIB":
            assert "s" in scales, f"no small-scale yaml for {fam}"
    assert "yolov5_MobileNetv2.yaml" in YAMLS


@pytest.mark.parametrize("cfg", YAMLS)
def test_build_forward_backward(cfg):
    model = built(cfg)
    assert model.stride.tolist() == [8.0, 16.0, 32.0], f"{cfg}: P3/P4/P5 strides are {model.stride.tolist()}"
    _, n_p, _, gflops = model_info(model)  # the summary line models/yolo.py --cfg prints
    assert n_p > 0 and gflops is not None and gflops > 0, f"{cfg}: thop could not count GFLOPs"
    no = model.model[-1].no

    model.eval()
    with torch.no_grad():
        for h, w in ((320, 320), (640, 640), (256, 320)):
            pred, raw = model(torch.rand(1, 3, h, w))
            assert pred.shape == (1, n_predictions(h, w), no), f"{cfg} eval {h}x{w}"
            assert torch.isfinite(pred).all()
            assert [r.shape[2:4] for r in raw] == [(h // s, w // s) for s in (8, 16, 32)]

    model.train()
    with torch.no_grad():
        for h in (320, 640):
            out = model(torch.rand(1, 3, h, h))
            assert [tuple(o.shape) for o in out] == [(1, 3, h // s, h // s, no) for s in (8, 16, 32)]
    out = model(torch.rand(1, 3, 256, 320))
    assert [tuple(o.shape) for o in out] == [(1, 3, 256 // s, 320 // s, no) for s in (8, 16, 32)]
    sum(o.float().pow(2).mean() for o in out).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{cfg}: parameters without gradient (unused branches?): {missing[:5]}"
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("cfg", YAMLS)
def test_fuse_keeps_outputs(cfg):
    model = built(cfg)
    del _CACHE[cfg]  # fuse() changes the model for good: nothing may reuse it
    randomize_bn(model)
    model.eval()
    x = torch.rand(1, 3, 256, 320)
    with torch.no_grad():
        _, raw = model(x)
        model.fuse(verbose=False)
        _, raw_fused = model(x)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert not left, f"{cfg}: BatchNorm left after fuse(): {left[:5]}"
    multi = [n for n, m in model.named_modules() if isinstance(m, RepVGGBlock) and not m.fused]
    assert not multi, f"{cfg}: multi-branch RepVGG blocks left after fuse(): {multi[:5]}"
    for a, b in zip(raw, raw_fused):
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= 1e-4 * scale, f"{cfg}: fused output differs"
