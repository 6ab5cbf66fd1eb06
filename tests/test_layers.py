"""models/layers.py: Conv with any norm and activation, and the yaml `activation:` key reaching every block whose
paper allows another activation (and not the ones whose paper fixes it)."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import SE, Conv, DWConv, make_act, make_norm
from models.yolo import Model

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.GELU, nn.Sigmoid, nn.Hardsigmoid, nn.Mish,
               nn.ELU, nn.Tanh)
FIXED = ("conv_bn_hswish", "MobileNetV3_Block")  # the MobileNetV3 paper fixes its hard-swish/ReLU schedule


def _yaml(activation: str | None) -> dict:
    """A small detector with one row of every block that builds on Conv/SE, the MobileNetV3 ones included."""
    d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
         "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
         "backbone": [
             [-1, 1, "conv_bn_relu_maxpool", [16]],  # 0 /4
             [-1, 1, "conv_bn_hswish", [16, 1]],  # 1
             [-1, 1, "ShuffleNetV2_Block", [32, 2]],  # 2 /8
             [-1, 1, "ShuffleNetV2_Block", [32, 1]],  # 3
             [-1, 1, "MobileNetV2_Block", [32, 1, 2]],  # 4
             [-1, 1, "RepVGGBlock", [32, 3, 1, 1, True]],  # 5 P3 (with SE)
             [-1, 1, "DWSConv", [48, 3, 2]],  # 6 /16
             [-1, 1, "MBConv", [48, 3, 1, 2, 0.25]],  # 7
             [-1, 1, "FusedMBConv", [48, 3, 1, 2, 0.25]],  # 8
             [-1, 1, "SE", [0.25]],  # 9
             [-1, 1, "CBAM", [4]],  # 10 P4
             [-1, 1, "MobileNetV3_Block", [64, 96, 3, 2, True, True]],  # 11 /32
             [-1, 1, "C3_UIB", [64]],  # 12
             [-1, 1, "C3Ghost", [64]],  # 13
             [-1, 1, "SPPF", [64, 5]],  # 14 P5
         ],
         "head": [[[5, 10, 14], 1, "Detect", ["nc", "anchors"]]]}
    if activation:
        d["activation"] = activation
    return d


def _activations(model) -> list[tuple[str, str, nn.Module]]:
    """(block type of the row, module name, activation module) for every activation in the model."""
    out = []
    for i, row in enumerate(model.model):
        for name, m in row.named_modules():
            if isinstance(m, ACTIVATIONS):
                out.append((type(row).__name__, f"model.{i}.{name}", m))
    return out


def test_yaml_activation_reaches_every_block_that_takes_act():
    model = Model(_yaml("nn.LeakyReLU(0.1)"), verbose=False)
    acts = _activations(model)
    leaky = set()
    for block, name, m in acts:
        if block in FIXED:  # hard-swish / ReLU, SE with ReLU + hard-sigmoid: the paper's schedule
            assert isinstance(m, (nn.Hardswish, nn.ReLU, nn.Hardsigmoid)), (name, m)
        elif name.endswith(".gate"):  # SE gates stay sigmoid: a gate, not an activation choice
            assert type(m) is nn.Sigmoid, (name, m)
        else:
            assert isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1, (name, m)
            leaky.add(block)
    assert leaky == {"conv_bn_relu_maxpool", "ShuffleNetV2_Block", "MobileNetV2_Block", "RepVGGBlock", "DWSConv",
                     "MBConv", "FusedMBConv", "SE", "CBAM", "C3_UIB", "C3Ghost", "SPPF"}  # every row but the fixed ones
    assert any(isinstance(m, nn.Hardswish) for b, _, m in acts if b in FIXED)


def test_without_the_key_blocks_keep_their_papers_activation():
    model = Model(_yaml(None), verbose=False)
    paper_relu = ("conv_bn_relu_maxpool", "ShuffleNetV2_Block", "MobileNetV2_Block", "RepVGGBlock", "CBAM", "SE")
    for block, name, m in _activations(model):
        if name.endswith(".gate"):
            continue
        if block in paper_relu:
            assert type(m) is nn.ReLU, (name, m)
        elif block not in FIXED:  # Conv's default: SiLU (YOLOv5, EfficientNetV2's swish, UIB, Ghost)
            assert type(m) is nn.SiLU, (name, m)
    # the default is restored after the build: a model built next without the key is unaffected by the last one
    Model(_yaml("nn.LeakyReLU(0.1)"), verbose=False)
    assert type(Conv(4, 4).act) is nn.SiLU and type(SE(8).act) is nn.ReLU


def test_conv_takes_a_norm_layer_and_an_activation_class_or_instance():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 10)
    gn = Conv(8, 16, 3, 2, norm=functools.partial(nn.GroupNorm, 4), act=nn.ReLU)
    assert isinstance(gn.bn, nn.GroupNorm) and (gn.bn.num_groups, gn.bn.num_channels) == (4, 16)
    assert type(gn.act) is nn.ReLU and gn.conv.bias is None  # a norm follows: the conv needs no bias
    assert sorted(gn.state_dict()) == ["bn.bias", "bn.weight", "conv.weight"]  # YOLOv5's slot names kept
    ref = F.relu(F.group_norm(F.conv2d(x, gn.conv.weight, None, 2, 1), 4, gn.bn.weight, gn.bn.bias))
    y = gn(x)
    # same ops in the same order on float32: only summation-order differences of ~1e-6 relative are possible
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    gn.eval().reparameterize()  # only BatchNorm folds; a GroupNorm stays where it is
    assert isinstance(gn.bn, nn.GroupNorm) and torch.equal(gn(x), y)

    bare = Conv(8, 4, 1, norm=None, act=nn.LeakyReLU(0.2))
    assert isinstance(bare.bn, nn.Identity) and bare.conv.bias is not None  # no norm: the conv has the bias
    assert bare.act.negative_slope == 0.2 and bare.act is not Conv(8, 4, act=bare.act).act  # copies, not shared
    torch.testing.assert_close(bare(x), F.leaky_relu(bare.conv(x), 0.2))

    dw = DWConv(8, 8, 3, norm=nn.InstanceNorm2d, act=False)
    assert dw.conv.groups == 8 and isinstance(dw.bn, nn.InstanceNorm2d) and isinstance(dw.act, nn.Identity)
    assert isinstance(make_norm(None, 4), nn.Identity) and isinstance(make_act(None), nn.Identity)
    assert type(Conv(8, 8).bn) is nn.BatchNorm2d and type(make_act(True)) is nn.SiLU  # the YOLOv5 defaults


def test_old_import_paths_still_work():
    import models.layers as layers
    from models.blocks.attention import SE as SE_old
    from models.blocks.conv import Conv as Conv_old
    from models.blocks.conv import fuse_conv_and_bn
    from models.blocks.efficientnet import DropPath
    from models.blocks.mobilenet import round_channels
    from models.blocks.shufflenet import channel_shuffle
    from models.common import SE as SE_common
    from models.common import DWConv as DWConv_common
    from utils.torch_utils import fuse_conv_and_bn as fuse_utils
    assert SE_old is SE_common is layers.SE and Conv_old is layers.Conv and DWConv_common is layers.DWConv
    assert fuse_conv_and_bn is fuse_utils is layers.fuse_conv_and_bn and DropPath is layers.DropPath
    assert round_channels is layers.round_channels and channel_shuffle is layers.channel_shuffle
    assert layers.round_channels(100 * 0.25) == 24 and layers.round_channels(17) == 16


@pytest.mark.parametrize("act", ["nn.ReLU()", "nn.SiLU()"])
def test_relu_or_silu_key_builds_the_same_modules_as_today(act):
    # the *_ReLU.yaml files rely on the blocks that already use ReLU staying ReLU under `activation: nn.ReLU()`
    model = Model(_yaml(act), verbose=False)
    want = {"nn.ReLU()": nn.ReLU, "nn.SiLU()": nn.SiLU}[act]
    for block, name, m in _activations(model):
        if block not in FIXED and not name.endswith(".gate"):
            assert type(m) is want, (name, m)
