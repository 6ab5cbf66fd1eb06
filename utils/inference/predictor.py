"""Inference API shared by detect.py and hubconf.py: letterbox -> backend forward -> NMS -> boxes in original pixels.

    from utils.inference.predictor import load
    model = load('runs/train/exp/weights/best.pt')     # also YOLOv5 .pt, exported .onnx / .torchscript / .mnn,
    # _openvino_model/ and _ncnn_model/ folders
    dets = model(['a.jpg', bgr_array, pil_image])       # one Detections per image
    dets[0].xyxy, dets[0].conf, dets[0].cls, dets[0].labels

Inputs: paths (str/Path), numpy images (HWC BGR as OpenCV reads them; rgb=True for RGB; grey and BGRA accepted),
PIL images, torch tensors (3,H,W) or (B,3,H,W) RGB 0-1, 4-D numpy batches, or lists of any of these.
"""
from __future__ import annotations

import inspect
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from utils import backends
from utils.backends import DetectBackend
from utils.boxes import clip_boxes, xywh2xyxy, xyxy2xywh, xyxy2xywhn
from utils.data.augmentations import letterbox
from utils.data.dataloaders import imread
from utils.general import LOGGER, check_img_size, increment_path
from utils.plots import Annotator, colors
from utils.torch_utils import select_device, time_sync


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class Detections:
    """Detections of one image after NMS, in the original image's pixels."""
    xyxy: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    conf: np.ndarray  # (n,) float32 objectness x class score
    cls: np.ndarray  # (n,) int64 class ids
    names: dict[int, str]
    shape: tuple[int, int]  # original (h, w)
    path: str | None = None
    im: np.ndarray | None = field(default=None, repr=False)  # original BGR image, for render/crop

    def __len__(self) -> int:
        return len(self.cls)

    @property
    def labels(self) -> list[str]:
        """Class name of each box."""
        return [self.names.get(int(c), str(int(c))) for c in self.cls]

    @property
    def boxes(self) -> np.ndarray:
        """(n, 6) x1, y1, x2, y2, conf, cls: the layout of YOLOv5's per-image tensors."""
        return np.concatenate((self.xyxy, self.conf[:, None], self.cls[:, None].astype(np.float32)), 1)

    @property
    def xywhn(self) -> np.ndarray:
        """(n, 4) centre x, y, width, height normalised by the image size (the label-file layout)."""
        h, w = self.shape
        return xyxy2xywhn(self.xyxy.astype(np.float64), w=w, h=h).astype(np.float32)

    def summary(self) -> str:
        """'2 circles, 1 square, ' per class in class order, or '(no detections), ' as YOLOv5 prints it."""
        if not len(self):
            return "(no detections), "
        ids, counts = np.unique(self.cls, return_counts=True)
        return "".join(f"{n} {self.names.get(int(c), str(int(c)))}{'s' * (n > 1)}, "
                       for c, n in zip(ids.tolist(), counts.tolist()))

    def label_lines(self, save_conf: bool = False) -> list[str]:
        """Label-file rows `cls x y w h [conf]`, normalised, YOLOv5's %g formatting (backends.label_lines)."""
        return backends.label_lines(self.cls, self.xywhn, self.conf if save_conf else None)

    def render(self, line_width: int | None = None, hide_labels: bool = False, hide_conf: bool = False,
               im: np.ndarray | None = None) -> np.ndarray:
        """A copy of the image (BGR) with boxes and 'name conf' tags drawn."""
        im = (self.im if im is None else im)
        if im is None:
            raise ValueError("no image to draw on: pass im=")
        ann = Annotator(im.copy(), line_width=line_width)
        for box, conf, c in zip(self.xyxy, self.conf, self.cls):
            name = self.names.get(int(c), str(int(c)))
            label = None if hide_labels else (name if hide_conf else f"{name} {conf:.2f}")
            ann.box_label(box, label or "", color=colors(int(c), bgr=True))
        return ann.result()

    def crops(self, gain: float = 1.02, pad: int = 10, square: bool = False) -> list[np.ndarray]:
        """Image patch of every box (slightly enlarged, as YOLOv5's --save-crop)."""
        if self.im is None:
            raise ValueError("no image to crop from")
        return [crop_box(b, self.im, gain, pad, square) for b in self.xyxy]

    def __repr__(self) -> str:
        h, w = self.shape
        return f"Detections({self.path or 'image'} {w}x{h}: {self.summary().rstrip(', ')})"


def crop_box(xyxy, im: np.ndarray, gain: float = 1.02, pad: int = 10, square: bool = False) -> np.ndarray:
    """Patch of im around an xyxy box grown by gain and pad pixels (clipped to the image)."""
    b = xyxy2xywh(np.asarray(xyxy, np.float64).reshape(1, 4))
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdims=True)
    b[:, 2:] = b[:, 2:] * gain + pad
    b = clip_boxes(xywh2xyxy(b), im.shape[:2]).astype(int)[0]
    return im[b[1]:b[3], b[0]:b[2]]


def save_crop(xyxy, im: np.ndarray, file: str | Path, **kw) -> Path:
    """Write a box crop to file, numbering it (file_2.jpg, ...) when the name is taken."""
    file = increment_path(Path(file).with_suffix(".jpg"), sep="_")
    file.parent.mkdir(parents=True, exist_ok=True)
    crop = crop_box(xyxy, im, **kw)
    if crop.size:
        cv2.imwrite(str(file), crop)
    return file


# ---------------------------------------------------------------------------------------------------- backends
TorchModelBackend = DetectBackend  # the old name for wrapping an nn.Module; DetectBackend(module) does it now


def load_backend(weights, device: torch.device = torch.device("cpu"), fp16: bool = False, fuse: bool = True,
                 data=None, trusted: bool = False):
    """DetectBackend for a .pt/.torchscript/.onnx file (by suffix) or an in-memory nn.Module; --data supplies
    names a file lacks. trusted=True is the opt-in for TorchScript files, which run the code they carry."""
    return DetectBackend(weights, device=device, fp16=fp16, fuse=fuse, data=data, trusted=trusted)


# ---------------------------------------------------------------------------------------------------- inputs
def _fetch(url: str) -> np.ndarray:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            buf = np.frombuffer(r.read(), np.uint8)
    except Exception as e:
        raise ValueError(f"cannot download image '{url}': {e}") from None
    im = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if im is None:
        raise ValueError(f"'{url}' is not a readable image")
    return im


def _array_to_bgr(a: np.ndarray, rgb: bool, what: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):  # CHW
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"{what}: expected an HxW, HxWx3 or HxWx4 image, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        a = a * 255 if a.size and a.max() <= 1.0 else a  # floats 0-1 or 0-255
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(a[..., ::-1]) if rgb else a


def to_bgr_list(inputs, rgb: bool = False) -> tuple[list[np.ndarray], list[str | None]]:
    """Any supported input (or batch of them) -> list of HWC uint8 BGR images and their paths (None if none)."""
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu()
        batch = inputs[None] if inputs.ndim == 3 else inputs
        if batch.ndim != 4:
            raise ValueError(f"tensor input must be (3,H,W) or (B,3,H,W), got {tuple(inputs.shape)}")
        return [_array_to_bgr(t.permute(1, 2, 0).float().numpy(), True, "tensor") for t in batch], [None] * len(batch)
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        inputs = list(inputs)
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    ims, paths = [], []
    for i, x in enumerate(inputs):
        what = f"input {i}"
        path = None
        if isinstance(x, (str, Path)):
            path = str(x)
            if path.startswith(("http://", "https://")):
                im = _fetch(path)
            else:
                if not Path(path).is_file():
                    raise FileNotFoundError(f"image '{path}' not found")
                im = imread(path)
                if im is None:
                    raise ValueError(f"'{path}' is not a readable image")
        elif isinstance(x, Image.Image):
            path = getattr(x, "filename", None) or None
            im = np.asarray(ImageOps.exif_transpose(x).convert("RGB"))[..., ::-1].copy()
        elif isinstance(x, np.ndarray):
            im = _array_to_bgr(x, rgb, what)
        elif isinstance(x, torch.Tensor):
            im = to_bgr_list(x)[0][0]
        else:
            raise TypeError(f"{what}: unsupported type {type(x).__name__} (use a path, numpy array, PIL image "
                            f"or tensor)")
        ims.append(np.ascontiguousarray(im))
        paths.append(path)
    if not ims:
        raise ValueError("no images given")
    return ims, paths


# ---------------------------------------------------------------------------------------------------- predictor
class Predictor:
    """YOLOv5 inference (Jocher et al., 2020): letterbox to a stride multiple, forward, NMS, rescale boxes."""

    def __init__(self, backend, imgsz=640, conf_thres: float = 0.25, iou_thres: float = 0.45, classes=None,
                 agnostic: bool = False, max_det: int = 1000, augment: bool = False):
        self.backend = backend
        self.stride = int(getattr(backend, "stride", 32))
        self.names = dict(getattr(backend, "names", {}) or {})
        self.fixed = getattr(backend, "fixed_imgsz", None)
        self.imgsz = self._check_size(imgsz)
        self.auto = bool(getattr(backend, "pt", False)) and self.fixed is None  # minimal padding only for PyTorch
        self.conf_thres, self.iou_thres = conf_thres, iou_thres
        self.classes, self.agnostic, self.max_det, self.augment = classes, agnostic, max_det, augment
        self.device = getattr(backend, "device", torch.device("cpu"))
        self.fp16 = bool(getattr(backend, "fp16", False))
        self.times = [0.0, 0.0, 0.0]  # pre-process, inference, NMS seconds
        self.seen = 0
        self.last_input_shape: tuple[int, ...] = ()

    def _check_size(self, imgsz) -> tuple[int, int]:
        imgsz = [imgsz] * 2 if isinstance(imgsz, int) else list(imgsz) * (2 if len(imgsz) == 1 else 1)
        imgsz = tuple(check_img_size(imgsz, self.stride))
        if hasattr(self.backend, "input_shape"):  # the backend decides what a fixed-shape export can take
            return tuple(self.backend.input_shape(imgsz, adapt=True)[1])
        return imgsz

    def _can_augment(self) -> bool:
        try:
            params = inspect.signature(self.backend.forward).parameters
            return bool(getattr(self.backend, "pt", False)) and "augment" in params
        except (TypeError, ValueError):
            return False

    @property
    def stats(self) -> tuple[float, float, float]:
        """Mean pre-process, inference, NMS milliseconds per image so far."""
        return tuple(t / max(self.seen, 1) * 1e3 for t in self.times)

    def preprocess(self, ims: list[np.ndarray], imgsz: tuple[int, int] | None = None) -> torch.Tensor:
        """BGR images -> (B, 3, H, W) RGB 0-1 on the model's device. Same-shape batches keep YOLOv5's minimal
        padding; mixed shapes share one padded size."""
        imgsz = self.imgsz if imgsz is None else imgsz
        auto = self.auto and len({im.shape for im in ims}) == 1
        x = np.stack([letterbox(im, imgsz, stride=self.stride, auto=auto)[0] for im in ims])
        return backends.to_input(torch.from_numpy(np.ascontiguousarray(x[..., ::-1].transpose(0, 3, 1, 2))),
                                 self.device, self.fp16)

    def predict(self, ims: list[np.ndarray], paths: list[str | None] | None = None, imgsz=None,
                augment: bool | None = None) -> list[Detections]:
        """Detect objects in BGR images; boxes come back in each image's own pixels."""
        t0 = time_sync()
        size = self.imgsz if imgsz is None else self._check_size(imgsz)
        x = self.preprocess(ims, size)
        t1 = time_sync()
        aug = self.augment if augment is None else augment
        if aug and not self._can_augment():
            LOGGER.warning("WARNING ⚠️ test-time augmentation needs a PyTorch model; running without it")
            aug = self.augment = False
        with torch.inference_mode():  # the backend splits and pads batches for fixed-batch exports
            pred = self.backend.forward(x, augment=True) if aug else self.backend.forward(x)
        t2 = time_sync()
        end2end = bool(getattr(self.backend, "end2end", False))  # the graph ran NMS: per-image (k, 6) rows
        if not end2end and isinstance(pred, (list, tuple)):
            pred = pred[0]
        out = backends.postprocess(pred, self.conf_thres, self.iou_thres, self.classes, self.agnostic,
                                   max_det=self.max_det, end2end=end2end)
        dets = []
        for i, (det, im) in enumerate(zip(out, ims)):
            det = det.detach().cpu()
            if len(det):
                det[:, :4] = backends.rescale_boxes(det[:, :4], x.shape[2:], im.shape[:2], round_px=True)
            d = det.numpy()
            dets.append(Detections(d[:, :4].astype(np.float32), d[:, 4].astype(np.float32), d[:, 5].astype(np.int64),
                                   self.names, im.shape[:2], paths[i] if paths else None, im))
        t3 = time_sync()
        self.times[0] += t1 - t0
        self.times[1] += t2 - t1
        self.times[2] += t3 - t2
        self.seen += len(ims)
        self.last_input_shape = tuple(x.shape)
        self.last_inference_ms = (t2 - t1) * 1e3
        return dets

    def __call__(self, inputs, size=None, rgb: bool = False, augment: bool | None = None) -> list[Detections]:
        """Detections for one image or a batch (see the module docstring for accepted inputs)."""
        ims, paths = to_bgr_list(inputs, rgb=rgb)
        return self.predict(ims, paths, imgsz=size, augment=augment)

    def __repr__(self) -> str:
        return (f"Predictor(imgsz={self.imgsz}, stride={self.stride}, classes={len(self.names)}, "
                f"conf={self.conf_thres}, iou={self.iou_thres})")


def load(weights, device: str | torch.device = "", imgsz=640, conf_thres: float = 0.25, iou_thres: float = 0.45,
         classes=None, agnostic: bool = False, max_det: int = 1000, half: bool = False, data=None,
         augment: bool = False, fuse: bool = True, trusted: bool = False) -> Predictor:
    """A callable predictor for a checkpoint (ours or YOLOv5's), an export (.onnx, .torchscript, .mnn, an OpenVINO or
    ncnn folder), or an nn.Module.
    A .torchscript file runs the code it carries: it is refused unless trusted=True."""
    device = select_device(device)
    backend = load_backend(weights, device=device, fp16=half, fuse=fuse, data=data, trusted=trusted)
    pred = Predictor(backend, imgsz, conf_thres, iou_thres, classes, agnostic, max_det, augment)
    if device.type != "cpu" and hasattr(backend, "warmup"):
        backend.warmup(imgsz=(1, 3, *pred.imgsz))
    return pred
