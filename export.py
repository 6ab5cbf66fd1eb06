"""Export a trained detector to ONNX and TorchScript for deployment (phones, boards, NPUs, servers).

Usage:
    python export.py --weights best.pt --include onnx                      # best.onnx next to best.pt
    python export.py --weights best.pt --include onnx torchscript --imgsz 320 320 --dynamic
    python export.py --weights best.pt --include onnx --nms --conf-thres 0.25   # graph ends in NMS
    python export.py --weights best.pt --include onnx --raw                # per-level raw head outputs (NPUs)
    python export.py --weights best.pt --include onnx --int8 --data shapes.yaml --imgsz 256   # + best_int8.onnx

The exported graph is the fused model (BatchNorm folded, RepVGG re-parameterised). Input `images` is
(N, 3, H, W) float 0-1 RGB; output `output0` is the decoded (N, A, nc+5) tensor x, y, w, h (pixels), obj,
class scores. Every file carries its stride, class names and model yaml, so detect.py and val.py run it
directly (`--weights best.onnx`, backend chosen by suffix in utils/backends.py).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.blocks.heads import Detect, Segment  # noqa: E402
from utils.general import LOGGER, TQDM_BAR_FORMAT, check_img_size, colorstr, first_line  # noqa: E402
from utils.nms import MAX_WH  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402

FORMATS = {"torchscript": ".torchscript", "onnx": ".onnx"}  # --include name -> file suffix
GRAPH_FORMATS = ("decoded", "nms", "raw")  # what the graph returns; stored as metadata 'format'
NMS_COLUMNS = ["image", "x1", "y1", "x2", "y2", "conf", "cls"]  # rows of an --nms graph's output0
DEFAULT_CALIB_IMAGES = 200


class ExportError(ValueError):
    """A bad export request; the message says which option and what to do instead."""


def require_onnx(runtime: bool = False):
    """Import onnx (and onnxruntime); a missing package is a one-line error naming what to install."""
    missing = []
    try:
        import onnx  # noqa: F401
    except ImportError:
        missing.append("onnx")
    if runtime:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            missing.append("onnxruntime")
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def parse_include(include) -> list[str]:
    """Normalise --include (a string, or a list with commas allowed) to known format names, in order."""
    items = [include] if isinstance(include, str) else list(include)
    names = [x.strip().lower().lstrip(".") for s in items for x in str(s).split(",") if x.strip()]
    if not names:
        raise ExportError(f"--include is empty; choose from {', '.join(FORMATS)}")
    unknown = [x for x in names if x not in FORMATS]
    if unknown:
        raise ExportError(f"--include {' '.join(unknown)}: unknown format; supported: {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def head_of(model: nn.Module) -> Detect:
    m = model.model[-1]
    if not isinstance(m, Detect):
        raise ExportError(f"the model's last layer is {type(m).__name__}, not a Detect head")
    return m


@contextlib.contextmanager
def export_mode(model: nn.Module, graph: str = "decoded"):
    """Switch the head to its export outputs for the duration of a trace, then restore it.

    The flags are set on this head instance only (other models in the process are unaffected), and the cached
    grids are dropped so the trace computes them from the input's shape: the graph then works at any shape.
    """
    m = head_of(model)
    saved = {k: m.__dict__.get(k, None) for k in ("export", "raw_export")}
    grids = (list(m.grid), list(m.anchor_grid))
    m.export, m.raw_export = graph != "raw", graph == "raw"
    m.grid = [torch.empty(0) for _ in range(m.nl)]
    m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
    try:
        yield m
    finally:
        for k, v in saved.items():
            if v is None:
                m.__dict__.pop(k, None)
            else:
                setattr(m, k, v)
        m.grid, m.anchor_grid = grids


# ----------------------------------------------------------------------------------------------- NMS in the graph
_NMS_SCRIPT = None


def _scripted_select():
    """TorchScript function: per image, indices kept by NMS (score > conf, IoU > iou suppressed, at most max_det),
    as (K, 3) int64 rows [image, 0, box] in the order of ONNX NonMaxSuppression (image, then score descending).
    Scripted, not traced, so its per-image loop and data-dependent sizes stay dynamic in a TorchScript file."""
    global _NMS_SCRIPT
    if _NMS_SCRIPT is None:
        import torchvision  # noqa: F401  (registers torchvision::nms)

        def select(boxes: torch.Tensor, scores: torch.Tensor, max_det: int, iou_thres: float,
                   conf_thres: float) -> torch.Tensor:
            out = [torch.zeros((0, 3), dtype=torch.long, device=boxes.device)]
            for b in range(boxes.shape[0]):
                s = scores[b, 0]
                cand = (s > conf_thres).nonzero().view(-1)
                keep = torch.ops.torchvision.nms(boxes[b][cand], s[cand], iou_thres)[:max_det]
                i = cand[keep]
                bi = torch.full_like(i, b)
                out.append(torch.stack((bi, torch.zeros_like(i), i), 1))
            return torch.cat(out, 0)

        _NMS_SCRIPT = torch.jit.script(select)
    return _NMS_SCRIPT


class _OnnxNMS(torch.autograd.Function):
    """Exports as one ONNX NonMaxSuppression node; runs the scripted selection while tracing."""

    @staticmethod
    def forward(ctx, boxes, scores, max_det: int, iou_thres: float, conf_thres: float):
        return _scripted_select()(boxes, scores, max_det, iou_thres, conf_thres)

    @staticmethod
    def symbolic(g, boxes, scores, max_det: int, iou_thres: float, conf_thres: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_thres], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([conf_thres], dtype=torch.float32)),
                    center_point_box_i=0)


class NMSModel(nn.Module):
    """Model + NMS (Neubeck & Van Gool, 2006) in one graph: (N, 3, H, W) -> (K, 7) rows
    [image, x1, y1, x2, y2, conf, cls], the same boxes as utils.nms.non_max_suppression (single label per box,
    conf = obj * best class score, per-class NMS via the class coordinate offset, at most max_det per image)."""

    def __init__(self, model: nn.Module, conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 100,
                 agnostic: bool = False, onnx: bool = True):
        super().__init__()
        if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
            raise ExportError(f"--conf-thres {conf_thres} and --iou-thres {iou_thres} must be in [0, 1]")
        if max_det < 1:
            raise ExportError(f"--max-det must be >= 1, got {max_det}")
        self.model, self.onnx = model, onnx
        self.conf_thres, self.iou_thres, self.max_det, self.agnostic = conf_thres, iou_thres, int(max_det), agnostic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)  # (N, A, 5 + nc) decoded
        n = y.shape[1]
        xy, wh = y[..., 0:2], y[..., 2:4] / 2
        boxes = torch.cat((xy - wh, xy + wh), 2)  # xyxy, as utils.boxes.xywh2xyxy
        conf, cls = (y[..., 5:] * y[..., 4:5]).max(2, keepdim=True)
        cls = cls.to(y.dtype)
        shifted = boxes if self.agnostic else boxes + cls * MAX_WH
        scores = conf.transpose(1, 2).contiguous().float()  # (N, 1, A): one channel, so per-image max_det
        shifted = shifted.float()  # ONNX NonMaxSuppression takes float32 (a --half graph casts here)
        if self.onnx:
            sel = _OnnxNMS.apply(shifted, scores, self.max_det, self.iou_thres, self.conf_thres)
        else:
            sel = _scripted_select()(shifted, scores, self.max_det, self.iou_thres, self.conf_thres)
        flat = sel[:, 0] * n + sel[:, 2]
        rows = torch.cat((boxes, conf, cls), 2).reshape(-1, 6)[flat]
        return torch.cat((sel[:, 0:1].to(rows.dtype), rows), 1)


class DecodedModel(nn.Module):
    """Thin wrapper so every exported graph has one input and a plain tensor (or tuple) output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        y = self.model(x)
        return tuple(y) if isinstance(y, list) else y


# ------------------------------------------------------------------------------------------------------ metadata
def model_names(model) -> dict[int, str]:
    names = getattr(model, "names", None) or {}
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    nc = head_of(model).nc
    return {int(k): str(v) for k, v in names.items()} if len(names) == nc else {i: f"class{i}" for i in range(nc)}


def export_metadata(model, imgsz, batch_size: int, graph: str, dynamic: bool, half: bool = False,
                    nms_args: dict | None = None) -> dict:
    """Everything a runtime needs besides the graph: stride, names, yaml, output layout."""
    m = head_of(model)
    meta = {
        "stride": str(int(max(model.stride))),
        "names": json.dumps(model_names(model)),
        "yaml": json.dumps(getattr(model, "yaml", {}), default=str),
        "format": graph,
        "imgsz": json.dumps([int(imgsz[0]), int(imgsz[1])]),
        "batch": str(int(batch_size)),
        "dynamic": json.dumps(bool(dynamic)),
        "half": json.dumps(bool(half)),
        "nc": str(int(m.nc)),
        "strides": json.dumps([int(s) for s in model.stride]),
        "anchors": json.dumps((m.anchors * m.stride.view(-1, 1, 1).to(m.anchors)).tolist()),  # pixels per level
        "task": "segment" if isinstance(m, Segment) else "detect",
        "author": "yolov5-lite export.py",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if graph == "nms":
        meta["output_columns"] = json.dumps(NMS_COLUMNS)
        meta.update({k: json.dumps(v) for k, v in (nms_args or {}).items()})
    elif graph == "raw":
        meta["output_layout"] = "per level (N, na, ny, nx, 5 + nc) logits; decode: s = sigmoid(v); " \
                                "xy = (2 s - 0.5 + cell) * stride; wh = (2 s)^2 * anchor; obj, cls = s"
    return meta


def _atomic_path(file: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=file.name + ".", suffix=".tmp", dir=file.parent)
    os.close(fd)
    return Path(tmp)


# -------------------------------------------------------------------------------------------------------- writers
def graph_module(model: nn.Module, graph: str, onnx: bool, nms_args: dict | None = None) -> nn.Module:
    if graph == "nms":
        return NMSModel(model, onnx=onnx, **(nms_args or {})).eval()
    return DecodedModel(model).eval()


def output_names(model: nn.Module, graph: str) -> list[str]:
    m = head_of(model)
    if graph == "raw":
        return [f"output{i}" for i in range(m.nl)] + (["proto"] if isinstance(m, Segment) else [])
    if isinstance(m, Segment):
        return ["output0", "output1"]
    return ["output0"]


def export_onnx(model: nn.Module, im: torch.Tensor, file: str | Path, opset: int = 17, dynamic: bool = False,
                simplify: bool = False, graph: str = "decoded", nms_args: dict | None = None,
                metadata: dict | None = None) -> Path:
    """Trace the (already fused, eval-mode) model to ONNX with metadata; written atomically."""
    require_onnx()
    import onnx

    file = Path(file)
    if graph not in GRAPH_FORMATS:
        raise ExportError(f"unknown graph format '{graph}'; one of {GRAPH_FORMATS}")
    if graph == "nms" and isinstance(head_of(model), Segment):
        raise ExportError("--nms is for detection models; a Segment model exports its decoded outputs")
    if opset < 11:
        raise ExportError(f"--opset {opset} is too old; use 11 or newer (17 recommended)")
    names_out = output_names(model, graph)
    dyn = None
    if dynamic:
        dyn = {"images": {0: "batch", 2: "height", 3: "width"}}
        if graph == "decoded":
            dyn.update({n: {0: "batch", 1: "anchors"} for n in names_out[:1]})
            if len(names_out) > 1:
                dyn[names_out[1]] = {0: "batch", 2: "mask_height", 3: "mask_width"}
        elif graph == "nms":
            dyn["output0"] = {0: "detections"}
        else:
            dyn.update({n: {0: "batch", 2: f"ny{i}", 3: f"nx{i}"} for i, n in enumerate(names_out)})
    net = graph_module(model, graph, onnx=True, nms_args=nms_args)
    tmp = _atomic_path(file)
    try:
        with export_mode(model, graph), torch.no_grad(), _quiet_warnings():
            kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
            torch.onnx.export(net, (im,), str(tmp), opset_version=opset, do_constant_folding=True,
                              input_names=["images"], output_names=names_out, dynamic_axes=dyn, **kw)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        if simplify:
            proto = simplify_onnx(proto)
        for k, v in (metadata or {}).items():
            p = proto.metadata_props.add()
            p.key, p.value = k, str(v)
        onnx.save(proto, str(tmp))
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file


def simplify_onnx(proto):
    """Graph simplification with onnxslim when installed; otherwise a warning and the graph as traced."""
    try:
        import onnxslim
    except ImportError:
        LOGGER.warning("WARNING ⚠️ --simplify needs onnxslim (pip install onnxslim); writing the unsimplified "
                       "graph (ONNX Runtime applies its own graph optimisations at load time)")
        return proto
    LOGGER.info(f"simplifying with onnxslim {getattr(onnxslim, '__version__', '')}...")
    return onnxslim.slim(proto)


def export_torchscript(model: nn.Module, im: torch.Tensor, file: str | Path, graph: str = "decoded",
                       nms_args: dict | None = None, metadata: dict | None = None) -> Path:
    """torch.jit.trace of the fused model; metadata in the archive's config.txt; written atomically."""
    file = Path(file)
    net = graph_module(model, graph, onnx=False, nms_args=nms_args)
    with export_mode(model, graph), torch.no_grad(), _quiet_warnings():
        ts = torch.jit.trace(net, im, strict=False, check_trace=False)
    config = {k: (json.loads(v) if k in ("names", "yaml", "imgsz", "dynamic", "half", "strides", "anchors",
                                         "output_columns", "conf_thres", "iou_thres", "max_det", "agnostic")
                  else v) for k, v in (metadata or {}).items()}
    config["shape"] = list(im.shape)
    if "stride" in config:
        config["stride"] = int(config["stride"])
    if "names" in config:  # JSON keys are strings; readers turn them back into ints
        config["names"] = {str(k): v for k, v in config["names"].items()}
    tmp = _atomic_path(file)
    try:
        ts.save(str(tmp), _extra_files={"config.txt": json.dumps(config)})
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file


@contextlib.contextmanager
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-derived Python ints are expected here
        yield


# ----------------------------------------------------------------------------------------------------------- INT8
def letterbox_rgb(path: str, imgsz) -> np.ndarray | None:
    """One image as the detector sees it at a fixed shape: letterboxed (pad 114), RGB, (1, 3, h, w) float 0-1."""
    import cv2

    from utils.augmentations import letterbox
    im = cv2.imread(str(path))
    if im is None:
        LOGGER.warning(f"WARNING ⚠️ skipping unreadable calibration image {path}")
        return None
    im = letterbox(im, tuple(imgsz), auto=False)[0]
    return np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255.0


def calibration_files(data, n: int, split: str = "train", seed: int = 0) -> list[str]:
    """n images spread evenly over the dataset split (deterministic)."""
    from utils.dataloaders import check_dataset, list_image_files
    d = check_dataset(data)
    files = list_image_files(d[split])
    if n <= 0:
        raise ExportError(f"--calib-images must be >= 1, got {n}")
    if n >= len(files):
        return files
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in idx]


def head_nodes(proto, head_index: int) -> list[str]:
    """Names of the nodes traced from the Detect layer and of everything downstream of them (decode, NMS):
    these stay float."""
    scope = f"/model.{head_index}/"
    nodes = list(proto.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    todo = [n for n in nodes if scope in n.name]
    seen = {id(n) for n in todo}
    while todo:
        for out in todo.pop().output:
            for c in consumers.get(out, []):
                if id(c) not in seen:
                    seen.add(id(c))
                    todo.append(c)
    return [n.name for n in nodes if id(n) in seen and n.name]


def quantize_int8(fp32_file: str | Path, int8_file: str | Path, data, imgsz, head_index: int,
                  n_images: int = DEFAULT_CALIB_IMAGES, per_channel: bool = True, head_convs: bool = False) -> Path:
    """Post-training static INT8 (QDQ, per-channel weights) with ONNX Runtime, calibrated on n letterboxed train
    images (Jacob et al., 2018; ORT QDQ format). The Detect layer (its 1x1 convs and the box decoding) stays
    float: quantising the decode's pixel arithmetic costs mAP and saves hardly any time. head_convs=True also
    quantises the 1x1 convs (worth it at large nc; their logits then reach the float decode as int8)."""
    require_onnx(runtime=True)
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from tqdm import tqdm

    files = calibration_files(data, n_images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(tqdm(files, desc=f"{colorstr('INT8:')} calibrating", bar_format=TQDM_BAR_FORMAT))

        def get_next(self):
            for f in self.it:
                x = letterbox_rgb(f, imgsz)
                if x is not None:
                    return {"images": x}
            return None

    import onnx
    int8_file = Path(int8_file)
    tmp, pre = _atomic_path(int8_file), _atomic_path(int8_file.with_name(int8_file.stem + "_pre.onnx"))
    try:
        try:  # shape inference + constant folding: the quantiser then sees every conv bias as an initializer
            from onnxruntime.quantization.shape_inference import quant_pre_process
            with _quiet_logs():
                quant_pre_process(str(fp32_file), str(pre))
            src = pre
        except Exception as e:  # pre-processing only helps; quantise the graph as exported if it fails
            LOGGER.warning(f"WARNING ⚠️ INT8 pre-processing skipped ({type(e).__name__}: {e})")
            src = Path(fp32_file)
        exclude = head_nodes(onnx.load(str(src), load_external_data=False), head_index)
        if head_convs:  # quantise the head's 1x1 convs too (faster at large nc); the decode stays float
            exclude = [n for n in exclude if not (n.endswith("/Conv") and f"/model.{head_index}/m." in n)]
        with _quiet_logs():
            quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        proto = onnx.load(str(tmp))
        meta = {p.key: p.value for p in onnx.load(str(fp32_file), load_external_data=False).metadata_props}
        meta.update(int8=json.dumps(True), calib_images=str(len(files)))
        del proto.metadata_props[:]
        for k, v in meta.items():
            p = proto.metadata_props.add()
            p.key, p.value = k, v
        onnx.save(proto, str(tmp))
        os.replace(tmp, int8_file)
    finally:
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    return int8_file


def int8_activation_note(model: nn.Module) -> str | None:
    """Advice for an INT8 export whose model uses SiLU, or None. ONNX Runtime folds ReLU into its INT8 convs, but
    runs each SiLU as two more INT8 ops (QLinearSigmoid + QLinearMul) that get no faster with a second thread:
    most of why the SiLU nano models gain far less from INT8 than their ReLU variants (README, deployment speed)."""
    n = sum(isinstance(m, nn.SiLU) for m in model.modules())
    if not n:
        return None
    return (f"{n} SiLU activations each run as two INT8 ops in ONNX Runtime, which limits the INT8 speed-up; "
            f"for INT8 deployment train a ReLU variant (yaml key 'activation: nn.ReLU()', e.g. yolov5n_ReLU.yaml)")


@contextlib.contextmanager
def _quiet_logs():
    """onnxruntime.quantization logs advice through the root logger; keep the export output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def compare_int8(fp32_file: Path, int8_file: Path, data, imgsz: int, workers: int = 2) -> dict:
    """mAP50 and mAP50-95 of the FP32 and INT8 files on the dataset's val split (val.py, conf 0.001)."""
    import val
    out = {}
    for tag, f in (("fp32", fp32_file), ("int8", int8_file)):
        LOGGER.info(f"\n{colorstr('INT8:')} validating {tag} {f.name} ...")
        r = val.run(data, weights=str(f), batch_size=1, imgsz=imgsz, device="cpu", workers=workers, plots=False,
                    project=f.parent / "int8_check", name=tag, exist_ok=True)[0]
        out[tag] = {"mAP50": float(r[2]), "mAP50-95": float(r[3])}
    d50, d = out["int8"]["mAP50"] - out["fp32"]["mAP50"], out["int8"]["mAP50-95"] - out["fp32"]["mAP50-95"]
    LOGGER.info(f"{colorstr('INT8:')} mAP50 FP32 {out['fp32']['mAP50']:.4f} -> INT8 {out['int8']['mAP50']:.4f} "
                f"({d50 * 100:+.2f} points); mAP50-95 {out['fp32']['mAP50-95']:.4f} -> {out['int8']['mAP50-95']:.4f} "
                f"({d * 100:+.2f} points)")
    return out


# ------------------------------------------------------------------------------------------------------------ run
def load_model(weights, device: torch.device, half: bool = False) -> nn.Module:
    """A checkpoint path (ours or YOLOv5's) or a model object -> fused eval-mode model on device."""
    if isinstance(weights, nn.Module):
        model = weights
    else:
        from models.experimental import attempt_load
        w = Path(str(weights[0] if isinstance(weights, (list, tuple)) else weights))
        if w.is_dir():
            raise ExportError(f"weights '{w}' is a directory, not a file")
        if not w.is_file():
            raise FileNotFoundError(f"weights file '{w}' not found")
        if w.suffix not in (".pt", ".pth"):
            raise ExportError(f"'{w}': export reads PyTorch checkpoints (.pt); got '{w.suffix}'")
        model = attempt_load(w, device=device, inplace=True, fuse=False)
    model = model.to(device).float().eval()
    model.fuse(verbose=False)  # folds BN and re-parameterises RepVGG; a no-op on an already fused model
    for p in model.parameters():
        p.requires_grad_(False)
    return model.half() if half else model


def run(weights=ROOT / "yolov5s.pt", imgsz=(640, 640), batch_size: int = 1, device: str = "cpu",
        include=("torchscript", "onnx"), half: bool = False, dynamic: bool = False, simplify: bool = False,
        opset: int = 17, nms: bool = False, raw: bool = False, int8: bool = False, data=None,
        conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 100, agnostic_nms: bool = False,
        calib_images: int = DEFAULT_CALIB_IMAGES, file=None, check_int8: bool = True,
        int8_head_convs: bool = False) -> list[str]:
    """Export weights to each format in include; returns the written files (next to the weights, e.g.
    best.pt -> best.onnx, best.torchscript, best_int8.onnx). `file` overrides the output stem."""
    t0 = time.time()
    fmts = parse_include(include)
    if nms and raw:
        raise ExportError("--nms and --raw are exclusive: --nms ends the graph in NMS, --raw leaves the head undecoded")
    graph = "nms" if nms else "raw" if raw else "decoded"
    if half and dynamic:
        raise ExportError("--half and --dynamic cannot be combined: use one or the other")
    device = select_device(device)
    if half and device.type == "cpu":
        raise ExportError("--half export needs a CUDA device (use --device 0); CPU runtimes run float32")
    if half and int8:
        raise ExportError("--half and --int8 cannot be combined: INT8 is quantised from the float32 graph")
    if int8:
        if "onnx" not in fmts:
            raise ExportError("--int8 quantises the ONNX graph: add onnx to --include")
        if data is None:
            raise ExportError("--int8 needs --data (a dataset yaml) for its calibration images")
        if graph != "decoded":
            raise ExportError("--int8 is for the decoded graph; drop --nms/--raw (run NMS after the INT8 model)")
    if "onnx" in fmts:
        require_onnx(runtime=int8)
    imgsz = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    imgsz = (imgsz * 2)[:2] if len(imgsz) == 1 else imgsz
    if len(imgsz) != 2:
        raise ExportError(f"--imgsz takes one or two numbers (H W), got {imgsz}")
    if batch_size < 1:
        raise ExportError(f"--batch-size must be >= 1, got {batch_size}")

    model = load_model(weights, device, half=half)
    gs = int(max(model.stride))
    imgsz = check_img_size([int(x) for x in imgsz], gs)
    im = torch.zeros(batch_size, 3, *imgsz, device=device)
    im = im.half() if half else im
    with torch.no_grad():
        shape = tuple(model(im)[0].shape)
    nms_args = {"conf_thres": conf_thres, "iou_thres": iou_thres, "max_det": max_det, "agnostic": agnostic_nms}
    meta = export_metadata(model, imgsz, batch_size, graph, dynamic, half, nms_args if nms else None)
    stem = Path(file) if file is not None else (Path(str(weights)) if not isinstance(weights, nn.Module)
                                                else ROOT / "model.pt")
    LOGGER.info(f"\n{colorstr('PyTorch:')} starting from {stem.with_suffix('.pt')} with input shape "
                f"{tuple(im.shape)} BCHW and output shape {shape} ({graph} graph)")
    written = []
    for fmt in fmts:
        out = stem.with_suffix(FORMATS[fmt])
        t = time.time()
        prefix = colorstr(f"{'TorchScript' if fmt == 'torchscript' else 'ONNX'}:")
        try:
            if fmt == "onnx":
                import onnx
                LOGGER.info(f"{prefix} starting export with onnx {onnx.__version__} opset {opset}...")
                export_onnx(model, im, out, opset, dynamic, simplify, graph, nms_args, meta)
            else:
                LOGGER.info(f"{prefix} starting export with torch {torch.__version__}...")
                export_torchscript(model, im, out, graph, nms_args, meta)
        except (ExportError, ImportError):
            raise
        except Exception as e:
            raise ExportError(f"{fmt} export of {stem.name} failed: {type(e).__name__}: {first_line(e)}") from e
        LOGGER.info(f"{prefix} export success ✅ {time.time() - t:.1f}s, saved as {out} "
                    f"({out.stat().st_size / 1e6:.1f} MB)")
        written.append(str(out))
    if int8:
        fp32 = stem.with_suffix(".onnx")
        q = stem.with_name(stem.stem + "_int8.onnx")
        t = time.time()
        quantize_int8(fp32, q, data, imgsz, head_index=len(model.model) - 1, n_images=calib_images,
                      head_convs=int8_head_convs)
        LOGGER.info(f"{colorstr('INT8:')} export success ✅ {time.time() - t:.1f}s, saved as {q} "
                    f"({q.stat().st_size / 1e6:.1f} MB)")
        note = int8_activation_note(model)
        if note:
            LOGGER.info(f"{colorstr('INT8:')} note: {note}")
        written.append(str(q))
        if check_int8:
            if imgsz[0] != imgsz[1] and not dynamic:
                LOGGER.warning("WARNING ⚠️ FP32-vs-INT8 mAP check skipped: val.py feeds square images; export "
                               "with a square --imgsz or --dynamic to run it")
            else:
                compare_int8(fp32, q, data, imgsz[0])
    f = next((x for x in written if x.endswith(".onnx")), written[0] if written else "")
    size = "" if dynamic else f" --imgsz {imgsz[0]}" if imgsz[0] == imgsz[1] else f" --imgsz {imgsz[0]} {imgsz[1]}"
    LOGGER.info(f"\nExport complete ({time.time() - t0:.1f}s)\nResults saved to {colorstr('bold', str(stem.parent))}"
                f"\nDetect:          python detect.py --weights {f}{size}"
                f"\nValidate:        python val.py --weights {f} --data {data or 'data.yaml'}"
                f"{' --imgsz ' + str(imgsz[0]) if size else ''}")
    return written


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Export a YOLOv5-lite checkpoint to ONNX / TorchScript")
    parser.add_argument("--data", type=str, default=None, help="dataset.yaml (INT8 calibration and mAP check)")
    parser.add_argument("--weights", nargs="+", type=str, default=[str(ROOT / "yolov5s.pt")], help="model.pt path")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640, 640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size")
    parser.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--half", action="store_true", help="FP16 half-precision export (CUDA only)")
    parser.add_argument("--inplace", action="store_true", help="accepted for YOLOv5 compatibility (no effect)")
    parser.add_argument("--optimize", action="store_true", help="accepted for YOLOv5 compatibility (no effect)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX/TorchScript: dynamic batch, height, width")
    parser.add_argument("--simplify", action="store_true", help="ONNX: simplify the graph (needs onnxslim)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX: opset version")
    parser.add_argument("--nms", action="store_true", help="end the graph in NMS: output0 rows "
                                                           "[image, x1, y1, x2, y2, conf, cls]")
    parser.add_argument("--raw", action="store_true", help="per-level undecoded head outputs (NPU toolchains)")
    parser.add_argument("--agnostic-nms", action="store_true", help="--nms: class-agnostic NMS")
    parser.add_argument("--int8", action="store_true", help="ONNX Runtime static INT8 quantisation (needs --data)")
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, help="INT8 calibration images")
    parser.add_argument("--no-int8-check", action="store_true", help="skip the FP32-vs-INT8 mAP comparison")
    parser.add_argument("--int8-head-convs", action="store_true", help="INT8: quantise the Detect 1x1 convs too "
                                                                       "(int8 logits; box decoding stays float)")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="--nms: confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="--nms: NMS IoU threshold")
    parser.add_argument("--max-det", "--topk-all", type=int, default=100, help="--nms: max detections per image")
    parser.add_argument("--include", nargs="+", default=["torchscript", "onnx"], help="torchscript, onnx")
    return parser.parse_args(argv)


def main(opt) -> int:
    try:
        for w in opt.weights:
            run(weights=w, imgsz=opt.imgsz, batch_size=opt.batch_size, device=opt.device, include=opt.include,
                half=opt.half, dynamic=opt.dynamic, simplify=opt.simplify, opset=opt.opset, nms=opt.nms, raw=opt.raw,
                int8=opt.int8, data=opt.data, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                max_det=opt.max_det, agnostic_nms=opt.agnostic_nms, calib_images=opt.calib_images,
                check_int8=not opt.no_int8_check, int8_head_convs=opt.int8_head_convs)
    except (ExportError, ImportError, FileNotFoundError, ValueError) as e:
        LOGGER.error(f"ERROR: {first_line(e)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_opt()))
