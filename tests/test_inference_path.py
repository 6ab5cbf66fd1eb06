"""One inference path: detect.py, val.py (standalone and during training) and the predictor API all reach the
shared steps in utils.backends, so patching one of them is seen by every entry point."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import detect
import val
from tests.test_val import NAMES, _tiny_model, _write_split
from utils import backends
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.data.dataloaders import create_dataloader
from utils.inference.predictor import TorchModelBackend, load


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    import yaml
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    _write_split(root, "val", 4, rng)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val",
                                                    "names": NAMES}))
    return root / "data.yaml"


@pytest.fixture
def spy(monkeypatch):
    """Replaces the shared steps of utils.backends (the one preprocessing, NMS call, rescaling, label writer and
    fixed-shape decision) by counting wrappers; records who called them."""
    names = ("to_input", "postprocess", "rescale_boxes", "label_lines")
    calls = dict.fromkeys(names + ("input_shape",), 0)

    def counting(name, real):
        def f(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return f

    for name in names:
        monkeypatch.setattr(backends, name, counting(name, getattr(backends, name)))
    monkeypatch.setattr(backends.Backend, "input_shape", counting("input_shape", backends.Backend.input_shape))
    return calls


def test_every_entry_point_uses_the_shared_postprocess_and_label_writer(dataset, spy, tmp_path):
    w = save_checkpoint(make_checkpoint(_tiny_model()), tmp_path / "tiny.pt")
    images = dataset.parent / "images" / "val"

    pred = load(str(w), device="cpu", imgsz=64)
    dets = pred(np.zeros((64, 64, 3), np.uint8))
    assert spy["postprocess"] == spy["to_input"] == 1
    dets[0].label_lines()
    assert spy["label_lines"] == 1

    detect.run(weights=str(w), source=str(images), imgsz=(64, 64), device="cpu", save_txt=True, nosave=True,
               project=str(tmp_path), name="d")
    assert spy["postprocess"] == spy["to_input"] == 1 + 4  # one call per image
    assert spy["label_lines"] >= 2

    before = dict(spy)
    val.run(data=str(dataset), weights=str(w), imgsz=64, batch_size=4, workers=0, device="cpu", save_txt=True,
            project=str(tmp_path), name="v", plots=False)
    assert spy["postprocess"] == before["postprocess"] + 1 and spy["to_input"] == before["to_input"] + 1  # 1 batch
    assert spy["label_lines"] == before["label_lines"] + 4
    assert spy["rescale_boxes"] == before["rescale_boxes"] + 2  # the batch's predictions, then its labels

    before = dict(spy)  # validation during training passes the in-memory EMA model and its loader
    loader = create_dataloader(str(images), 64, 4, 32, pad=0.5, rect=True, workers=0)[0]
    val.run(data=str(dataset), model=_tiny_model().eval(), imgsz=64, batch_size=4, plots=False,
            save_dir=tmp_path / "t", dataloader=loader)
    assert spy["postprocess"] == before["postprocess"] + 1 and spy["to_input"] == before["to_input"] + 1


def test_in_memory_module_backend_is_the_file_backend(tmp_path):
    # the predictor's module wrapper is DetectBackend itself: same outputs as the same weights loaded from a file
    model = _tiny_model().eval().half().float()  # checkpoints hold fp16 weights: start from exactly those
    w = save_checkpoint(make_checkpoint(model), tmp_path / "tiny.pt")
    a = TorchModelBackend(model)
    b = backends.DetectBackend(str(w), fuse=False, channels_last=False)
    assert isinstance(a, backends.DetectBackend) and a.names == b.names == NAMES and a.stride == b.stride
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        # same weights, same unfused float32 graph: equal up to summation order (~1e-6 relative)
        assert torch.allclose(a(x), b(x), rtol=1e-5, atol=1e-4)


def test_each_format_maps_to_its_class(tmp_path):
    import export
    pytest.importorskip("onnxruntime")
    model = _tiny_model().eval()
    w = save_checkpoint(make_checkpoint(model), tmp_path / "tiny.pt")
    (tmp_path / "tiny.pth").write_bytes(w.read_bytes())
    ts, ox = (Path(f) for f in export.run(weights=str(w), include=("torchscript", "onnx"), imgsz=(64, 64),
                                           device="cpu"))
    cases = [(model, backends.PyTorchBackend, "pt"), (w, backends.PyTorchBackend, "pt"),
             (tmp_path / "tiny.pth", backends.PyTorchBackend, "pt"), (ts, backends.TorchScriptBackend, "jit"),
             (ox, backends.OnnxBackend, "onnx")]
    for weights, cls, flag in cases:
        assert backends.backend_class(weights) is cls
        b = backends.DetectBackend(weights, trusted=True)  # our own export: TorchScript needs the opt-in
        assert type(b) is cls and isinstance(b, backends.DetectBackend) and b.kind == flag
        assert [f for f in backends.YOLOV5_FLAGS if getattr(b, f)] == [flag] and b.names == NAMES
    with pytest.raises(backends.BackendError, match="--trust-weights"):  # the factory keeps the refusal
        backends.DetectBackend(ts)


class FakeBackend(backends.Backend):
    """A made-up export folder (<name>_fake_model/ holding model.pt), exported for batch 3 at 64x64."""

    kind = "fake"
    calls = 0

    def load(self, w, **opts) -> dict:
        from models.experimental import attempt_load
        self.model = attempt_load(Path(w) / "model.pt", fuse=False)
        self.fixed_batch, self.fixed_imgsz = 3, (64, 64)
        return {"stride": "32", "names": '{"0": "a", "1": "b", "2": "c"}'}

    def infer(self, im: torch.Tensor) -> list:
        assert tuple(im.shape) == (3, 3, 64, 64)  # the forward splits and pads to the exported batch
        FakeBackend.calls += 1
        return [self.model(im)[0].detach().numpy()]  # runtimes may hand back numpy arrays


@pytest.fixture
def fake_format(tmp_path):
    """A registered folder format (by import path, as runtime backends register lazily), removed afterwards."""
    folder = tmp_path / "tiny_fake_model"
    folder.mkdir()
    save_checkpoint(make_checkpoint(_tiny_model()), folder / "model.pt")
    backends.register_backend("_fake_model/", f"{__name__}:FakeBackend")
    FakeBackend.calls = 0
    yield folder
    backends.unregister_backend("_fake_model/")


def test_a_registered_format_is_picked_up_by_every_entry_point(fake_format, dataset, spy, tmp_path, capture_log):
    folder = fake_format
    b = backends.DetectBackend(str(folder))
    assert type(b) is FakeBackend and isinstance(b, backends.DetectBackend) and not b.pt
    assert b.names == {0: "a", 1: "b", 2: "c"} and b.stride == 32 and b.nc == 3
    y = b(torch.rand(4, 3, 64, 64))  # 4 = one full batch of 3 and one padded
    assert FakeBackend.calls == 2 and y.shape[0] == 4 and y.shape[-1] == 8
    with pytest.raises(backends.BackendError, match="exported for 64x64 .* got 64x96"):
        b(torch.rand(3, 3, 64, 96))

    with capture_log() as records:  # the predictor adapts to the fixed size, val refuses it: one decision
        pred = load(str(folder), device="cpu", imgsz=96)
    assert pred.imgsz == (64, 64) and any("fixed input of (64, 64)" in r for r in records)
    calls = FakeBackend.calls
    pred([np.zeros((64, 64, 3), np.uint8)] * 4)
    assert FakeBackend.calls == calls + 2
    detect.run(weights=str(folder), source=str(dataset.parent / "images" / "val"), imgsz=(64, 64), device="cpu",
               nosave=True, project=str(tmp_path), name="d")
    assert FakeBackend.calls == calls + 2 + 4  # one frame at a time
    calls = FakeBackend.calls
    val.run(data=str(dataset), weights=str(folder), imgsz=64, batch_size=8, workers=0, device="cpu", plots=False,
            project=str(tmp_path), name="v")
    assert FakeBackend.calls == calls + 1 + 2  # warmup, then the loader at the exported batch: 3 + 1 images
    before = spy["input_shape"]
    with pytest.raises(ValueError, match="exported for 64x64"):
        val.run(data=str(dataset), weights=str(folder), imgsz=96, workers=0, device="cpu", plots=False,
                project=str(tmp_path), name="v")
    assert spy["input_shape"] > before
    backends.unregister_backend("_fake_model/")  # without the registration the folder is just a folder
    with pytest.raises(backends.BackendError, match="is a directory"):
        load(str(folder))


def test_directories_and_missing_export_folders(fake_format, tmp_path, capture_log):
    import logging
    for d in (tmp_path, tmp_path / "best.pt"):  # a run folder, a folder that only looks like a checkpoint
        d.mkdir(exist_ok=True)
        with pytest.raises(backends.BackendError, match="is a directory") as e:
            backends.DetectBackend(d)
        assert "not found" not in str(e.value) and "_fake_model/" in str(e.value)  # names the folder formats
    with pytest.raises(FileNotFoundError, match="not found"):  # a registered folder name that is not there
        backends.DetectBackend(tmp_path / "gone_fake_model")
    with pytest.raises(backends.BackendError, match="unsupported weights suffix ''"):
        backends.DetectBackend(tmp_path / "gone_model")
    import cv2
    im = tmp_path / "im.png"
    cv2.imwrite(str(im), np.zeros((32, 32, 3), np.uint8))
    with capture_log(level=logging.ERROR) as errors:
        assert val.cli(["--weights", str(tmp_path), "--data", "shapes.yaml"]) == 1
        assert detect.main(detect.parse_opt(["--weights", str(tmp_path), "--source", str(im), "--project",
                                             str(tmp_path / "runs")])) == 1
    assert len(errors) == 2 and all("is a directory" in e and "\n" not in e for e in errors), errors


def test_validation_during_training_runs_a_fused_channels_last_copy_of_the_ema():
    """train.py validates inference_copy(ema): BatchNorm folded and channels_last like PyTorchBackend, outputs
    (detections and the raw maps the val loss uses) equal to the unfused EMA's, the EMA itself untouched."""
    import copy

    from models.layers import Conv
    model = _tiny_model()
    with torch.no_grad():  # BatchNorm statistics far from identity, so that a wrong fold would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    fused = backends.inference_copy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(isinstance(m.bn, torch.nn.Identity) for m in fused.modules() if isinstance(m, Conv))
    conv = next(m for m in fused.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the EMA keeps its BatchNorm
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (p0, raw0), (p1, raw1) = model(x), fused(x.contiguous(memory_format=torch.channels_last))
    # folding rescales each conv's weights once: float32 rounding, ~1e-6 relative per layer over ~60 layers
    assert torch.allclose(p0, p1, rtol=1e-4, atol=1e-3)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(raw0, raw1))



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rescale_boxes_for_a_batch_equals_one_call_per_image(dtype):
    """val.py rescales a whole batch in one call; every row gets the same values as its image's own call, with the
    dataloader's ratio_pad or without it (derived from the shapes, as the predictor does)."""
    g = torch.Generator().manual_seed(0)
    orig = [(480, 640), (333, 500), (1000, 217)]
    ratio_pad = [((0.5, 0.5), (0.0, 40.0)), None, ((0.32, 0.32), (95.3, 0.0))]
    counts = [5, 0, 7]
    boxes = (torch.rand(sum(counts), 4, generator=g, dtype=torch.float64) * 400 - 40).to(dtype)
    image = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    batch = backends.rescale_boxes(boxes.clone(), (320, 320), orig, ratio_pad, image=image)
    one = torch.cat([backends.rescale_boxes(b.clone(), (320, 320), o, r)
                     for b, o, r in zip(boxes.split(counts), orig, ratio_pad)])
    assert torch.equal(batch, one)
    from utils.boxes import scale_boxes  # and the same values as the plain letterbox inverse
    ref = torch.cat([scale_boxes((320, 320), b.clone(), o, r) for b, o, r in zip(boxes.split(counts), orig, ratio_pad)])
    assert torch.equal(batch, ref)


def test_warmup_on_cpu_loads_the_compiled_nms(monkeypatch, tmp_path):
    """val.py warms the backend up before timing; on CPU that also loads the compiled NMS code (under a second
    from numba's cache), which would otherwise land in the first batch's NMS time."""
    from utils.inference import nms_kernel
    loaded = []
    monkeypatch.setattr(nms_kernel, "warmup", lambda: loaded.append(1))
    w = save_checkpoint(make_checkpoint(_tiny_model()), tmp_path / "tiny.pt")
    backends.DetectBackend(str(w)).warmup(imgsz=(1, 3, 64, 64))
    assert loaded == [1]
