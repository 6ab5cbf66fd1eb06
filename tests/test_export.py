"""export.py and utils/backends.py: every model yaml exports to ONNX and TorchScript graphs that compute what the
fused PyTorch model computes (fixed and dynamic shapes), --nms graphs return the Python NMS boxes, --raw graphs
decode to the same predictions, INT8 quantisation keeps the head in float, and exported files carry their
stride/names so the shared backend (and val.py) run them like the .pt file.

Models are built once per module at 64-128 px, so the whole file stays within a few minutes on 2 cores.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

import export
from models.yolo import Model
from tests.detections import FP32_BOX_REL, FP32_SCORE_TOL, compare_detections
from utils.backends import BackendError, DetectBackend, decode_raw, parse_names
from utils.inference.nms import non_max_suppression

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

YAMLS = sorted(p.name for p in (ROOT / "models").glob("*.yaml"))
FIXED = (64, 96)  # (h, w): non-square so a swapped h/w shows up
DYN_TRACE, DYN_RUN = (1, 3, 64, 64), (2, 3, 96, 128)  # dynamic graphs traced at one shape, run at another


def _lively(model, seed: int = 0):
    """A freshly built model whose outputs vary like a trained one's, so parity tests mean something.

    Default init leaves deep features nearly constant across positions, so a fresh head predicts almost the same
    score everywhere (boxes tie; a wrong spatial op could hide). Here BatchNorm gets random affine terms and
    statistics (folding them is then visible), and the head's 1x1 convs are fitted to standardise their inputs per
    channel on a calibration batch: logits of unit spread around 0, obj/cls near 0.5, hundreds of distinct scores.
    """
    g = torch.Generator().manual_seed(seed)
    det = model.model[-1]
    feats = []
    model.eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 0.5 + 0.75)
        hook = det.register_forward_pre_hook(lambda m, inp: feats.extend(x.clone() for x in inp[0]))
        model(torch.rand((2, 3, 64, 64), generator=g))
        hook.remove()
        for conv, f in zip(det.m, feats):
            mean, std = f.mean((0, 2, 3)), f.std((0, 2, 3)).clamp(min=1e-6)
            w = torch.randn(conv.weight.shape, generator=g) / conv.weight.shape[1] ** 0.5 / std.view(1, -1, 1, 1)
            # ReLU nets have dead channels (std 0 here): a 1/std weight would blow rounding noise up to 1e-3 logits
            w[:, std < 1e-3 * std.median()] = 0.0
            b = torch.randn(det.na, det.no, generator=g) * 0.3
            b[:, :4] = 0.0  # boxes around the anchors, not at the (2 sigma)^2 limit
            conv.weight.copy_(w)
            conv.bias.copy_(b.view(-1) - (w.flatten(1) * mean).sum(1))
    return model


def _yaml_dict(name: str) -> dict:
    d = yaml.safe_load((ROOT / "models" / name).read_text())
    d["yaml_file"] = name
    return d


@functools.cache
def _build(name: str):
    d = _yaml_dict(name)
    # m/l/x-sized: same rows, smaller. yolov5{n,s}_* yamls are small as written (those at the published ImageNet
    # widths have multiples 1.0 and nano heads): shrunk to 0.25 their thin ReLU stacks amplify rounding noise
    if not name.startswith(("yolov5n", "yolov5s")) and (d.get("depth_multiple", 1) > 0.5 or
                                                        d.get("width_multiple", 1) > 0.5):
        d["depth_multiple"], d["width_multiple"] = 0.33, min(d.get("width_multiple", 1), 0.25)
    torch.manual_seed(0)
    return export.load_model(_lively(Model(d, verbose=False)), torch.device("cpu"))


_CACHE: dict[str, dict] = {}



@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


def exported(name: str, outdir: Path) -> dict:
    """Fused model + its fixed ONNX, dynamic ONNX and TorchScript files, built once per yaml per module."""
    if name not in _CACHE:
        model = _build(name)
        stem = outdir / Path(name).stem
        meta = export.export_metadata(model, FIXED, 1, "decoded", False)
        fixed = export.export_onnx(model, torch.zeros(1, 3, *FIXED), stem.with_suffix(".onnx"), metadata=meta)
        dyn = export.export_onnx(model, torch.zeros(DYN_TRACE), stem.parent / f"{stem.name}_dyn.onnx", dynamic=True,
                                 metadata=export.export_metadata(model, DYN_TRACE[2:], 1, "decoded", True))
        ts = export.export_torchscript(model, torch.zeros(1, 3, *FIXED), stem.with_suffix(".torchscript"),
                                       metadata=meta)
        _CACHE[name] = {"model": model, "fixed": fixed, "dynamic": dyn, "ts": ts}
    return _CACHE[name]


def _session(f, optimise: bool = True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimise:  # run every node as written (no fusion of Q/DQ pairs into integer kernels)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])


def assert_same_predictions(y: torch.Tensor, ref: torch.Tensor):
    """Boxes within 1e-4 of the box scale (pixels), obj/class scores within 1e-4 absolute."""
    assert y.shape == ref.shape, (y.shape, ref.shape)
    box_scale = float(ref[..., :4].abs().max().clamp(min=1.0))
    db = (y[..., :4] - ref[..., :4]).abs().max().item()
    ds = (y[..., 4:] - ref[..., 4:]).abs().max().item()
    assert db <= 1e-4 * box_scale, f"box diff {db:.3g} > {1e-4 * box_scale:.3g}"
    assert ds <= 1e-4, f"score diff {ds:.3g}"


def _inputs(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------- every yaml: parity
@pytest.mark.parametrize("name", YAMLS)
def test_onnx_fixed_shape_matches_fused_pytorch(name, outdir):
    e = exported(name, outdir)
    x = _inputs((1, 3, *FIXED))
    with torch.no_grad():
        ref = e["model"](x)[0]
    y = torch.from_numpy(_session(e["fixed"]).run(None, {"images": x.numpy()})[0])
    assert_same_predictions(y, ref)
    # the graph is the fused one, in standard ops only (hard-swish/-sigmoid/SiLU included)
    proto = onnx.load(str(e["fixed"]))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in e["model"].modules())
    if any(isinstance(m, torch.nn.Hardswish) for m in e["model"].modules()):
        assert "HardSwish" in ops
    if any(isinstance(m, torch.nn.Hardsigmoid) for m in e["model"].modules()):
        assert "HardSigmoid" in ops
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["output0"]


@pytest.mark.parametrize("name", YAMLS)
def test_onnx_dynamic_shape_matches_fused_pytorch(name, outdir):
    e = exported(name, outdir)
    x = _inputs(DYN_RUN, seed=1)  # batch 2 and a different h, w from the traced shape
    with torch.no_grad():
        ref = e["model"](x)[0]
    y = torch.from_numpy(_session(e["dynamic"]).run(None, {"images": x.numpy()})[0])
    assert_same_predictions(y, ref)


@pytest.mark.parametrize("name", YAMLS)
def test_torchscript_matches_fused_pytorch(name, outdir):
    e = exported(name, outdir)
    ts = torch.jit.load(str(e["ts"]))
    for shape, seed in (((1, 3, *FIXED), 0), (DYN_RUN, 1)):  # the traced shape, then another batch and size
        x = _inputs(shape, seed)
        with torch.no_grad():
            assert_same_predictions(ts(x), e["model"](x)[0])


# ------------------------------------------------------------------------------------------ graph variants
NANO = "yolov5n_MobileNetV3.yaml" if (ROOT / "models" / "yolov5n_MobileNetV3.yaml").is_file() else "yolov5n.yaml"


def _box_tol(ref: list[torch.Tensor]) -> float:
    """FP32_BOX_REL of the largest box coordinate (the box scale assert_same_predictions uses)."""
    return FP32_BOX_REL * max([float(r[:, :4].abs().max()) for r in ref if len(r)] + [1.0])


def test_nms_graph_returns_python_nms_boxes(outdir):
    model = _build(NANO)
    x = _inputs((2, 3, 96, 128), seed=3)  # dynamic graphs traced at batch 1, 64x64
    with torch.no_grad():
        pred = model(x)[0]
    for agnostic, max_det in ((False, 40), (True, 1000)):
        args = {"conf_thres": 0.3, "iou_thres": 0.45, "max_det": max_det, "agnostic": agnostic}
        meta = export.export_metadata(model, (64, 64), 1, "nms", True, nms_args=args)
        fo = export.export_onnx(model, torch.zeros(1, 3, 64, 64), outdir / f"nms{int(agnostic)}.onnx", dynamic=True,
                                graph="nms", nms_args=args, metadata=meta)
        ft = export.export_torchscript(model, torch.zeros(1, 3, 64, 64), outdir / f"nms{int(agnostic)}.torchscript",
                                       graph="nms", nms_args=args, metadata=meta)
        ref = non_max_suppression(pred, args["conf_thres"], args["iou_thres"], agnostic=agnostic, max_det=max_det)
        assert all(len(r) > 10 for r in ref)
        assert any(len(r) == max_det for r in ref) if max_det < 100 else all(len(r) < max_det for r in ref)
        rows = _session(fo).run(None, {"images": x.numpy()})[0]
        assert rows.shape[1] == 7 and set(rows[:, 0]) == {0.0, 1.0}  # (batch index, x1, y1, x2, y2, conf, cls)
        for f in (fo, ft):
            b = DetectBackend(f, trusted=True)  # our own export: TorchScript needs the opt-in
            assert b.end2end and b.format == "nms"
            with torch.no_grad():
                got = b(x)
            matched, _ = compare_detections(got, ref, score_tol=FP32_SCORE_TOL, box_tol=_box_tol(ref), max_det=max_det,
                                            agnostic=agnostic, conf_thres=args["conf_thres"],
                                            iou_thres=args["iou_thres"])
            assert matched >= 0.9 * sum(len(r) for r in ref)  # near-ties are a few rows, not most of them


def test_raw_graph_decodes_to_decoded_output(outdir):
    model = _build(NANO)
    meta = export.export_metadata(model, FIXED, 1, "raw", False)
    f = export.export_onnx(model, torch.zeros(1, 3, *FIXED), outdir / "raw.onnx", graph="raw", metadata=meta)
    proto = onnx.load(str(f))
    assert [o.name for o in proto.graph.output] == ["output0", "output1", "output2"]
    x = _inputs((1, 3, *FIXED), seed=4)
    outs = _session(f).run(None, {"images": x.numpy()})
    det = model.model[-1]
    assert [o.shape for o in outs] == [(1, det.na, FIXED[0] // int(s), FIXED[1] // int(s), det.no) for s in det.stride]
    with torch.no_grad():
        ref = model(x)[0]
    anchors = json.loads(meta["anchors"])
    assert_same_predictions(decode_raw([torch.from_numpy(o) for o in outs], anchors, json.loads(meta["strides"])), ref)
    with torch.no_grad():
        assert_same_predictions(DetectBackend(f)(x), ref)


# -------------------------------------------------------------------------------- run(), files and backends
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from utils.checkpoint import make_checkpoint, save_checkpoint
    torch.manual_seed(0)
    model = _lively(Model(NANO, nc=3, verbose=False))
    model.names = {0: "red", 1: "green", 2: "blue"}
    return save_checkpoint(make_checkpoint(model), tmp_path_factory.mktemp("w") / "best.pt")


def test_run_writes_files_next_to_weights_with_metadata(checkpoint):
    files = export.run(weights=checkpoint, imgsz=(64, 96), include=("onnx", "torchscript"))
    assert files == [str(checkpoint.with_suffix(".onnx")), str(checkpoint.with_suffix(".torchscript"))]
    meta = {p.key: p.value for p in onnx.load(files[0]).metadata_props}
    assert meta["stride"] == "32" and meta["format"] == "decoded" and json.loads(meta["imgsz"]) == [64, 96]
    assert json.loads(meta["names"]) == {"0": "red", "1": "green", "2": "blue"}
    assert json.loads(meta["yaml"])["backbone"] and json.loads(meta["dynamic"]) is False
    pt = DetectBackend(checkpoint)
    x = _inputs((1, 3, 64, 96), seed=5)
    with torch.no_grad():
        ref = pt(x)
        for f in files:
            b = DetectBackend(f, trusted=True)  # our own export: TorchScript needs the opt-in
            assert (b.stride, b.names, b.nc, b.fixed_imgsz) == (32, {0: "red", 1: "green", 2: "blue"}, 3, (64, 96))
            assert (b.onnx, b.jit, b.pt) == (f.endswith(".onnx"), f.endswith(".torchscript"), False)
            assert_same_predictions(b(x), ref)
        with pytest.raises(BackendError, match="exported for 64x96"):
            DetectBackend(files[0])(torch.zeros(1, 3, 64, 64))


def test_imgsz_rounded_to_stride_with_warning(checkpoint, tmp_path, capture_log):
    with capture_log() as records:
        f = export.run(weights=checkpoint, imgsz=[70], include="onnx", file=tmp_path / "r")[0]
    assert any("multiple of max stride 32" in m for m in records)
    shape = [d.dim_value for d in onnx.load(f).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 3, 96, 96]


def test_bad_requests_are_one_line_errors(checkpoint, tmp_path, monkeypatch):
    with pytest.raises(export.ExportError, match="unknown format.*supported: torchscript, onnx"):
        export.run(weights=checkpoint, include=("tflite",))
    with pytest.raises(export.ExportError, match="CUDA"):
        export.run(weights=checkpoint, include="onnx", half=True, device="cpu")
    with pytest.raises(export.ExportError, match="exclusive"):
        export.run(weights=checkpoint, include="onnx", nms=True, raw=True)
    with pytest.raises(export.ExportError, match="--int8 needs --data"):
        export.run(weights=checkpoint, include="onnx", int8=True)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        export.run(weights=tmp_path / "nope.pt", include="onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the package were not installed
    with pytest.raises(ImportError, match="pip install onnx"):
        export.run(weights=checkpoint, include="onnx")


def test_cli_bad_requests_exit_1_with_one_line_error(checkpoint, tmp_path, capture_log):
    with capture_log(level=logging.ERROR) as records:
        for args, msg in ((["--weights", str(checkpoint), "--include", "tflite"], "--include tflite: unknown format"),
                          (["--weights", str(tmp_path / "nope.pt"), "--include", "onnx"], "nope.pt' not found")):
            records.clear()
            assert export.main(export.parse_opt(args)) == 1
            errors = list(records)
            assert len(errors) == 1 and msg in errors[0] and "\n" not in errors[0], errors


def test_half_with_dynamic_rejected_before_any_work(checkpoint):
    # refused on any machine, before the device is looked at
    with pytest.raises(export.ExportError, match="--half and --dynamic cannot be combined"):
        export.run(weights=checkpoint, include="onnx", half=True, dynamic=True)


def test_backend_errors(tmp_path, checkpoint, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        DetectBackend(tmp_path / "missing.onnx")
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(BackendError, match="unsupported weights suffix '.engine'"):
        DetectBackend(tmp_path / "m.engine")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BackendError, match="bad.onnx"):
        DetectBackend(bad)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        DetectBackend(bad)


def test_yolov5_style_metadata_and_names_parsing(outdir, tmp_path):
    e = exported(NANO, outdir)
    proto = onnx.load(str(e["fixed"]))
    del proto.metadata_props[:]
    nc = e["model"].model[-1].nc
    for k, v in {"stride": "32", "names": str({i: f"c{i}" for i in range(nc)})}.items():  # YOLOv5's str(dict)
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    f = tmp_path / "v5.onnx"
    onnx.save(proto, str(f))
    b = DetectBackend(f)
    assert b.stride == 32 and b.names[1] == "c1" and len(b.names) == nc and b.format == "decoded"
    assert parse_names('{"0": "a", "1": "b"}') == {0: "a", 1: "b"} == parse_names(["a", "b"])
    assert parse_names("not names") == {}


def test_simplify_uses_onnxslim_when_installed(outdir, tmp_path, monkeypatch):
    model = exported(NANO, outdir)["model"]
    calls = []

    class FakeSlim:
        __version__ = "test"

        @staticmethod
        def slim(proto):
            calls.append(len(proto.graph.node))
            return proto

    monkeypatch.setitem(sys.modules, "onnxslim", FakeSlim)
    meta = export.export_metadata(model, FIXED, 1, "decoded", False)
    f = export.export_onnx(model, torch.zeros(1, 3, *FIXED), tmp_path / "s.onnx", simplify=True, metadata=meta)
    assert calls and calls[0] > 10
    assert {p.key: p.value for p in onnx.load(str(f)).metadata_props}["stride"] == "32"
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # not installed: a warning and the plain graph
    f2 = export.export_onnx(model, torch.zeros(1, 3, *FIXED), tmp_path / "s2.onnx", simplify=True, metadata=meta)
    assert f2.is_file() and len(calls) == 1  # the uninstalled simplifier was not called



@pytest.mark.parametrize("dynamic", [False, True])
def test_simplify_with_real_onnxslim_keeps_outputs_and_metadata(outdir, tmp_path, dynamic):
    pytest.importorskip("onnxslim")  # in requirements.txt; skipped only where someone removed it
    name = "yolov5n_ShuffleNetV2.yaml"  # channel shuffle + split: the reshapes a simplifier most likes to rewrite
    e = exported(name, outdir)
    shape = DYN_TRACE if dynamic else (1, 3, *FIXED)
    meta = export.export_metadata(e["model"], shape[2:], 1, "decoded", dynamic)
    f = export.export_onnx(e["model"], torch.zeros(shape), tmp_path / "slim.onnx", simplify=True, dynamic=dynamic,
                           metadata=meta)
    plain = e["dynamic"] if dynamic else e["fixed"]
    assert len(onnx.load(str(f)).graph.node) < len(onnx.load(str(plain)).graph.node)  # it did simplify
    assert {p.key: p.value for p in onnx.load(str(f)).metadata_props}["stride"] == "32"
    x = _inputs(DYN_RUN if dynamic else (1, 3, *FIXED), seed=3)
    with torch.no_grad():
        ref = e["model"](x)[0]
    assert_same_predictions(torch.from_numpy(_session(f).run(None, {"images": x.numpy()})[0]), ref)


# ------------------------------------------------------------------------------------------------------ INT8
def _write_dataset(root: Path, model, n_train: int = 6, n_val: int = 6, s: int = 64) -> Path:
    """Images of coloured blobs; val labels are the fused model's own confident detections, so mAP is far from 0
    and any backend that computes something else scores differently."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            im = rng.integers(0, 255, (s, s, 3), dtype=np.uint8)
            cv2.GaussianBlur(im, (7, 7), 0, dst=im)
            f = root / "images" / split / f"{split}{i}.png"
            cv2.imwrite(str(f), im)
            x = torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                det = non_max_suppression(model(x)[0], 0.3, 0.45, max_det=8)[0]
            rows = [f"{int(c)} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} {(y2 - y1) / s:.6f}"
                    for x1, y1, x2, y2, _, c in det.clamp(0, s).tolist() if x2 - x1 > 1 and y2 - y1 > 1]
            (root / "labels" / split / f"{split}{i}.txt").write_text("\n".join(rows) + "\n" if rows else "")
    nc = model.model[-1].nc
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                                    "names": {i: f"c{i}" for i in range(nc)}}))
    return root / "data.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, checkpoint):
    pt = DetectBackend(checkpoint)
    return _write_dataset(tmp_path_factory.mktemp("data"), pt.model)


def test_int8_note_advises_relu_only_for_silu_models():
    note = export.int8_activation_note(Model("yolov5n.yaml", verbose=False))
    n_silu = sum(isinstance(m, torch.nn.SiLU) for m in Model("yolov5n.yaml", verbose=False).modules())
    assert note.startswith(f"{n_silu} SiLU activations") and "yolov5n_ReLU.yaml" in note
    assert export.int8_activation_note(Model("yolov5n_ReLU.yaml", verbose=False)) is None


def test_int8_reduce_range_stores_7_bit_weights(checkpoint, tiny_data, tmp_path):
    """--int8-reduce-range: every quantised conv weight lies in [-64, 64], so a non-VNNI CPU's u8 x s8 pair sums cannot
    saturate; the default uses the full int8 range."""
    from onnx import numpy_helper

    def weight_range(f):
        proto = onnx.load(f)
        init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        w = [init[n.input[0]] for n in proto.graph.node if n.op_type == "DequantizeLinear"
             and n.input[0] in init and init[n.input[0]].dtype == np.int8 and init[n.input[0]].ndim == 4]
        assert w, "quantised conv weights expected"
        return min(int(a.min()) for a in w), max(int(a.max()) for a in w)

    full = export.run(weights=checkpoint, imgsz=(64, 64), include="onnx", int8=True, data=tiny_data,
                      calib_images=2, file=tmp_path / "full", check_int8=False, verify=False)[1]
    reduced = export.run(weights=checkpoint, imgsz=(64, 64), include="onnx", int8=True, data=tiny_data,
                         calib_images=2, file=tmp_path / "r", check_int8=False, verify=False, int8_reduce_range=True)[1]
    lo, hi = weight_range(full)
    assert lo <= -100 or hi >= 100  # symmetric per-channel weights reach +-127 at each channel's extreme
    lo, hi = weight_range(reduced)
    assert lo >= -64 and hi <= 64  # two u8 x s8 products then sum to at most 2 * 255 * 64 < 2^15


@pytest.mark.parametrize("flags, lacks", [("fpu sse2 avx2 fma", True), ("sse2 avx2 avx512f avx512_vnni", False),
                                          ("sse2 avx2 avx_vnni", False), ("neon asimd", False)])
def test_cpu_lacks_vnni_reads_cpu_flags(tmp_path, flags, lacks):
    from utils.export.int8 import cpu_lacks_vnni
    f = tmp_path / "cpuinfo"
    f.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_lacks_vnni(f) is lacks
    assert cpu_lacks_vnni(tmp_path / "missing") is False


def test_int8_quantises_backbone_and_keeps_head_float(checkpoint, tiny_data, tmp_path, log_lines):
    files = export.run(weights=checkpoint, imgsz=(64, 64), include="onnx", int8=True, data=tiny_data,
                       calib_images=4, file=tmp_path / "q", check_int8=False)
    assert [Path(f).name for f in files] == ["q.onnx", "q_int8.onnx"]
    has_silu = any(isinstance(m, torch.nn.SiLU) for m in DetectBackend(checkpoint).model.modules())
    assert has_silu and "SiLU activations each run as two INT8 ops" in log_lines.text  # the ReLU advice is shown
    proto = onnx.load(files[1])
    nodes = list(proto.graph.node)
    quant = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert len(quant) > 20, "backbone/neck activations should be quantised"
    scope = f"/model.{len(DetectBackend(checkpoint).model.model) - 1}/"
    head_convs = [n for n in nodes if n.op_type == "Conv" and scope in n.name]
    assert head_convs, "the head convs keep their names"
    consumers = {i for n in nodes if n.op_type == "DequantizeLinear" for i in n.output}
    weights_q = {n.input[1] for n in head_convs}
    assert not weights_q & consumers, "head conv weights must stay float"
    decode = [n for n in nodes if scope in n.name and n.op_type != "Conv"]
    assert len(decode) > 10 and not any(i in consumers for n in decode for i in n.input), "decoding must stay float"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["stride"] == "32" and json.loads(meta["int8"]) is True
    # INT8 tracks FP32 on an image like the calibration ones. ONNX Runtime's integer kernels differ by CPU (with
    # VNNI or without it, where u8 x s8 products can saturate), so the agreement is measured on the QDQ graph with
    # graph optimisation off: QuantizeLinear/DequantizeLinear then run as float ops around float convs, i.e. the
    # calibrated quantisation itself, the same on every x86 CPU up to fp32 rounding (~1e-6 here, against the
    # 0.87-0.94 correlation reached over model seeds). A random network is a harsh case (its features vary little
    # across positions, so the quantisation step is large against the signal): the accuracy that matters is
    # benchmarks.bench_export's mAP on a trained model; this catches broken scales or calibration inputs
    # (correlation near 0).
    x = export.letterbox_rgb(str(next((tiny_data.parent / "images" / "val").glob("*.png"))), (64, 64))
    x = np.ascontiguousarray(x[None] if x.ndim == 3 else x, dtype=np.float32)
    y32 = _session(files[0]).run(None, {"images": x})[0]
    y8 = _session(files[1], optimise=False).run(None, {"images": x})[0]
    assert np.corrcoef(y32[..., 4].ravel(), y8[..., 4].ravel())[0, 1] > 0.7
    y8_kernels = _session(files[1]).run(None, {"images": x})[0]  # this CPU's integer kernels: runs, same layout
    assert y8_kernels.shape == y32.shape and np.isfinite(y8_kernels).all()
    # --int8-head-convs: the head's 1x1 convs are quantised too (their logits reach the decode as dequantised
    # int8); the decode arithmetic itself is never re-quantised
    index = int(scope.split(".")[1].rstrip("/"))
    q2 = export.quantize_int8(files[0], tmp_path / "q2_int8.onnx", tiny_data, (64, 64), index, n_images=2,
                              head_convs=True)
    nodes2 = list(onnx.load(str(q2)).graph.node)
    dq2 = {o for n in nodes2 if n.op_type == "DequantizeLinear" for o in n.output}
    assert all(n.input[1] in dq2 for n in nodes2 if n.op_type == "Conv" and scope in n.name)
    decode_out = {o for n in nodes2 if scope in n.name and n.op_type != "Conv" for o in n.output}
    assert not any(n.input[0] in decode_out for n in nodes2 if n.op_type == "QuantizeLinear"), "decode stays float"


# ----------------------------------------------------------------------------------------- val.py / detect.py
def test_val_on_exported_files_agrees_with_pt(checkpoint, tiny_data, tmp_path):
    val = pytest.importorskip("val")
    onnx_f, ts_f = export.run(weights=checkpoint, imgsz=(64, 64), include=("onnx", "torchscript"),
                              file=tmp_path / "v")
    res = {}
    for tag, w in (("pt", checkpoint), ("onnx", onnx_f), ("ts", ts_f)):
        # task 'speed' letterboxes every backend's images the same way (val.py pads .pt batches as rectangles
        # otherwise), so any difference left is the backend's
        r = val.run(str(tiny_data), weights=str(w), batch_size=1, imgsz=64, device="cpu", workers=0, plots=False,
                    task="speed", max_det=1000, project=tmp_path / "val", name=tag, exist_ok=True,
                    trust_weights=True)[0]
        res[tag] = np.array(r[:4])
    assert res["pt"][2] > 0.3, f"labels come from the model itself; mAP50 {res['pt'][2]} should be high"
    np.testing.assert_allclose(res["onnx"], res["pt"], atol=1e-3)
    np.testing.assert_allclose(res["ts"], res["pt"], atol=1e-3)


def test_detect_on_exported_file_agrees_with_pt(checkpoint, tiny_data, tmp_path):
    if not (ROOT / "detect.py").is_file():
        pytest.skip("detect.py not in the tree yet")
    detect = pytest.importorskip("detect")
    onnx_f = export.run(weights=checkpoint, imgsz=(64, 64), include="onnx", file=tmp_path / "d")[0]
    src = tiny_data.parent / "images" / "val"
    labels = {}
    for tag, w in (("pt", checkpoint), ("onnx", onnx_f)):
        detect.run(weights=str(w), source=str(src), imgsz=(64, 64), conf_thres=0.3, device="cpu", save_txt=True,
                   save_conf=True, nosave=True, project=tmp_path / "det", name=tag, exist_ok=True)
        d = tmp_path / "det" / tag / "labels"
        labels[tag] = {p.name: np.loadtxt(p, ndmin=2) for p in sorted(d.glob("*.txt"))}
    # an image whose only rows are near-ties may have a label file for one backend only
    stems = sorted(labels["pt"].keys() | labels["onnx"].keys())
    assert labels["pt"] and len(labels["pt"].keys() & labels["onnx"].keys()) >= 0.8 * len(stems)

    def as_det(a: np.ndarray) -> np.ndarray:  # label rows cls x y w h conf (normalised) -> x1 y1 x2 y2 conf cls px
        xy, wh = a[:, 1:3] * 64, a[:, 3:5] * 64
        return np.concatenate((xy - wh / 2, xy + wh / 2, a[:, 5:6], a[:, :1]), 1)

    none = np.zeros((0, 6))
    got = [as_det(labels["onnx"][k]) if k in labels["onnx"] else none for k in stems]
    ref = [as_det(labels["pt"][k]) if k in labels["pt"] else none for k in stems]
    # detect.py rounds boxes to whole pixels, so a float error can move a coordinate by 1 px; the label files'
    # %g (6 digits) adds < 1e-4 px and 1e-6 to the score
    matched, _ = compare_detections(got, ref, score_tol=FP32_SCORE_TOL + 1e-6, box_tol=1.0 + 64 * FP32_BOX_REL + 1e-4,
                                    conf_thres=0.3, iou_thres=0.45)
    assert matched >= 0.8 * sum(len(r) for r in ref)


def test_bench_export_times_backends_in_rewarmed_blocks(monkeypatch):
    from benchmarks import bench_export
    calls = []
    monkeypatch.setattr(bench_export.time_callables.__globals__["time"], "sleep", lambda s: calls.append(f"<{s}>"))
    out = bench_export.time_callables({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                      runs=5, warmup=1, block=2, settle=0.5)
    # warm-up, then turns of (pause, 1 untimed + up to `block` timed) calls each until every callable has `runs`
    # timings; the pause lets the previous runtime's spinning threads go idle
    assert "".join(calls) == "ab" + "<0.5>aaa<0.5>bbb" * 2 + "<0.5>aa<0.5>bb"
    assert set(out) == {"a", "b", "a_min", "b_min"} and all(v >= 0 for v in out.values())
