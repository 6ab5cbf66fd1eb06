"""One inference interface over PyTorch checkpoints (or in-memory nn.Modules), TorchScript files and ONNX files.

detect.py, val.py, the predictor API and the benchmarks call ``DetectBackend(weights)(im)`` with a float
(bs, 3, h, w) 0-1 RGB tensor and get the decoded (bs, N, nc + 5) predictions (x, y, w, h pixels, obj, class
scores) whatever the file type, then ``postprocess`` (the one NMS call) and ``label_lines`` (the one label-file
writer). Exported files carry their stride and class names (export.py metadata), read here; YOLOv5's own ONNX
exports (names stored as a Python dict literal) load too.
"""
from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.general import LOGGER, first_line

SUFFIXES = {".pt": "pt", ".pth": "pt", ".torchscript": "jit", ".onnx": "onnx"}


class BackendError(ValueError):
    """A weights file the backend cannot use; the message names the file and the reason."""


def parse_names(value, nc: int | None = None) -> dict[int, str]:
    """Class names from metadata: JSON ({"0": "a"} or ["a"]), a Python literal ("{0: 'a'}", YOLOv5's
    exports), or a dict/list; {} when absent or unreadable."""
    if value is None or value == "":
        return {}
    names = value
    if isinstance(value, str):
        names = None
        for parse in (json.loads, ast.literal_eval):
            try:
                names = parse(value)
                break
            except (ValueError, SyntaxError, TypeError):
                continue
        if names is None:
            return {}
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict):
        return {}
    try:
        return {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        return {}


def parse_stride(value, default: int = 32) -> int:
    """Stride from metadata: "32", 32, "[8, 16, 32]" -> the largest."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return default
    if isinstance(value, (list, tuple)):
        return int(max(value)) if value else default
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _json(value, default=None):
    if value is None:
        return default
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return default


def names_from_data(data) -> dict[int, str]:
    """Class names from a dataset yaml (path or dict), without touching the images."""
    if data is None:
        return {}
    if isinstance(data, dict):
        return parse_names(data.get("names"))
    import yaml

    from utils.general import check_yaml
    try:
        with open(check_yaml(data), errors="ignore") as f:
            return parse_names((yaml.safe_load(f) or {}).get("names"))
    except (OSError, yaml.YAMLError):
        return {}


def _max_stride(stride) -> int:
    """A model's largest stride from a tensor, list or int attribute (32 when it has none)."""
    if isinstance(stride, torch.Tensor):
        return int(stride.max())
    if isinstance(stride, (list, tuple)):
        return int(max(stride)) if stride else 32
    return int(stride or 32)


def decode_raw(outputs: list[torch.Tensor], anchors_px, strides) -> torch.Tensor:
    """Per-level raw head outputs (bs, na, ny, nx, no) -> decoded (bs, N, no), with Detect's own decoding."""
    from models.blocks.heads import decode_level, make_grid
    z = []
    for x, a, s in zip(outputs, anchors_px, strides):
        anchors = torch.as_tensor(a, dtype=torch.float32, device=x.device).view(-1, 2)
        grid, anchor_grid = make_grid(x.shape[3], x.shape[2], anchors)
        z.append(decode_level(x.float(), grid, anchor_grid, float(s)))
    return torch.cat(z, 1)


def onnx_session(w: str | Path, device: torch.device | str = "cpu", threads: int | None = None):
    """ONNX Runtime session for w: CUDA provider first on a CUDA device (CPU otherwise, or as fallback); with
    threads, that many intra-op threads and no inter-op pool, so a benchmark's --threads means what it says."""
    w = str(w)
    device = torch.device(device)
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"'{w}': ONNX weights need onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu for CUDA)") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    elif device.type == "cuda":
        LOGGER.warning("WARNING ⚠️ onnxruntime has no CUDA provider here (pip install onnxruntime-gpu); using CPU")
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(w, sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for corrupt/unsupported graphs
        raise BackendError(f"'{w}' cannot be loaded by onnxruntime: {first_line(e)}") from None


class DetectBackend(nn.Module):
    """Run .pt/.pth (PyTorch), .torchscript or .onnx (ONNX Runtime) weights behind one forward()."""

    def __init__(self, weights, device: torch.device | str = torch.device("cpu"), fp16: bool = False, fuse: bool = True,
                 data=None, threads: int | None = None, channels_last: bool | None = None, trusted: bool = False):
        super().__init__()
        module = weights if isinstance(weights, nn.Module) else None  # hub models built from a yaml, user models
        w = "model" if module is not None else str(weights[0] if isinstance(weights, (list, tuple)) else weights)
        path = Path(w)
        device = torch.device(device) if not isinstance(device, torch.device) else device
        kind = "pt" if module is not None else SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise BackendError(f"'{w}': unsupported weights suffix '{path.suffix}'; use one of "
                               f"{', '.join(sorted(SUFFIXES))}")
        if module is None and not path.is_file():
            raise FileNotFoundError(f"weights file '{w}' not found")
        self.weights, self.device = path, device
        self.pt, self.jit, self.onnx = kind == "pt", kind == "jit", kind == "onnx"
        self.engine = self.triton = False  # YOLOv5 attribute names some scripts read
        self.fp16 = bool(fp16) and device.type != "cpu"
        if fp16 and device.type == "cpu":
            LOGGER.warning("WARNING ⚠️ --half needs CUDA; running float32 on CPU")
        self.end2end = False  # True for --nms graphs: forward returns per-image detections
        self.format = "decoded"
        self.fixed_imgsz = None
        self.fixed_batch = None
        self.yaml: dict = {}
        self.anchors_px = self.strides = None
        self.channels_last = False
        meta: dict = {}

        if self.pt:
            if module is None:
                from models.experimental import attempt_load
                model = attempt_load(w, device=device, inplace=True, fuse=fuse)
            else:
                model = module.to(device).eval().float()
            model = model.half() if self.fp16 else model
            # channels_last lets oneDNN pick its blocked depthwise/pointwise kernels on CPU (see README speed table);
            # a caller's own module keeps its memory format unless asked
            default_cl = device.type == "cpu" and module is None
            self.channels_last = default_cl if channels_last is None else bool(channels_last)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.model = model
            self.stride = _max_stride(getattr(model, "stride", None))
            names = parse_names(getattr(model, "names", None))
            self.yaml = dict(getattr(model, "yaml", {}) or {})
            head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
            nc = int(head.nc) if hasattr(head, "nc") else (len(names) or None)
        elif self.jit:
            if not trusted:  # torch.jit.load runs the code the file carries, as pickle does
                raise BackendError(f"'{w}': TorchScript runs the code it carries; refused unless you trust the "
                                   "file and pass --trust-weights (trusted=True)")
            extra = {"config.txt": ""}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                    model = torch.jit.load(w, _extra_files=extra, map_location=device)
            except RuntimeError as e:
                raise BackendError(f"'{w}' is not a readable TorchScript file: {first_line(e)}") from None
            cfg = extra["config.txt"]
            meta = _json(cfg.decode(errors="ignore") if isinstance(cfg, bytes) else cfg, {}) or {}
            self.half_file = bool(meta.get("half", False))
            model = model.half() if (self.fp16 or self.half_file) else model.float()
            self.fp16 = self.fp16 or self.half_file
            self.model = model.eval()
            shape = meta.get("shape")
            if shape and not meta.get("dynamic", False):
                self.fixed_batch, self.fixed_imgsz = int(shape[0]), (int(shape[2]), int(shape[3]))
        else:
            self.session = onnx_session(w, device, threads)
            meta = dict(self.session.get_modelmeta().custom_metadata_map)
            inp = self.session.get_inputs()[0]
            self.input_name = inp.name
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.fp16 = inp.type == "tensor(float16)"
            b, _, h, wd = (list(inp.shape) + [None] * 4)[:4]
            if isinstance(h, int) and isinstance(wd, int):
                self.fixed_imgsz = (h, wd)
            if isinstance(b, int):
                self.fixed_batch = b

        if not self.pt:
            self.format = str(meta.get("format", "decoded")).strip('"')
            self.end2end = self.format == "nms"
            self.stride = parse_stride(meta.get("stride"))
            names = parse_names(meta.get("names"))
            y = meta.get("yaml")
            self.yaml = _json(y, {}) if isinstance(y, str) else (y or {})
            nc = meta.get("nc")
            nc = int(nc) if nc not in (None, "") else (len(names) or self.yaml.get("nc"))
            self.anchors_px = _json(meta.get("anchors"))
            self.strides = _json(meta.get("strides"))
            if self.format == "raw" and (self.anchors_px is None or self.strides is None):
                raise BackendError(f"'{w}': raw-output file without 'anchors'/'strides' metadata cannot be decoded")
        if not names or all(v == f"class{k}" for k, v in names.items()):  # none, or only placeholders
            names = names_from_data(data) or names
        if nc is None:
            nc = len(names) if names else None
        if nc is not None and len(names) != nc:
            names = {i: names.get(i, f"class{i}") for i in range(int(nc))}
        self.names = names
        self.nc = int(nc) if nc is not None else len(names)
        if self.yaml is not None and "nc" not in self.yaml and self.nc:
            self.yaml["nc"] = self.nc

    def _check_shape(self, im: torch.Tensor) -> None:
        if self.fixed_imgsz is not None and tuple(im.shape[2:]) != tuple(self.fixed_imgsz):
            h, w = self.fixed_imgsz
            raise BackendError(f"'{self.weights.name}' was exported for {h}x{w} (h x w) inputs but got "
                               f"{im.shape[2]}x{im.shape[3]}: pass --imgsz {h} {w} or re-export with --dynamic "
                               f"(or --imgsz {im.shape[2]} {im.shape[3]})")
        if self.fixed_batch is not None and im.shape[0] != self.fixed_batch:
            raise BackendError(f"'{self.weights.name}' was exported for batch {self.fixed_batch} but got batch "
                               f"{im.shape[0]}: use --batch-size {self.fixed_batch} or re-export with --dynamic")

    def forward(self, im: torch.Tensor, augment: bool = False, visualize: bool = False):
        """(bs, 3, h, w) float 0-1 -> decoded (bs, N, nc + 5) tensor; for --nms graphs (end2end) a list of per-image
        (k, 6) tensors x1, y1, x2, y2, conf, cls, the same layout as utils.nms.non_max_suppression returns."""
        if self.pt:
            im = im.to(next(self.model.parameters()).dtype)  # follows .half()/.float() called on the backend too
            if self.channels_last:
                im = im.contiguous(memory_format=torch.channels_last)
            y = self.model(im, augment=True) if augment else self.model(im)  # user modules may lack augment
            return y[0] if isinstance(y, (list, tuple)) else y
        if augment:
            LOGGER.warning("WARNING ⚠️ --augment needs PyTorch weights; running the exported graph as is") \
                if not getattr(self, "_warned_augment", False) else None
            self._warned_augment = True
        self._check_shape(im)
        if self.jit:
            y = self.model(im.half() if self.fp16 else im.float())
            y = list(y) if isinstance(y, (list, tuple)) else [y]
        else:
            x = im.detach().cpu().numpy().astype(np.float16 if self.fp16 else np.float32, copy=False)
            y = [torch.from_numpy(v).to(self.device) for v in self.session.run(self.output_names, {self.input_name: x})]
        if self.format == "nms":
            return self._split_nms(y[0].float(), im.shape[0])
        if self.format == "raw":
            return decode_raw(y[: len(self.strides)], self.anchors_px, self.strides)
        return y[0].float()

    @staticmethod
    def _split_nms(rows: torch.Tensor, bs: int) -> list[torch.Tensor]:
        """(K, 7) rows [image, x1, y1, x2, y2, conf, cls] -> per-image (k, 6) tensors."""
        idx = rows[:, 0].long()
        return [rows[idx == i, 1:] for i in range(bs)]

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        """One forward so the first timed image does not pay for allocation and graph initialisation."""
        imgsz = tuple(imgsz)
        if self.fixed_imgsz is not None:
            imgsz = (self.fixed_batch or 1, imgsz[1], *self.fixed_imgsz)
        elif self.fixed_batch is not None:
            imgsz = (self.fixed_batch, *imgsz[1:])
        if self.pt and self.device.type == "cpu":
            return  # eager CPU has nothing to initialise
        im = torch.zeros(imgsz, device=self.device, dtype=torch.half if self.fp16 else torch.float)
        with torch.no_grad():
            for _ in range(2 if self.jit else 1):  # TorchScript profiles its first run and optimises on the second
                self.forward(im)

    def extra_repr(self) -> str:
        kind = "pt" if self.pt else "jit" if self.jit else "onnx"
        return f"weights={self.weights.name}, backend={kind}, format={self.format}, stride={self.stride}, nc={self.nc}"


# ----------------------------------------------------------------------- the steps every entry point shares
def filter_detections(det: torch.Tensor, conf_thres: float, classes=None, max_det: int = 300) -> torch.Tensor:
    """Thresholds an NMS-ending graph could not know about: conf, classes, max_det."""
    det = det[det[:, 4] > conf_thres]
    if classes is not None:
        det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
    return det[:max_det]


def postprocess(preds, conf_thres: float, iou_thres: float, classes=None, agnostic: bool = False,
                multi_label: bool = False, max_det: int = 300, end2end: bool = False) -> list[torch.Tensor]:
    """A backend's output -> per-image (k, 6) x1, y1, x2, y2, conf, cls in input pixels: non_max_suppression on
    decoded predictions, or only the thresholds for the per-image rows of an NMS-ending (end2end) graph.
    detect.py, val.py, the predictor API and the benchmarks all call this (tests patch it to prove so)."""
    if end2end:
        return [filter_detections(d, conf_thres, classes, max_det) for d in preds]
    from utils.nms import non_max_suppression
    pred = preds[0] if isinstance(preds, (list, tuple)) else preds
    return non_max_suppression(pred.float(), conf_thres, iou_thres, classes, agnostic, multi_label, max_det=max_det)


def label_lines(cls, xywhn, conf=None) -> list[str]:
    """Label-file rows `cls x y w h [conf]`, normalised to the original image, YOLOv5's %g formatting."""
    rows = np.concatenate((np.asarray(cls, np.float64).reshape(-1, 1),
                           np.asarray(xywhn, np.float64).reshape(-1, 4)), 1)
    if conf is not None:
        rows = np.concatenate((rows, np.asarray(conf, np.float64).reshape(-1, 1)), 1)
    return [" ".join(f"{v:g}" for v in r) + "\n" for r in rows.tolist()]
