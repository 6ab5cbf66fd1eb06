"""ImageNet weights into yaml-built backbones by structure (utils/training/transfer.py, utils/training/imagenet.py).

Sources are state_dicts the tests make with the real key/shape layout of each published model: torchvision
builds its models without weights; timm's layouts are written out below from timm's model definitions (key
names, shapes and registration order as facts). Every source tensor gets its own value pattern, so 'landed in
the right place' is an exact comparison: the yaml backbone's tensors, in order, must equal the source's
backbone tensors in the published model's forward order (stated independently here, per family)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torchvision

import train
from models.yolo import Model
from tests.batchnorm import randomize_bn
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.training import load_hyp
from utils.training.callbacks import Callbacks
from utils.training.imagenet import (
    IMAGENET,
    PUBLISHED,
    find_imagenet_file,
    imagenet_weights,
    torchvision_files,
    transfer_imagenet,
)
from utils.training.transfer import backbone_layers, map_backbone, transfer_backbone

Layout = list[tuple[str, tuple[int, ...]]]


# ---------------------------------------------------------------- source state_dicts

def patterned(layout: Layout) -> dict[str, torch.Tensor]:
    """Tensor k holds k + (0..n-1)/n: values no other tensor has, and a position pattern within the tensor."""
    out = {}
    for k, (name, shape) in enumerate(layout):
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(k, dtype=torch.long)
        else:
            n = math.prod(shape)
            out[name] = (k + torch.arange(n, dtype=torch.float32) / n).reshape(shape)
    return out


def as_published(name: str, src: dict) -> dict:
    """`src` as torchvision's published files hold it: a module's state_dict (an OrderedDict with _metadata)."""
    model = getattr(torchvision.models, name)(weights=None)
    model.load_state_dict(src)
    return model.state_dict()


def torchvision_layout(name: str) -> Layout:
    return [(k, tuple(v.shape)) for k, v in getattr(torchvision.models, name)(weights=None).state_dict().items()]


def bn(p: str, c: int) -> Layout:
    return [(f"{p}.weight", (c,)), (f"{p}.bias", (c,)), (f"{p}.running_mean", (c,)), (f"{p}.running_var", (c,)),
            (f"{p}.num_batches_tracked", ())]


def conv(p: str, c1: int, c2: int, k: int, g: int = 1, bias: bool = False) -> Layout:
    return [(f"{p}.weight", (c2, c1 // g, k, k))] + ([(f"{p}.bias", (c2,))] if bias else [])


def conv_bn(p: str, c1: int, c2: int, k: int, g: int = 1, norm: str = "bn") -> Layout:
    """timm ConvNormAct/ConvBnAct: '<p>.conv' + '<p>.<norm>'."""
    return conv(f"{p}.conv", c1, c2, k, g) + bn(f"{p}.{norm}", c2)


def divisible(v: float, d: int = 8) -> int:
    """timm's make_divisible (nearest multiple, never 10% below)."""
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def timm_mobilenetv1_100() -> Layout:
    """timm mobilenetv1_100: conv_stem/bn1, blocks.<stage>.<i> DepthwiseSeparableConv (conv_dw, bn1, conv_pw, bn2);
    stages ('dsa' r1 c64 s1, r2 c128 s2, r2 c256 s2, r6 c512 s2, r2 c1024 s2), then the classifier."""
    out = conv("conv_stem", 3, 32, 3) + bn("bn1", 32)
    c1 = 32
    for s, (c2, r) in enumerate(((64, 1), (128, 2), (256, 2), (512, 6), (1024, 2))):
        for i in range(r):
            p = f"blocks.{s}.{i}"
            out += conv(f"{p}.conv_dw", c1, c1, 3, g=c1) + bn(f"{p}.bn1", c1)
            out += conv(f"{p}.conv_pw", c1, c2, 1) + bn(f"{p}.bn2", c2)
            c1 = c2
    return out + [("classifier.weight", (1000, 1024)), ("classifier.bias", (1000,))]


def timm_repvgg_a0() -> Layout:
    """timm repvgg_a0 (byobnet): stem and stages.<s>.<i> RepVggBlocks registering identity (BN, only at stride 1
    with equal widths) BEFORE conv_kxk and conv_1x1 (ConvNormAct); widths 48/96/192/1280, depths 2/4/14/1."""
    def block(p, c1, c2, stride=1):
        ident = bn(f"{p}.identity", c1) if c1 == c2 and stride == 1 else []
        return ident + conv_bn(f"{p}.conv_kxk", c1, c2, 3) + conv_bn(f"{p}.conv_1x1", c1, c2, 1)
    out, c1 = block("stem", 3, 48, 2), 48
    for s, (c2, d) in enumerate(((48, 2), (96, 4), (192, 14), (1280, 1))):
        for i in range(d):
            out += block(f"stages.{s}.{i}", c2 if i else c1, c2, 1 if i else 2)
        c1 = c2
    return out + [("head.fc.weight", (1000, 1280)), ("head.fc.bias", (1000,))]


def timm_mobilenetv4_conv_small() -> Layout:
    """timm mobilenetv4_conv_small: conv_stem/bn1; blocks.0-1 ConvBnAct (conv, bn1); blocks.2-3
    UniversalInvertedResidual (dw_start, pw_exp, dw_mid, pw_proj: ConvNormAct, absent when kernel 0; mid width
    make_divisible(in x ratio)); blocks.4 the 960-wide 1x1 ConvBnAct; conv_head, norm_head, classifier."""
    out = conv("conv_stem", 3, 32, 3) + bn("bn1", 32)
    cn = [("blocks.0.0", 32, 32, 3), ("blocks.0.1", 32, 32, 1), ("blocks.1.0", 32, 96, 3), ("blocks.1.1", 96, 64, 1)]
    for p, c1, c2, k in cn:
        out += conv_bn(p, c1, c2, k, norm="bn1")
    # (stage, c2, start kernel, middle kernel, expand ratio) per block, as in timm's arch_def
    uir = [(2, 96, 5, 5, 3)] + [(2, 96, 0, 3, 2)] * 4 + [(2, 96, 3, 0, 4), (3, 128, 3, 3, 6), (3, 128, 5, 5, 4),
                                                      (3, 128, 0, 5, 4), (3, 128, 0, 5, 3)] + [(3, 128, 0, 3, 4)] * 2
    c1, idx = 64, {2: 0, 3: 0}
    for stage, c2, a, k, e in uir:
        p = f"blocks.{stage}.{idx[stage]}"
        idx[stage] += 1
        mid = divisible(c1 * e)
        if a:
            out += conv_bn(f"{p}.dw_start", c1, c1, a, g=c1)
        out += conv_bn(f"{p}.pw_exp", c1, mid, 1)
        if k:
            out += conv_bn(f"{p}.dw_mid", mid, mid, k, g=mid)
        out += conv_bn(f"{p}.pw_proj", mid, c2, 1)
        c1 = c2
    out += conv_bn("blocks.4.0", 128, 960, 1, norm="bn1")
    return out + conv("conv_head", 960, 1280, 1) + bn("norm_head", 1280) + [("classifier.weight", (1000, 1280)),
                                                                             ("classifier.bias", (1000,))]


GHOSTNET_100 = [  # timm ghostnet_100 cfgs: stage -> [(k, mid, c2, se ratio, stride)]
    [(3, 16, 16, 0, 1)], [(3, 48, 24, 0, 2)], [(3, 72, 24, 0, 1)], [(5, 72, 40, 0.25, 2)], [(5, 120, 40, 0.25, 1)],
    [(3, 240, 80, 0, 2)],
    [(3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)],
    [(5, 672, 160, 0.25, 2)],
    [(5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)]]


def timm_ghostnet_100() -> Layout:
    """timm ghostnet_100: conv_stem/bn1; blocks.<s>.<i> GhostBottleneck: ghost1/ghost2 GhostModules (primary_conv
    1x1 + BN, cheap_operation 3x3 depthwise + BN, half the width each), conv_dw/bn_dw at stride 2, se
    (conv_reduce/conv_expand with bias, width make_divisible(mid/4, 4)), shortcut (dw, BN, 1x1, BN) when the
    shape changes; blocks.9 the 960-wide 1x1 ConvBnAct; conv_head (bias), classifier."""
    def ghost(p, c1, c2):
        c_ = (c2 + 1) // 2
        return (conv(f"{p}.primary_conv.0", c1, c_, 1) + bn(f"{p}.primary_conv.1", c_) +
                conv(f"{p}.cheap_operation.0", c_, c_, 3, g=c_) + bn(f"{p}.cheap_operation.1", c_))
    out, c1 = conv("conv_stem", 3, 16, 3) + bn("bn1", 16), 16
    for s, stage in enumerate(GHOSTNET_100):
        for i, (k, mid, c2, se, stride) in enumerate(stage):
            p = f"blocks.{s}.{i}"
            out += ghost(f"{p}.ghost1", c1, mid)
            if stride > 1:
                out += conv(f"{p}.conv_dw", mid, mid, k, g=mid) + bn(f"{p}.bn_dw", mid)
            if se:
                rd = divisible(mid * se, 4)
                out += conv(f"{p}.se.conv_reduce", mid, rd, 1, bias=True) + conv(f"{p}.se.conv_expand", rd, mid, 1,
                                                                                  bias=True)
            out += ghost(f"{p}.ghost2", mid, c2)
            if c1 != c2 or stride > 1:
                out += (conv(f"{p}.shortcut.0", c1, c1, k, g=c1) + bn(f"{p}.shortcut.1", c1) +
                        conv(f"{p}.shortcut.2", c1, c2, 1) + bn(f"{p}.shortcut.3", c2))
            c1 = c2
    out += conv_bn("blocks.9.0", 160, 960, 1, norm="bn1")
    return out + conv("conv_head", 960, 1280, 1, bias=True) + [("classifier.weight", (1000, 1280)),
                                                              ("classifier.bias", (1000,))]


def repvgg_forward_order(keys: list[str]) -> list[str]:
    """timm registers a RepVGG block's identity BN first; the block computes dense + 1x1 + identity, the yaml
    block's order: move each block's identity keys after its branches."""
    out, ident = [], []
    block = None
    for k in keys:
        b = k.split(".identity.")[0] if ".identity." in k else k.rsplit(".conv_", 1)[0] if ".conv_" in k else None
        if b != block:
            out, ident, block = out + ident, [], b
        (ident if ".identity." in k else out).append(k)
    return out + ident


# yaml, source layout, forward-order fix, key prefixes of the source's non-backbone tail (head, classifier)
FAMILIES = {
    "mobilenet_v2": ("yolov5_MobileNetv2.yaml", lambda: torchvision_layout("mobilenet_v2"), None,
                     ("features.18.", "classifier.")),
    "mobilenet_v3_small": ("yolov5n_MobileNetV3_small.yaml", lambda: torchvision_layout("mobilenet_v3_small"), None,
                           ("features.12.", "classifier.")),
    "mobilenet_v3_large": ("yolov5s_MobileNetV3_large.yaml", lambda: torchvision_layout("mobilenet_v3_large"), None,
                           ("features.16.", "classifier.")),
    "shufflenet_v2_x0_5": ("yolov5n_ShuffleNetV2_x0_5.yaml", lambda: torchvision_layout("shufflenet_v2_x0_5"), None,
                           ("conv5.", "fc.")),
    "shufflenet_v2_x1_5": ("yolov5s_ShuffleNetV2_x1_5.yaml", lambda: torchvision_layout("shufflenet_v2_x1_5"), None,
                           ("conv5.", "fc.")),
    "efficientnet_v2_s": ("yolov5s_EfficientNetV2_s.yaml", lambda: torchvision_layout("efficientnet_v2_s"), None,
                          ("features.7.", "classifier.")),
    "tv_mobilenet_v3_small": ("yolov5n_tv_mobilenet_v3_small.yaml", lambda: torchvision_layout("mobilenet_v3_small"),
                              None, ("features.12.", "classifier.")),
    "timm_mobilenetv1_100": ("yolov5n_MobileNetV1_100.yaml", timm_mobilenetv1_100, None, ("classifier.",)),
    "timm_repvgg_a0": ("yolov5n_RepVGG_A0.yaml", timm_repvgg_a0, repvgg_forward_order, ("head.",)),
    "timm_mobilenetv4_conv_small": ("yolov5n_MobileNetV4_conv_small.yaml", timm_mobilenetv4_conv_small, None,
                                    ("blocks.4.", "conv_head.", "norm_head.", "classifier.")),
    "timm_ghostnet_100": ("yolov5n_GhostNet_100.yaml", timm_ghostnet_100, None,
                          ("blocks.9.", "conv_head.", "classifier.")),
}


def backbone_keys(model: Model) -> list[str]:
    rows = {i for i, _ in backbone_layers(model)}
    return [k for k in model.state_dict() if int(k.split(".")[1]) in rows]


# ---------------------------------------------------------------- every family: every tensor in its place

@pytest.mark.parametrize("family", FAMILIES)
def test_every_backbone_tensor_lands_in_place(family):
    cfg, make, order, tail = FAMILIES[family]
    model = Model(cfg, verbose=False)
    src = patterned(make())
    report = map_backbone(model, src)
    dst = backbone_keys(model)
    assert report.matched == report.total == len(dst) and not report.skipped, str(report)
    src_keys = (order or list)(list(src))
    assert all(k.startswith(tail) for k in src_keys[len(dst):]), src_keys[len(dst):len(dst) + 3]
    sd = model.state_dict()
    for dk, sk in zip(dst, src_keys):
        assert torch.equal(sd[dk], src[sk].to(sd[dk].dtype)), f"{dk} did not receive {sk}"
    assert f"transferred {len(dst)}/{len(dst)} tensors" in str(report)


def test_published_table_names_yamls_that_fit():
    """Every PUBLISHED row is one of the families above (so its fit is tested) and its yaml exists."""
    tested = {FAMILIES[f][0] for f in FAMILIES}
    assert set(PUBLISHED) <= tested
    assert torchvision_files("shufflenet_v2_x0_5")[0] == "shufflenetv2_x0.5-f707e7126e.pth"
    assert torchvision_files("mobilenet_v2") == ["mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth"]


def test_files_without_num_batches_tracked_still_fit():
    """Pre-0.4.1 BatchNorms have no num_batches_tracked: shapes decide the fit, the counter keeps its value."""
    model = Model("yolov5n_ShuffleNetV2_x0_5.yaml", verbose=False)
    src = {k: v for k, v in patterned(torchvision_layout("shufflenet_v2_x0_5")).items()
           if not k.endswith("num_batches_tracked")}
    report = map_backbone(model, src)
    assert report.matched == report.total == 330
    assert int(model.model[1].branch1[0].bn.num_batches_tracked) == 0
    assert torch.equal(model.model[1].branch1[0].bn.running_var, src["stage2.0.branch1.1.running_var"])


def test_wrapped_files_and_odd_counters():
    """A DataParallel-saved file ('module.' prefix) maps the same; a counter of the wrong shape is left alone."""
    model = Model("yolov5n_MobileNetV3_small.yaml", verbose=False)
    src = {f"module.{k}": v for k, v in patterned(torchvision_layout("mobilenet_v3_small")).items()}
    src["module.features.0.1.num_batches_tracked"] = torch.zeros(5, dtype=torch.long)
    report = map_backbone(model, src)
    assert report.matched == report.total == 234
    assert torch.equal(model.model[0].conv.conv.weight, src["module.features.0.0.weight"])
    assert int(model.model[0].conv.bn.num_batches_tracked) == 0


def test_mapped_shufflenet_computes_what_torchvision_computes():
    """Placement checked by function too: the yaml backbone's P3/P4/P5 equal torchvision's stage2/3/4 outputs."""
    tv = randomize_bn(torchvision.models.shufflenet_v2_x0_5(weights=None), seed=1, eps=1e-3).eval()
    model = Model("yolov5n_ShuffleNetV2_x0_5.yaml", verbose=False).eval()
    assert transfer_backbone(model, tv.state_dict()).matched == 330
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y, outs = x, []
        for layer in model.model[:7]:
            y = layer(y)
            outs.append(y)
        p3 = tv.stage2(tv.maxpool(tv.conv1(x)))
        p4 = tv.stage3(p3)
        p5 = tv.stage4(p4)
    # the same convs on the same values in the same order; 1e-5 allows a different summation order in a kernel
    for a, b in ((outs[2], p3), (outs[4], p4), (outs[6], p5)):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


# ---------------------------------------------------------------- files that do not fit

def test_nano_widths_fit_nothing_and_nothing_changes(capture_log):
    """yolov5n_MobileNetv2 (width 0.25) against the 1.0x file: 0/N, the first unmatched keys, a warning, no change."""
    model = Model("yolov5n_MobileNetv2.yaml", verbose=False)
    before = copy.deepcopy(model.state_dict())
    with capture_log() as lines:
        report = transfer_backbone(model, patterned(torchvision_layout("mobilenet_v2")), source="mv2.pth")
    n = len(backbone_keys(model))
    assert (report.matched, report.total) == (0, n) and len(report.skipped) == 13
    assert report.unmatched_dst[0] == "model.0.conv.weight (8, 3, 3, 3)"
    assert report.unmatched_src[0] == "features.0.0.weight (32, 3, 3, 3)"
    assert f"transferred 0/{n} tensors" in lines.text and "WARNING: nothing in mv2.pth fits" in lines.text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("cfg, family", [
    ("yolov5s_MobileNetv2.yaml", "mobilenet_v2"), ("yolov5s_MobileNetV3.yaml", "mobilenet_v3_large"),
    ("yolov5s_ShuffleNetV2.yaml", "shufflenet_v2_x0_5"), ("yolov5s_EfficientNetV2.yaml", "efficientnet_v2_s"),
    ("yolov5n_MobileNetV1.yaml", "timm_mobilenetv1_100"), ("yolov5s_RepVGG.yaml", "timm_repvgg_a0"),
    ("yolov5n_C3UIB.yaml", "timm_mobilenetv4_conv_small"), ("yolov5s_ghost.yaml", "timm_ghostnet_100")])
def test_width_scaled_yamls_take_nothing(cfg, family):
    """The README's claim: the 0.25/0.5-width yamls (and the CSP-layout ones) fit no published file, so the report
    says 0/N and the model is untouched, rather than some blocks silently taking weights from elsewhere."""
    model = Model(cfg, verbose=False)
    before = copy.deepcopy(model.state_dict())
    report = map_backbone(model, patterned(FAMILIES[family][1]()))
    assert report.matched == 0 and report.total == len(backbone_keys(model)) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_shape_change_mid_network_ends_the_chain():
    """Units after the first misfit keep their values even where shapes would fit again: no weights from elsewhere."""
    model = Model("yolov5n_ShuffleNetV2_x0_5.yaml", verbose=False)
    layout = torchvision_layout("shufflenet_v2_x0_5")
    layout = [(k, (s[0] + 2, *s[1:]) if k == "stage3.0.branch2.0.weight" else s) for k, s in layout]
    report = map_backbone(model, patterned(layout))
    assert report.pairs[-1] == ("model.2.2", "stage2.3") and report.skipped[0] == "model.3"
    assert 0 < report.matched < report.total


def test_fewer_repeats_than_the_file_take_the_first_blocks_of_each_stage():
    """depth_multiple 0.33 on the x0.5 rows: each stage keeps its first blocks, the file's extra repeats are skipped."""
    d = Model("yolov5n_ShuffleNetV2_x0_5.yaml", verbose=False).yaml
    d["depth_multiple"] = 0.33  # repeats 3 -> 1, 7 -> 2
    model = Model(d, verbose=False)
    report = map_backbone(model, patterned(torchvision_layout("shufflenet_v2_x0_5")))
    assert report.matched == report.total
    assert report.pairs[:5] == [("model.0", "conv1"), ("model.1", "stage2.0"), ("model.2", "stage2.1"),
                                ("model.3", "stage3.0"), ("model.4.0", "stage3.1")]


def write_safetensors(sd: dict, path) -> None:
    """The safetensors layout (8-byte little-endian header size, JSON header with keys sorted, raw little-endian
    data), written here so the tests need no safetensors package."""
    header, chunks, offset = {}, [], 0
    for k in sorted(sd):
        b = sd[k].contiguous().numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(sd[k].shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(chunks))


def test_unreadable_and_missing_files(tmp_path):
    model = Model("yolov5n_ShuffleNetV2_x0_5.yaml", verbose=False)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        transfer_backbone(model, tmp_path / "absent.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pth: not a readable torchvision state_dict"):
        transfer_backbone(model, tmp_path / "bad.pth")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "notsd.pth")
    with pytest.raises(ValueError, match="notsd.pth: not an ImageNet state_dict"):
        transfer_backbone(model, tmp_path / "notsd.pth")
    write_safetensors(patterned(timm_repvgg_a0()), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="safetensors files list tensors sorted by name"):  # the order is lost
        transfer_backbone(model, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        imagenet_weights(str(tmp_path / "model.safetensors"), "yolov5n_RepVGG_A0.yaml")


# ---------------------------------------------------------------- train.py --weights and the hub cache

def build(tmp_path, *argv: str) -> train.Run:
    r = train.Run(train.parse_opt(argv=list(argv)), load_hyp("hyp.scratch-low.yaml"), torch.device("cpu"),
                  Callbacks(), tmp_path)
    r.nc, r.names = 2, {0: "a", 1: "b"}
    return r


def test_train_weights_backbone_file(tmp_path, capture_log):
    """train.py --cfg X.yaml --weights backbone.pth: recognised, mapped, reported; the head stays as built."""
    src = patterned(torchvision_layout("shufflenet_v2_x0_5"))
    torch.save({"state_dict": as_published("shufflenet_v2_x0_5", src)}, tmp_path / "sn.pth")  # a training script's
    r = build(tmp_path, "--cfg", "yolov5n_ShuffleNetV2_x0_5.yaml", "--weights", str(tmp_path / "sn.pth"))
    with capture_log() as lines:
        assert train.build_model(r) is None
    assert f"ImageNet backbone from {tmp_path / 'sn.pth'}: transferred 330/330 tensors" in lines.text
    assert torch.equal(r.model.model[1].branch1[0].conv.weight, src["stage2.0.branch1.0.weight"])
    with pytest.raises(ValueError, match="holds ImageNet backbone weights.*pass --cfg"):
        imagenet_weights(str(tmp_path / "sn.pth"), "")


def test_yaml_pretrained_key(tmp_path, capture_log):
    """A yaml's `pretrained: file` does what --weights file does when --weights is empty; a bad file there fails."""
    src = patterned(torchvision_layout("shufflenet_v2_x0_5"))
    torch.save(as_published("shufflenet_v2_x0_5", src), tmp_path / "sn.pth")
    d = Model("yolov5n_ShuffleNetV2_x0_5.yaml", verbose=False).yaml
    d["pretrained"] = str(tmp_path / "sn.pth")
    r = build(tmp_path, "--cfg", "yolov5n_ShuffleNetV2_x0_5.yaml")
    r.opt.cfg = d
    with capture_log() as lines:
        train.build_model(r)
    assert f"ImageNet backbone from {tmp_path / 'sn.pth'}: transferred 330/330 tensors" in lines.text
    assert torch.equal(r.model.model[6][2].branch2[2].bn.running_mean, src["stage4.3.branch2.6.running_mean"])
    d["pretrained"] = str(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        imagenet_weights("", d)
    assert imagenet_weights(str(tmp_path / "sn.pth"), d) is not None  # --weights given: the key is not read


def test_train_weights_checkpoint_keeps_its_meaning(tmp_path):
    """A project checkpoint, a corrupt file or a missing one are not ImageNet sources: train.py goes on as before."""
    model = Model("yolov5n.yaml", verbose=False)
    save_checkpoint(make_checkpoint(model), tmp_path / "best.pt")
    assert imagenet_weights(str(tmp_path / "best.pt"), "yolov5n.yaml") is None
    torch.save({"model": model, "epoch": 3}, tmp_path / "yolov5.pt")  # YOLOv5's layout: the module pickled whole
    assert imagenet_weights(str(tmp_path / "yolov5.pt"), "yolov5n.yaml") is None
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert imagenet_weights(str(tmp_path / "bad.pt"), "yolov5n.yaml") is None
    assert imagenet_weights(str(tmp_path / "absent.pt"), "yolov5n.yaml") is None
    assert imagenet_weights("", "yolov5n.yaml") is None


def test_weights_imagenet_from_the_hub_cache(tmp_path, monkeypatch, capture_log):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = Model("yolov5n_MobileNetV3_small.yaml", verbose=False)
    with pytest.raises(FileNotFoundError, match=f"mobilenet_v3_small-047dcff4.pth in {tmp_path}/hub/checkpoints/"):
        find_imagenet_file(model)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    src = patterned(torchvision_layout("mobilenet_v3_small"))
    torch.save(as_published("mobilenet_v3_small", src), cache / "mobilenet_v3_small-047dcff4.pth")
    assert imagenet_weights(IMAGENET, "yolov5n_MobileNetV3_small.yaml") == IMAGENET
    with capture_log() as lines:
        report = transfer_imagenet(model, IMAGENET, IMAGENET)
    assert report.matched == report.total == 234 and "mobilenet_v3_small-047dcff4.pth: transferred" in lines.text
    tv_model = Model("yolov5n_tv_mobilenet_v3_small.yaml", verbose=False)  # TorchVisionBackbone: its own name
    assert find_imagenet_file(tv_model).name == "mobilenet_v3_small-047dcff4.pth"
    with pytest.raises(FileNotFoundError, match="timm's repvgg_a0 weights.*--weights path/to/repvgg_a0.pth"):
        find_imagenet_file(Model("yolov5n_RepVGG_A0.yaml", verbose=False))
    with pytest.raises(ValueError, match="no published ImageNet file is known to fill yolov5n.yaml"):
        find_imagenet_file(Model("yolov5n.yaml", verbose=False))
