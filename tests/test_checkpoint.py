"""Checkpoint I/O: our weights_only format, YOLOv5 pickles read without executing code, and bad files."""
import os
import pickle

import pytest
import torch
import torch.nn as nn

from models.experimental import attempt_load
from models.yolo import Model
from utils.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint


def seeded_tiny_model() -> Model:
    """yolov5n with 3 classes, seeded weights and random BatchNorm statistics (so eval mode is not an identity)."""
    torch.manual_seed(0)
    m = Model("yolov5n.yaml", nc=3, verbose=False)
    m.names = {0: "circle", 1: "square", 2: "star"}
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def tiny_model():
    return seeded_tiny_model()


def _out(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)[0]


def test_native_roundtrip_weights_only(tmp_path, tiny_model):
    path = save_checkpoint(make_checkpoint(tiny_model, epoch=3, best_fitness=0.5, opt={"imgsz": 64, "p": tmp_path}),
                           tmp_path / "w.pt")
    raw = torch.load(path, weights_only=True)  # must not need pickle of any class
    assert raw["epoch"] == 3 and raw["names"][2] == "star" and raw["yaml"]["nc"] == 3 and "date" in raw
    assert not list(tmp_path.glob("*.tmp"))
    model = attempt_load(path)
    x = torch.rand(1, 3, 96, 128)
    assert not model.training and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(x)[0], _out(tiny_model, x), atol=1e-4, rtol=1e-4)
    assert model.names == tiny_model.names
    unfused = attempt_load(path, fuse=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in unfused.modules())


# --- a checkpoint shaped like YOLOv5's own: whole module objects pickled under YOLOv5's class names
YOLOV5_NAMES = {"DetectionModel": "models.yolo", "Detect": "models.yolo", "Conv": "models.common",
                "C3": "models.common", "Bottleneck": "models.common", "SPPF": "models.common",
                "Concat": "models.common"}


class _Yolov5Pickler(pickle.Pickler):
    """Pickles our modules under YOLOv5's module paths, as a real YOLOv5 checkpoint names them."""
    fakes = {}

    def reducer_override(self, obj):
        name = type(obj).__name__
        if isinstance(obj, nn.Module) and name in YOLOV5_NAMES:
            fake = self.fakes.setdefault(name, type(name, (), {}))
            fake.__module__, fake.__qualname__ = YOLOV5_NAMES[name], name
            state = {k: v for k, v in obj.__dict__.items()}
            return fake, (), state  # GLOBAL models.common.C3 + REDUCE + BUILD, as a stand-in for NEWOBJ
        return NotImplemented


class _Yolov5PickleModule:
    Pickler = _Yolov5Pickler
    __name__ = "yolov5_pickle"


def _save_like_yolov5(model, path, monkeypatch):
    import models.common as common
    import models.yolo as yolo
    obj = Model(model.yaml, verbose=False)
    obj.load_state_dict(model.state_dict())
    obj.names = list(model.names.values())
    obj = obj.half()
    # pickle checks that module.qualname resolves to the class it writes; point YOLOv5's names at the fakes
    for name, mod in YOLOV5_NAMES.items():
        fake = _Yolov5Pickler.fakes.setdefault(name, type(name, (), {}))
        fake.__module__, fake.__qualname__ = mod, name
        monkeypatch.setattr(yolo if mod == "models.yolo" else common, name, fake, raising=False)
    torch.save({"epoch": -1, "best_fitness": None, "model": obj, "ema": None, "updates": None, "optimizer": None,
                "date": "2022-11-22"}, path, pickle_module=_Yolov5PickleModule)
    monkeypatch.undo()


def test_yolov5_checkpoint_loads_without_running_code(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "yolov5n_custom.pt"
    _save_like_yolov5(tiny_model, path, monkeypatch)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # it really is a pickle of classes
    info = load_checkpoint(path)
    assert info["source"] == "yolov5" and info["names"] == {0: "circle", 1: "square", 2: "star"}
    model = attempt_load(path)
    x = torch.rand(1, 3, 64, 96)
    # the file stores fp16 weights, so compare with the fp16-rounded original
    ref = Model(tiny_model.yaml, verbose=False)
    sd = tiny_model.state_dict()
    ref.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()})
    assert torch.allclose(model(x)[0], _out(ref, x), atol=1e-3, rtol=1e-3)


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned > /dev/null",)


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load global"):
        load_checkpoint(path)


def test_bad_files_give_one_line_errors(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="not found"):
        attempt_load(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        attempt_load(tmp_path / "empty.pt")
    good = save_checkpoint(make_checkpoint(tiny_model), tmp_path / "good.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        attempt_load(tmp_path / "trunc.pt")
    assert "\n" not in str(e.value)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        attempt_load(tmp_path / "text.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a YOLOv5"):
        attempt_load(tmp_path / "other.pt")
