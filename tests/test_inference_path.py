"""One inference path: detect.py, val.py (standalone and during training) and the predictor API all reach the
shared steps in utils.backends, so patching one of them is seen by every entry point."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import detect
import val
from utils import backends
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.dataloaders import create_dataloader
from utils.predictor import TorchModelBackend, load

from tests.test_val import NAMES, _tiny_model, _write_split


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
    """Replaces backends.postprocess (the one NMS call) and backends.label_lines; records who called them."""
    calls = {"postprocess": 0, "label_lines": 0}
    real_post, real_lines = backends.postprocess, backends.label_lines

    def post(*a, **k):
        calls["postprocess"] += 1
        return real_post(*a, **k)

    def lines(*a, **k):
        calls["label_lines"] += 1
        return real_lines(*a, **k)

    monkeypatch.setattr(backends, "postprocess", post)
    monkeypatch.setattr(backends, "label_lines", lines)
    return calls


def test_every_entry_point_uses_the_shared_postprocess_and_label_writer(dataset, spy, tmp_path):
    w = save_checkpoint(make_checkpoint(_tiny_model()), tmp_path / "tiny.pt")
    images = dataset.parent / "images" / "val"

    pred = load(str(w), device="cpu", imgsz=64)
    dets = pred(np.zeros((64, 64, 3), np.uint8))
    assert spy["postprocess"] == 1
    dets[0].label_lines()
    assert spy["label_lines"] == 1

    detect.run(weights=str(w), source=str(images), imgsz=(64, 64), device="cpu", save_txt=True, nosave=True,
               project=str(tmp_path), name="d")
    assert spy["postprocess"] == 1 + 4  # one call per image
    assert spy["label_lines"] >= 2

    before = dict(spy)
    val.run(data=str(dataset), weights=str(w), imgsz=64, batch_size=4, workers=0, device="cpu", save_txt=True,
            project=str(tmp_path), name="v", plots=False)
    assert spy["postprocess"] == before["postprocess"] + 1  # one batch of 4
    assert spy["label_lines"] == before["label_lines"] + 4

    before = dict(spy)  # validation during training passes the in-memory EMA model and its loader
    loader = create_dataloader(str(images), 64, 4, 32, pad=0.5, rect=True, workers=0)[0]
    val.run(data=str(dataset), model=_tiny_model().eval(), imgsz=64, batch_size=4, plots=False,
            save_dir=tmp_path / "t", dataloader=loader)
    assert spy["postprocess"] == before["postprocess"] + 1


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
