"""Lightweight backbone blocks: exact counts of the spec'd yamls, equivalence with torchvision's reference blocks,
RepVGG re-parameterisation, width constraints, torchvision backbones with local ImageNet weights, weight transfer."""
from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
import torch.nn as nn
import torchvision
import yaml

from models.blocks.efficientnet import DropPath
from models.blocks.shufflenet import channel_shuffle
from models.blocks.torchvision_backbone import BACKBONES, TorchVisionBackbone, fold_batchnorms
from models.common import (
    C3_UIB,
    CBAM,
    SE,
    UIB,
    DWSConv,
    FusedMBConv,
    MBConv,
    MobileNetV2_Block,
    MobileNetV3_Block,
    RepVGGBlock,
    ShuffleNetV2_Block,
    conv_bn_relu_maxpool,
)
from models.registry import YamlError
from models.yolo import ROOT, Model
from tests.batchnorm import randomize_bn
from utils.torch_utils import model_flops
from utils.training.transfer import transfer_mobilenet_v2

MOBILENETV2_LAYER_PARAMS = [928, 896, 5136, 8832, 10000, 29696, 21056, 162816, 66624, 236544, 155264, 640000, 473920,
                            708928, 262656, 0, 0, 321024, 33024, 0, 0, 78592, 147712, 0, 296448, 590336, 0, 1182720,
                            229245]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def conv_bn(c1: int, c2: int, k: int = 1, g: int = 1) -> int:
    """Parameters of a bias-free conv followed by BatchNorm."""
    return c1 // g * c2 * k * k + 2 * c2


def copy_by_order(src: nn.Module, dst: nn.Module) -> None:
    """Load src's tensors into dst pairing them in registration order (same layers, different names)."""
    s, d = list(src.state_dict().values()), dst.state_dict()
    assert len(s) == len(d), f"{len(s)} source tensors for {len(d)} destination tensors"
    for (k, v), w in zip(d.items(), s):
        assert v.shape == w.shape, f"{k}: {tuple(v.shape)} vs {tuple(w.shape)}"
    dst.load_state_dict(dict(zip(d, s)))


def relu6_to_relu(module: nn.Module) -> nn.Module:
    for m in module.modules():
        for name, child in m.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(m, name, nn.ReLU())
    return module


def assert_same(src: nn.Module, ours: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> None:
    src.eval(), ours.eval()
    with torch.no_grad():
        a, b = src(x), ours(x)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= atol * max(1.0, a.abs().max().item())


def yaml_dict(name: str) -> dict:
    return yaml.safe_load((ROOT / "models" / name).read_text())


# ---------------------------------------------------------------- spec'd yamls

def test_mobilenetv2_yaml_exact_counts():
    model = Model("yolov5_MobileNetv2.yaml", verbose=False)
    assert [m.np for m in model.model] == MOBILENETV2_LAYER_PARAMS
    assert n_params(model) == 5_662_397
    assert round(model_flops(model), 1) == 11.5
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_c3uib_yaml_replaces_every_c3_and_counts():
    model = Model("yolov5n_C3UIB.yaml", verbose=False)
    base = yaml_dict("yolov5n.yaml")
    c3_rows = [i for i, r in enumerate(base["backbone"] + base["head"]) if r[2] == "C3"]
    assert len(c3_rows) == 8
    assert [i for i, m in enumerate(model.model) if isinstance(m, C3_UIB)] == c3_rows
    assert not any(type(m).__name__ == "C3" for m in model.modules())
    assert n_params(model) == 1_434_685  # the published ~1.3M / 3.3 GFLOPs, as measured on the reconstruction
    assert round(model_flops(model), 1) == 3.5


def test_c3uib_variant_and_ratio_come_from_the_yaml():
    d = yaml_dict("yolov5n_C3UIB.yaml")
    d["backbone"][2] = [-1, 1, "C3_UIB", [128, True, 1, 0.5, "IB", 2.0]]
    layer = Model(d, verbose=False).model[2]
    c_ = 16  # int(32 * 0.5)
    expected = 2 * conv_bn(32, c_) + conv_bn(2 * c_, 32)  # cv1, cv2, cv3
    expected += conv_bn(c_, 32) + conv_bn(32, 32, 3, g=32) + conv_bn(32, c_)  # IB: expand x2, mid dw, project
    assert n_params(layer) == expected
    assert isinstance(layer.m[0].dw_start, nn.Identity) and not isinstance(layer.m[0].dw_mid, nn.Identity)
    d["backbone"][2] = [-1, 1, "C3_UIB", [128, True, 1, 0.5, "Inverted"]]
    with pytest.raises(YamlError, match=r"row 2 .*unknown UIB variant 'Inverted'"):
        Model(d, verbose=False)


# ---------------------------------------------------------------- equivalence with torchvision's blocks

@pytest.mark.parametrize("index,args", [(1, (32, 16, 1, 1)), (2, (16, 24, 2, 6)), (3, (24, 24, 1, 6))])
def test_mobilenetv2_block_matches_torchvision(index, args):
    src = randomize_bn(relu6_to_relu(torchvision.models.mobilenet_v2(weights=None).features[index]))
    ours = MobileNetV2_Block(*args)
    copy_by_order(src, ours)
    assert ours.add == (args[0] == args[1] and args[2] == 1)
    assert_same(src, ours, torch.randn(2, args[0], 16, 16))


@pytest.mark.parametrize("index,args", [(1, (16, 16, 16, 3, 1, False, False)), (4, (24, 40, 72, 5, 2, True, False)),
                                        (14, (160, 160, 960, 5, 1, True, True))])
def test_mobilenetv3_block_matches_torchvision(index, args):
    src = randomize_bn(torchvision.models.mobilenet_v3_large(weights=None).features[index])
    ours = randomize_bn(MobileNetV3_Block(*args), eps=1e-3)  # torchvision's V3 BatchNorm eps
    copy_by_order(src, ours)
    assert_same(src, ours, torch.randn(2, args[0], 16, 16))


@pytest.mark.parametrize("stage,block,cls,args", [(1, 0, FusedMBConv, (24, 24, 3, 1, 1)),
                                                  (2, 0, FusedMBConv, (24, 48, 3, 2, 4)),
                                                  (4, 0, MBConv, (64, 128, 3, 2, 4, 0.25)),
                                                  (5, 1, MBConv, (160, 160, 3, 1, 6, 0.25))])
def test_efficientnetv2_blocks_match_torchvision(stage, block, cls, args):
    src = randomize_bn(torchvision.models.efficientnet_v2_s(weights=None).features[stage][block])
    ours = randomize_bn(cls(*args, dp=0.1), eps=1e-3)
    copy_by_order(src, ours)
    assert_same(src, ours, torch.randn(2, args[0], 16, 16))


@pytest.mark.parametrize("block,args", [(0, (24, 116, 2)), (1, (116, 116, 1))])
def test_shufflenetv2_block_matches_torchvision(block, args):
    src = randomize_bn(torchvision.models.shufflenet_v2_x1_0(weights=None).stage2[block])
    ours = ShuffleNetV2_Block(*args)
    copy_by_order(src, ours)
    assert_same(src, ours, torch.randn(2, args[0], 16, 16))


def test_shufflenet_stem_and_shuffle():
    assert conv_bn_relu_maxpool(3, 24)(torch.zeros(1, 3, 64, 96)).shape == (1, 24, 16, 24)
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shufflenet_constraints_are_clear_errors():
    with pytest.raises(ValueError, match="even"):
        ShuffleNetV2_Block(16, 31, 2)
    with pytest.raises(ValueError, match="keeps its width"):
        ShuffleNetV2_Block(16, 32, 1)


# ---------------------------------------------------------------- RepVGG

@pytest.mark.parametrize("c1,c2,s,g,se", [(c1, c2, s, g, se) for (c1, c2), s, g, se in
                                           itertools.product([(16, 16), (8, 16)], [1, 2], [1, 4], [False, True])])
def test_repvgg_reparameterisation_is_exact(c1, c2, s, g, se):
    torch.manual_seed(0)
    block = randomize_bn(RepVGGBlock(c1, c2, 3, s, g, se)).eval()
    if se:  # a non-trivial gate, so dropping SE during fusion would show
        nn.init.normal_(block.se.fc2.weight, std=0.5)
    assert (block.identity is not None) == (c1 == c2 and s == 1)
    x = torch.randn(2, c1, 12, 10)
    with torch.no_grad():
        y0 = block(x)
        block.reparameterize()
        y1 = block(x)
    assert block.fused and block.one is None and block.identity is None
    assert isinstance(block.dense.bn, nn.Identity) and block.dense.conv.bias is not None
    assert block.dense.conv.groups == g and block.dense.conv.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert (y0 - y1).abs().max().item() <= 1e-5 * max(1.0, y0.abs().max().item())


def test_repvgg_fuse_order_does_not_matter():
    """Branch Convs folded first (e.g. a different module walk order) still give the same single kernel."""
    block = randomize_bn(RepVGGBlock(16, 16, 3, 1, 2, True)).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        y0 = block(x)
        block.dense.reparameterize()
        block.one.reparameterize()
        block.reparameterize()
        block.reparameterize()  # idempotent
        assert (block(x) - y0).abs().max().item() <= 1e-5 * max(1.0, y0.abs().max().item())


def test_repvgg_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups 3"):
        RepVGGBlock(16, 16, 3, 1, 3)


def test_repvgg_model_fuse_leaves_single_branch_blocks():
    model = Model("yolov5n_RepVGG.yaml", verbose=False)
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert any(b.g > 1 for b in blocks) and any(not isinstance(b.se, nn.Identity) for b in blocks)
    model.fuse(verbose=False)
    assert all(b.fused for b in blocks)
    sd = model.state_dict()
    assert not any(".one." in k or ".identity." in k for k in sd)


# ---------------------------------------------------------------- UIB, MBConv drop-path, attention, DW-separable

@pytest.mark.parametrize("kind,start,mid", [("ExtraDW", True, True), ("IB", False, True), ("ConvNeXt", True, False),
                                            ("FFN", False, False)])
def test_uib_variants(kind, start, mid):
    from models.blocks.uib import uib_kernels
    ks, km = uib_kernels(kind, 5)
    block = UIB(16, 16, ks, km, 1, 2.0)
    assert isinstance(block.dw_start, nn.Identity) != start and isinstance(block.dw_mid, nn.Identity) != mid
    expected = conv_bn(16, 32) + conv_bn(32, 16) + start * conv_bn(16, 16, 5, 16) + mid * conv_bn(32, 32, 5, 32)
    assert n_params(block) == expected
    assert block.add
    x = torch.randn(1, 16, 8, 8)
    nn.init.zeros_(block.project.bn.weight), nn.init.zeros_(block.project.bn.bias)
    assert torch.equal(block.eval()(x), x)  # residual path: a zero projection leaves the input
    if start or mid:
        down = UIB(16, 24, ks, km, 2)
        assert down(x).shape == (1, 24, 4, 4) and not down.add
        strided = down.dw_mid if mid else down.dw_start
        assert strided.conv.stride == (2, 2)


def test_droppath_only_in_training():
    dp = DropPath(0.5)
    x = torch.ones(4000, 1, 1, 1)
    y = dp.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0} and abs(y.mean().item() - 1.0) < 0.1
    assert torch.equal(dp.eval()(x), x)
    block = MBConv(16, 16, 3, 1, 4, 0.25, dp=0.9).train()
    x = torch.randn(64, 16, 4, 4)
    dropped = (block(x) == x).flatten(1).all(1)
    assert 0 < dropped.sum() < 64  # some samples skip the branch entirely, not all


def test_se_and_cbam_gates():
    se = SE(16, 4)
    nn.init.zeros_(se.fc2.weight), nn.init.constant_(se.fc2.bias, 2.0)
    x = torch.randn(2, 16, 5, 5)
    assert torch.allclose(se(x), x * torch.sigmoid(torch.tensor(2.0)))
    assert n_params(SE(16, 0.25)) == 16 * 4 + 4 + 4 * 16 + 16
    hs = SE(16, 8, nn.ReLU(), nn.Hardsigmoid())
    nn.init.zeros_(hs.fc2.weight), nn.init.constant_(hs.fc2.bias, 1.5)
    assert torch.allclose(hs(x), x * 0.75)  # hardsigmoid(1.5) = 1.5/6 + 0.5
    cbam = CBAM(16, 4, 7)
    for p in cbam.parameters():
        nn.init.zeros_(p)
    assert torch.allclose(cbam(x), x * 0.25)  # both gates sigmoid(0)
    assert CBAM(16)(torch.randn(1, 16, 9, 7)).shape == (1, 16, 9, 7)


def test_dw_separable():
    m = DWSConv(16, 32, 3, 2)
    assert n_params(m) == conv_bn(16, 16, 3, 16) + conv_bn(16, 32)
    assert m.dw.conv.groups == 16 and m(torch.randn(1, 16, 16, 16)).shape == (1, 32, 8, 8)


def test_hardswish_and_hardsigmoid_export_to_onnx():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    block = randomize_bn(MobileNetV3_Block(16, 24, 48, 3, 2, True, True)).eval()
    x = torch.randn(1, 16, 16, 16)
    f = io.BytesIO()
    torch.onnx.export(block, x, f, opset_version=17, input_names=["x"], output_names=["y"], dynamo=False)
    ops = {n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node}
    assert {"HardSwish", "HardSigmoid"} <= ops
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert abs(y - block(x).numpy()).max() < 1e-5


@pytest.mark.parametrize("cfg", ["yolov5n_ShuffleNetV2.yaml", "yolov5n_RepVGG.yaml", "yolov5n_ghost.yaml",
                                 "yolov5n_MobileNetV3.yaml", "yolov5n_EfficientNetV2.yaml", "yolov5n_C3UIB.yaml"])
def test_width_multiples_keep_block_constraints(cfg):
    """Even splits (ShuffleNet), grouped convs (RepVGG g=2, 4), ghost halves, SE and UIB widths survive any
    width_multiple (widths round up to multiples of 8; a violated constraint fails the build or the forward)."""
    sizes = []
    for gw in (0.1, 0.33, 0.6, 0.75, 1.1):
        d = yaml_dict(cfg)
        d["width_multiple"] = gw
        model = Model(d, verbose=False).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 64))[0].shape[1] == 3 * (64 + 16 + 4)
        sizes.append(n_params(model))
    assert sizes == sorted(set(sizes)), f"width_multiple not applied: {sizes}"  # strictly growing with gw


# ---------------------------------------------------------------- torchvision backbones

@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_torchvision_backbone_taps(name):
    bb = TorchVisionBackbone(3, name).eval()
    with torch.no_grad():
        outs = bb(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, c, 64 // s, 96 // s) for c, s in zip(BACKBONES[name].channels,
                                                                                     (8, 16, 32))]


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_v2_s",
                                  "resnet18"])
def test_torchvision_backbone_bn_folding(name):
    bb = randomize_bn(TorchVisionBackbone(3, name)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = bb(x)
        bb.reparameterize()
        out = bb(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    for a, b in zip(ref, out):
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())


def test_fold_batchnorms_only_folds_conv_bn_pairs():
    m = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    assert fold_batchnorms(m) == 0
    assert fold_batchnorms(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4).eval())) == 1


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_torchvision_backbone_loads_local_imagenet_weights(tmp_path, name):
    src = randomize_bn(getattr(torchvision.models, name)(weights=None), seed=3).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), path)
    bb = TorchVisionBackbone(3, name, str(path)).eval()
    matched, total = bb.loaded
    assert matched == total == len(bb.body.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = src.features[:BACKBONES[name].taps[-1] + 1](x) if hasattr(src, "features") else \
            src.stage4(src.stage3(src.stage2(src.maxpool(src.conv1(x)))))
        assert torch.allclose(bb(x)[2], ref, atol=1e-5)

    partial = src.state_dict()
    dropped = [k for k in partial if k.startswith(BACKBONES[name].prefix)][:3]
    for k in dropped:
        del partial[k]
    assert TorchVisionBackbone(3, name).load_weights(partial) == (total - 3, total)


def test_torchvision_backbone_weights_from_yaml_and_missing_file(tmp_path, capture_log):
    path = tmp_path / "sn.pth"
    torch.save({"model": torchvision.models.shufflenet_v2_x0_5(weights=None).state_dict()}, path)
    d = yaml_dict("yolov5n_tv_shufflenet_v2_x0_5.yaml")
    d["backbone"][0][3] = ["shufflenet_v2_x0_5", str(path)]
    with capture_log() as records:
        model = Model(d, verbose=False)
    n = len(model.model[0].body.state_dict())
    assert model.model[0].loaded == (n, n)
    assert any(f"transferred {n}/{n} tensors from {path}" in m for m in records)
    d["backbone"][0][3] = ["shufflenet_v2_x0_5", str(tmp_path / "absent.pth")]
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        Model(d, verbose=False)
    (tmp_path / "corrupt.pth").write_bytes(b"not a torch file")
    d["backbone"][0][3] = ["shufflenet_v2_x0_5", str(tmp_path / "corrupt.pth")]
    with pytest.raises(YamlError, match="row 0 .*corrupt.pth: not a readable torchvision state_dict"):
        Model(d, verbose=False)


def test_index_rows_are_checked():
    d = yaml_dict("yolov5n_tv_mobilenet_v3_small.yaml")
    d["backbone"][1] = [0, 1, "Index", [3]]
    with pytest.raises(YamlError, match=r"row 1 .*0\.\.2"):
        Model(d, verbose=False)
    d = yaml_dict("yolov5n_tv_mobilenet_v3_small.yaml")
    d["backbone"][4] = [3, 1, "Index", [0]]  # layer 3 has a single output
    with pytest.raises(YamlError, match="row 4"):
        Model(d, verbose=False)
    with pytest.raises(ValueError, match="unknown torchvision backbone"):
        TorchVisionBackbone(3, "alexnet")


# ---------------------------------------------------------------- ImageNet transfer into the yaml MobileNetV2

def test_transfer_mobilenet_v2_into_yaml_backbone(tmp_path):
    model = Model("yolov5_MobileNetv2.yaml", verbose=False).eval()
    tv = randomize_bn(relu6_to_relu(torchvision.models.mobilenet_v2(weights=None)), seed=5, eps=1e-3).eval()
    tv.features[0][2] = nn.SiLU()  # the yaml's stem is a plain Conv (SiLU); the blocks use ReLU as measured
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(tv.state_dict(), path)
    report = transfer_mobilenet_v2(model, str(path))
    assert report.matched == report.total == 306 and not report.skipped
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = x
        outs = []
        for layer in model.model[:13]:
            y = layer(y)
            outs.append(y)
        assert torch.allclose(outs[5], tv.features[:7](x), atol=1e-5)  # P3/8
        assert torch.allclose(outs[12], tv.features[:18](x), atol=1e-5)  # P5/32
    other = Model("yolov5n_MobileNetv2.yaml", verbose=False)
    before = copy.deepcopy(other.state_dict())
    report = transfer_mobilenet_v2(other, tv.state_dict())
    assert report.matched == 0 and len(report.skipped) == 13  # other widths: nothing is copied into wrong places
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_benchmark_row_and_table():
    from benchmarks.bench_models import bench_models, markdown_table
    row = bench_models(["yolov5n_MobileNetv2.yaml"], imgsz=64, runs=2, warmup=0)[0]
    assert 0 < row["latency_ms"] <= row["median_ms"]
    assert row["params"] == n_params(Model("yolov5n_MobileNetv2.yaml", verbose=False)) and row["gflops"] > 0
    table = markdown_table([row], 64, 1, 1)
    assert f"| `yolov5n_MobileNetv2.yaml` | {row['params']:,} | {row['gflops']:.1f} |" in table
    assert "python -m benchmarks.bench_models" in table


def test_row_reading_a_multi_output_backbone_directly_asks_for_an_index_row():
    d = yaml.safe_load((ROOT / "models" / "yolov5n_tv_mobilenet_v3_small.yaml").read_text())
    d["backbone"][1] = [0, 1, "Conv", [64, 1, 1]]  # reads the [P3, P4, P5] list itself
    with pytest.raises(YamlError, match=r"row 1 .*several outputs; select one with an Index row"):
        Model(d, verbose=False)
    d["backbone"][1] = [[0, 0], 1, "Conv", [64, 1, 1]]  # two sources where one is taken
    with pytest.raises(YamlError, match=r"row 1 .*'from' lists 2 layers"):
        Model(d, verbose=False)
