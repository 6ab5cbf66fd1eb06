"""One inference path: one backend class per weights format behind one interface, and the steps every entry
point shares.

detect.py, val.py, the predictor API, hubconf and the benchmarks call ``DetectBackend(weights)`` (= ``Backend``):
a factory returning the class registered for the file's suffix or export folder (PyTorchBackend for .pt/.pth and
in-memory nn.Modules, TorchScriptBackend, OnnxBackend; runtimes add theirs with ``register_backend``). Calling it
with a float (bs, 3, h, w) 0-1 RGB tensor gives decoded (bs, N, nc + 5) predictions (x, y, w, h pixels, obj,
class scores) whatever the format; then ``postprocess`` (the one NMS call), ``rescale_boxes`` (back to original
pixels) and ``label_lines`` (the one label-file writer); ``to_input`` is the one uint8 -> float conversion and
``Backend.input_shape`` the one fixed-input-shape decision. Exported files carry their stride and class names
(export.py metadata), read here; YOLOv5's own ONNX exports (names stored as a Python dict literal) load too.
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


# ----------------------------------------------------------------------- the backend registry
# key -> class (or "module:Class", imported on first use so optional runtimes cost nothing until asked for):
# ".ext" for files with that suffix, "name_end/" for export folders whose name ends so (YOLOv5's
# best_openvino_model/, best_ncnn_model/). Keys are registered by code, never chosen by a weights file.
_REGISTRY: dict[str, type | str] = {}
YOLOV5_FLAGS = ("pt", "jit", "onnx", "xml", "engine", "coreml", "saved_model", "pb", "tflite", "edgetpu", "tfjs",
                "paddle", "triton", "ncnn", "mnn")  # backend.<flag> is True for the backend whose kind it is


def _key(key: str) -> str:
    key = str(key).lower()
    if not (key.startswith(".") or key.endswith("/")) or key in (".", "/"):
        raise ValueError(f"backend key '{key}' must be a file suffix ('.mnn') or a folder ending ('_ncnn_model/')")
    return key


def register_backend(key: str, cls) -> None:
    """Make DetectBackend (so detect.py, val.py, the predictor, hubconf and the benchmarks) open weights matching
    key with cls, a Backend subclass or its "module:Class" import path: key '.mnn' for files, '_ncnn_model/' for
    folders whose name ends with '_ncnn_model'. Replaces an earlier registration of the same key."""
    _REGISTRY[_key(key)] = cls


def unregister_backend(key: str) -> None:
    """Forget a registration (tests register made-up formats and remove them again)."""
    _REGISTRY.pop(_key(key), None)


def registered_formats() -> list[str]:
    """The keys DetectBackend accepts: file suffixes, then folder endings."""
    return sorted(k for k in _REGISTRY if not k.endswith("/")) + sorted(k for k in _REGISTRY if k.endswith("/"))


def _resolve(cls) -> type:
    if isinstance(cls, str):
        import importlib
        module, _, name = cls.partition(":")
        cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"registered backend {cls!r} is not a utils.backends.Backend subclass")
    return cls


def backend_class(weights) -> type:
    """The Backend subclass for weights (a path, a [path] list or an nn.Module); the one-line errors for a missing
    file, a directory that is no registered export folder and an unknown suffix are raised here."""
    if isinstance(weights, nn.Module):
        return PyTorchBackend
    w = str(weights[0] if isinstance(weights, (list, tuple)) and weights else weights)
    path = Path(w)
    folder = next((k for k in _REGISTRY if k.endswith("/") and path.name.lower().endswith(k[:-1])), None)
    if path.is_dir():
        if folder is None:
            raise BackendError(f"weights '{w}' is a directory, not a file" + (
                f" (export folders read: {', '.join('*' + k for k in registered_formats() if k.endswith('/'))})"
                if any(k.endswith("/") for k in _REGISTRY) else ""))
        return _resolve(_REGISTRY[folder])
    key = path.suffix.lower()
    if key not in _REGISTRY and not (folder and not path.exists()):
        raise BackendError(f"'{w}': unsupported weights suffix '{path.suffix}'; use one of "
                           f"{', '.join(k if k.startswith('.') else '*' + k for k in registered_formats())}")
    if not path.exists():
        raise FileNotFoundError(f"weights file '{w}' not found")
    return _resolve(_REGISTRY[key])


# ----------------------------------------------------------------------- the backends
class Backend(nn.Module):
    """One inference interface: Backend(weights) (alias DetectBackend) returns the registered subclass for the
    file, whose forward maps a float (bs, 3, h, w) 0-1 RGB tensor to decoded (bs, N, nc + 5) predictions, or to
    per-image (k, 6) rows for graphs that end in NMS (end2end).

    A subclass sets `kind` (its YOLOv5 flag name, e.g. 'onnx'), implements load() (open the file, set
    fixed_imgsz/fixed_batch/fp16 when the file fixes them, return its metadata) and infer() (raw graph outputs);
    shape checks, fixed-batch splitting, NMS-row splitting, raw-head decoding, names and warmup are shared."""

    kind = ""
    warmup_runs = 1  # forwards warmup() runs; TorchScript optimises on its second

    def __new__(cls, weights=None, *args, **kwargs):
        # the factory: DetectBackend(w) -> the class registered for w (whose __init__ Python then runs)
        target = backend_class(weights) if cls is Backend and weights is not None else cls
        return super().__new__(target)

    def __init__(self, weights, device: torch.device | str = torch.device("cpu"), fp16: bool = False, fuse: bool = True,
                 data=None, threads: int | None = None, channels_last: bool | None = None, trusted: bool = False):
        super().__init__()
        module = weights if isinstance(weights, nn.Module) else None
        w = "model" if module is not None else str(weights[0] if isinstance(weights, (list, tuple)) else weights)
        self.weights = Path(w)
        self.device = device = torch.device(device) if not isinstance(device, torch.device) else device
        for flag in YOLOV5_FLAGS:  # the attribute names YOLOv5 scripts test
            setattr(self, flag, flag == self.kind)
        self.fp16 = bool(fp16) and device.type != "cpu"  # the one fp16-on-CPU check
        if fp16 and device.type == "cpu":
            LOGGER.warning("WARNING ⚠️ --half needs CUDA; running float32 on CPU")
        self.format, self.end2end = "decoded", False  # end2end: --nms graphs, forward returns per-image rows
        self.fixed_imgsz: tuple[int, int] | None = None
        self.fixed_batch: int | None = None
        self.anchors_px = self.strides = None
        self.channels_last = False
        self._warned_augment = False
        meta = self.load(module if module is not None else w, fuse=fuse, threads=threads,
                         channels_last=channels_last, trusted=trusted)
        self._read_metadata(meta or {}, data)

    # ------------------------------------------------------------------- what a format implements
    def load(self, w, **opts) -> dict:
        """Open w (a path string; PyTorchBackend also takes an nn.Module); return its metadata: any of stride,
        names, nc, yaml, format ('decoded' | 'nms' | 'raw'), anchors and strides (needed for 'raw')."""
        raise NotImplementedError

    def infer(self, im: torch.Tensor) -> list:
        """Graph outputs (tensors or numpy arrays, the first the predictions) for an input of the exported shape,
        already float16 when self.fp16 else float32."""
        raise NotImplementedError

    # ------------------------------------------------------------------- shared
    def _read_metadata(self, meta: dict, data) -> None:
        w = self.weights
        self.format = str(meta.get("format") or "decoded").strip('"')
        self.end2end = self.format == "nms"
        self.stride = parse_stride(meta.get("stride"))
        names = parse_names(meta.get("names"))
        y = meta.get("yaml")
        self.yaml = dict(_json(y, {}) if isinstance(y, str) else (y or {}))
        nc = meta.get("nc")
        nc = int(nc) if nc not in (None, "") else (len(names) or self.yaml.get("nc"))
        self.anchors_px, self.strides = _json(meta.get("anchors")), _json(meta.get("strides"))
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
        if "nc" not in self.yaml and self.nc:
            self.yaml["nc"] = self.nc

    def input_shape(self, imgsz, batch: int | None = None, adapt: bool = False,
                    square: bool = False) -> tuple[int | None, tuple[int, int]]:
        """The one fixed-input-shape decision: the (batch, (h, w)) to run a requested size at. A graph exported
        for one size runs only at it: with adapt (the predictor) that size is used with a warning, else (val.py,
        forward) a one-line BackendError names the flag that fixes it; square: the caller (val.py) runs square
        inputs only. A fixed batch is always used as is (forward splits and pads batches to it)."""
        hw = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else tuple(int(x) for x in imgsz)
        batch = self.fixed_batch or batch
        fixed = self.fixed_imgsz
        if fixed is None or tuple(fixed) == hw:
            return batch, hw
        h, w = fixed
        if adapt:
            LOGGER.warning(f"WARNING ⚠️ the model takes a fixed input of {tuple(fixed)}, not {hw}: using it")
            return batch, (h, w)
        fix = (f"pass --imgsz {h}" if h == w else "re-export with a square --imgsz") if square else \
            f"pass --imgsz {h} {w}"
        raise BackendError(f"'{self.weights.name}' was exported for {h}x{w} (h x w) inputs but got {hw[0]}x{hw[1]}: "
                           f"{fix} or re-export with --dynamic")

    def _check_shape(self, im: torch.Tensor) -> None:
        self.input_shape(tuple(im.shape[2:]))

    def _chunks(self, im: torch.Tensor) -> list[torch.Tensor]:
        """Split (and zero-pad the last piece of) a batch for graphs exported with a fixed batch size."""
        fb = self.fixed_batch
        if not fb or fb == im.shape[0]:
            return [im]
        chunks = list(im.split(fb))
        if chunks[-1].shape[0] < fb:
            chunks[-1] = torch.cat((chunks[-1], im.new_zeros((fb - chunks[-1].shape[0], *im.shape[1:]))), 0)
        return chunks

    def forward(self, im: torch.Tensor, augment: bool = False, visualize: bool = False):
        """(bs, 3, h, w) float 0-1 -> decoded (bs, N, nc + 5) tensor; for --nms graphs (end2end) a list of per-image
        (k, 6) tensors x1, y1, x2, y2, conf, cls, the same layout as utils.nms.non_max_suppression returns."""
        if augment and not self._warned_augment:
            LOGGER.warning("WARNING ⚠️ --augment needs PyTorch weights; running the exported graph as is")
            self._warned_augment = True
        self._check_shape(im)
        bs = im.shape[0]
        outs = []
        for x in self._chunks(im.half() if self.fp16 else im.float()):
            y = self.infer(x)
            y = [torch.as_tensor(v).to(self.device) for v in (y if isinstance(y, (list, tuple)) else [y])]
            outs.append(self._split_nms(y[0].float(), x.shape[0]) if self.end2end else
                        decode_raw(y[: len(self.strides)], self.anchors_px, self.strides) if self.format == "raw" else
                        y[0].float())
        if self.end2end:
            return [d for o in outs for d in o][:bs]
        return (outs[0] if len(outs) == 1 else torch.cat(outs, 0))[:bs]  # without the padding rows

    @staticmethod
    def _split_nms(rows: torch.Tensor, bs: int) -> list[torch.Tensor]:
        """(K, 7) rows [image, x1, y1, x2, y2, conf, cls] -> per-image (k, 6) tensors."""
        idx = rows[:, 0].long()
        return [rows[idx == i, 1:] for i in range(bs)]

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        """Forwards so the first timed image does not pay for allocation and graph initialisation, and on CPU the
        compiled NMS code loaded (utils/inference/nms_kernel.py)."""
        if self.device.type == "cpu":
            from utils.inference.nms import warmup
            warmup()
        if not self.warmup_runs:
            return
        b, hw = self.fixed_batch or int(imgsz[0]), self.fixed_imgsz or tuple(imgsz[2:])  # an export's own shape
        im = torch.zeros((b, imgsz[1], *hw), device=self.device, dtype=torch.half if self.fp16 else torch.float)
        with torch.no_grad():
            for _ in range(self.warmup_runs):
                self.forward(im)

    def extra_repr(self) -> str:
        return (f"weights={self.weights.name}, backend={self.kind}, format={self.format}, stride={self.stride}, "
                f"nc={self.nc}")


DetectBackend = Backend  # the public name YOLOv5 scripts use; DetectBackend(w) builds the class registered for w


class PyTorchBackend(Backend):
    """.pt/.pth checkpoints (ours or YOLOv5's, through the safe loader) and in-memory nn.Modules."""

    kind = "pt"

    @property
    def warmup_runs(self) -> int:
        return 0 if self.device.type == "cpu" else 1  # eager CPU has nothing to initialise

    def load(self, w, fuse: bool = True, channels_last: bool | None = None, **opts) -> dict:
        module = w if isinstance(w, nn.Module) else None  # hub models built from a yaml, user models
        if module is None:
            from models.experimental import attempt_load
            model = attempt_load(w, device=self.device, inplace=True, fuse=fuse)
        else:
            model = module.to(self.device).eval().float()
        model = model.half() if self.fp16 else model
        # a caller's own module keeps its memory format unless asked
        self.channels_last = (module is None and cpu_channels_last(self.device)) if channels_last is None \
            else bool(channels_last)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
        return {"stride": _max_stride(getattr(model, "stride", None)), "names": getattr(model, "names", None),
                "yaml": getattr(model, "yaml", None), "nc": int(head.nc) if hasattr(head, "nc") else None}

    def forward(self, im: torch.Tensor, augment: bool = False, visualize: bool = False):
        im = im.to(next(self.model.parameters()).dtype)  # follows .half()/.float() called on the backend too
        if self.channels_last:
            im = im.contiguous(memory_format=torch.channels_last)
        y = self.model(im, augment=True) if augment else self.model(im)  # user modules may lack augment
        return y[0] if isinstance(y, (list, tuple)) else y


def cpu_channels_last(device: torch.device | str) -> bool:
    """Whether eager PyTorch inference runs channels_last: on CPU, where it lets oneDNN pick its blocked depthwise
    and pointwise kernels (1.15-2.9x faster, README speed table)."""
    return torch.device(device).type == "cpu"


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of a training model (train.py's EMA) prepared as PyTorchBackend runs a checkpoint: BatchNorm folded,
    RepVGG branches merged, eval mode, channels_last on CPU. It computes what the model computes up to float
    rounding (tests/test_inference_path.py), so validation during training measures what val.py will."""
    import copy

    m = copy.deepcopy(model).eval()
    if hasattr(m, "fuse"):
        m = m.fuse(verbose=False)
    device = next(m.parameters()).device
    return m.to(memory_format=torch.channels_last if cpu_channels_last(device) else torch.contiguous_format)


class TorchScriptBackend(Backend):
    """.torchscript files: refused unless trusted, because torch.jit.load runs the code the file carries."""

    kind = "jit"
    warmup_runs = 2  # TorchScript profiles its first run and optimises on the second

    def load(self, w, trusted: bool = False, **opts) -> dict:
        if not trusted:
            raise BackendError(f"'{w}': TorchScript runs the code it carries; refused unless you trust the "
                               "file and pass --trust-weights (trusted=True)")
        extra = {"config.txt": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                model = torch.jit.load(w, _extra_files=extra, map_location=self.device)
        except RuntimeError as e:
            raise BackendError(f"'{w}' is not a readable TorchScript file: {first_line(e)}") from None
        cfg = extra["config.txt"]
        meta = _json(cfg.decode(errors="ignore") if isinstance(cfg, bytes) else cfg, {}) or {}
        self.half_file = bool(meta.get("half", False))
        self.fp16 = self.fp16 or self.half_file
        self.model = (model.half() if self.fp16 else model.float()).eval()
        shape = meta.get("shape")
        if shape and not meta.get("dynamic", False):
            self.fixed_batch, self.fixed_imgsz = int(shape[0]), (int(shape[2]), int(shape[3]))
        return meta

    def infer(self, im: torch.Tensor) -> list:
        y = self.model(im)
        return list(y) if isinstance(y, (list, tuple)) else [y]


class OnnxBackend(Backend):
    """.onnx files through ONNX Runtime (CUDA provider on a CUDA device when installed)."""

    kind = "onnx"

    def load(self, w, threads: int | None = None, **opts) -> dict:
        self.session = onnx_session(w, self.device, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.fp16 = inp.type == "tensor(float16)"
        b, _, h, wd = (list(inp.shape) + [None] * 4)[:4]
        if isinstance(h, int) and isinstance(wd, int):
            self.fixed_imgsz = (h, wd)
        if isinstance(b, int):
            self.fixed_batch = b
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def infer(self, im: torch.Tensor) -> list:
        x = im.detach().cpu().numpy()
        return [torch.from_numpy(v) for v in self.session.run(self.output_names, {self.input_name: x})]


for _k, _cls in ((".pt", PyTorchBackend), (".pth", PyTorchBackend), (".torchscript", TorchScriptBackend),
                 (".onnx", OnnxBackend)):
    register_backend(_k, _cls)


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
    from utils.inference.nms import non_max_suppression
    pred = preds[0] if isinstance(preds, (list, tuple)) else preds
    return non_max_suppression(pred.float(), conf_thres, iou_thres, classes, agnostic, multi_label, max_det=max_det)


def to_input(im: torch.Tensor, device: torch.device | str, fp16: bool = False) -> torch.Tensor:
    """The one preprocessing after the letterbox: uint8 (bs, 3, h, w) RGB -> float 0-1 on device (half if fp16)."""
    im = im.to(device, non_blocking=True)
    return (im.half() if fp16 else im.float()) / 255


def rescale_boxes(boxes: torch.Tensor, input_hw, orig_hw, ratio_pad=None, round_px: bool = False,
                  image: torch.Tensor | None = None) -> torch.Tensor:
    """The one rescaling: xyxy boxes (in place) from the letterboxed input back to original pixels, clipped;
    ratio_pad as the dataloader reports it (else derived from the two shapes, as the predictor does). For a
    whole batch in one call, orig_hw and ratio_pad are lists per image and image (n,) says whose each row is.
    Per row, the arithmetic of utils.boxes.scale_boxes (its letterbox_params): pad subtracted, gain divided, both
    in the boxes' dtype, then clipped."""
    if image is None:
        orig_hw, ratio_pad, image = [orig_hw], [ratio_pad], torch.zeros(len(boxes), dtype=torch.long)
    gain, pad_x, pad_y, h0, w0 = (torch.tensor(v, dtype=torch.float64).to(boxes.dtype)[image.cpu()].to(boxes.device)
                                  for v in zip(*map(_rescale_params, [input_hw] * len(orig_hw), orig_hw, ratio_pad)))
    boxes[..., 0::2] -= pad_x[:, None]
    boxes[..., 1::2] -= pad_y[:, None]
    boxes /= gain[:, None]
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    boxes[..., 0::2] = torch.minimum(torch.maximum(boxes[..., 0::2], zero), w0[:, None])
    boxes[..., 1::2] = torch.minimum(torch.maximum(boxes[..., 1::2], zero), h0[:, None])
    return boxes.round() if round_px else boxes


def _rescale_params(input_hw, orig_hw, ratio_pad) -> tuple:
    """(gain, pad x, pad y, h0, w0) of one image."""
    from utils.boxes import letterbox_params
    gain, pad = letterbox_params(input_hw, orig_hw, ratio_pad)
    return gain, pad[0], pad[1], orig_hw[0], orig_hw[1]


def label_lines(cls, xywhn, conf=None) -> list[str]:
    """Label-file rows `cls x y w h [conf]`, normalised to the original image, YOLOv5's %g formatting."""
    rows = np.concatenate((np.asarray(cls, np.float64).reshape(-1, 1),
                           np.asarray(xywhn, np.float64).reshape(-1, 4)), 1)
    if conf is not None:
        rows = np.concatenate((rows, np.asarray(conf, np.float64).reshape(-1, 1)), 1)
    return [" ".join(f"{v:g}" for v in r) + "\n" for r in rows.tolist()]


# the deployment runtimes (export.py --include openvino ncnn mnn), imported when such weights are opened
for _k, _name in (("_openvino_model/", "OpenVINOBackend"), (".xml", "OpenVINOBackend"),
                  ("_ncnn_model/", "NcnnBackend"), (".mnn", "MNNBackend")):
    register_backend(_k, f"utils.runtime_backends:{_name}")
