"""torch.hub entry points, offline from a local checkout:

    model = torch.hub.load('path/to/repo', 'custom', path='best.pt', source='local')   # .pt, .onnx, .torchscript
    dets = model('img.jpg')            # list of utils.inference.predictor.Detections: xyxy, conf, cls, labels
    model = torch.hub.load('path/to/repo', 'yolov5n', pretrained=False, classes=5, source='local')  # untrained

Nothing is downloaded: pretrained=True looks for <name>.pt in the working directory and the repo root.
"""
from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "yaml", "cv2", "numpy", "PIL"]  # torch.hub checks these are importable

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # torch.hub takes the repo off sys.path after loading; our modules stay imported

from utils.inference.predictor import Predictor, TorchModelBackend, load, load_backend
from utils.torch_utils import select_device


def custom(path="path/to/model.pt", autoshape: bool = True, _verbose: bool = True, device=None, **kwargs):
    """A trained model from a weights file: a callable Predictor (autoshape=True), else the bare model/backend.
    Extra kwargs (conf_thres, iou_thres, imgsz, classes, max_det, trusted, ...) go to utils.inference.predictor.load;
    trusted=True is needed for a .torchscript file, which runs the code it carries."""
    dev = select_device("" if device is None else device)
    if autoshape:
        return load(path, device=dev, **kwargs)
    backend = load_backend(path, device=dev, trusted=bool(kwargs.get("trusted", False)))
    return getattr(backend, "model", backend) if str(path).endswith(".pt") else backend


def _create(name: str, pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None):
    """A stock architecture: a local <name>.pt when pretrained, else untrained from models/<name>.yaml."""
    if pretrained:
        for cand in (Path.cwd() / f"{name}.pt", ROOT / f"{name}.pt"):
            if cand.is_file():
                return custom(cand, autoshape=autoshape, device=device)
        raise FileNotFoundError(f"{name}.pt not found in {Path.cwd()} or {ROOT} (nothing is downloaded); pass "
                                f"pretrained=False for an untrained model or use 'custom' with path=")
    from models.yolo import Model
    model = Model(f"{name}.yaml", ch=channels, nc=classes, verbose=verbose).eval()
    if not autoshape:
        return model
    return Predictor(TorchModelBackend(model, select_device("" if device is None else device)))


def yolov5n(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    """YOLOv5-nano."""
    return _create("yolov5n", pretrained, channels, classes, autoshape, _verbose, device)


def yolov5s(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    """YOLOv5-small."""
    return _create("yolov5s", pretrained, channels, classes, autoshape, _verbose, device)


def yolov5m(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    """YOLOv5-medium."""
    return _create("yolov5m", pretrained, channels, classes, autoshape, _verbose, device)


def yolov5l(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    """YOLOv5-large."""
    return _create("yolov5l", pretrained, channels, classes, autoshape, _verbose, device)


def yolov5x(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    """YOLOv5-xlarge."""
    return _create("yolov5x", pretrained, channels, classes, autoshape, _verbose, device)
