"""benchmarks.profile_onnx: per-operator kernel time of an exported graph, depthwise convs counted apart."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
import export
from benchmarks import profile_onnx
from models.yolo import Model

ROOT = Path(__file__).resolve().parents[1]


def test_profile_splits_depthwise_convs_and_tables_files(tmp_path):
    torch.manual_seed(0)
    model = export.load_model(Model(ROOT / "models" / "yolov5n_ghost.yaml", nc=2, verbose=False), torch.device("cpu"))
    f = export.export_onnx(model, torch.zeros(1, 3, 64, 64), tmp_path / "ghost.onnx")
    r = profile_onnx.profile(f, 64, threads=1, runs=2, warmup=1)
    assert r["median_ms"] > 0
    ops = r["ops_ms"]
    assert ops.get("Conv (depthwise)", 0) > 0 and ops.get("Conv", 0) > 0  # GhostConv's cheap op is depthwise
    text = profile_onnx.table({str(f): r, str(f) + "#2": r})
    assert text.count("| Conv (depthwise) |") == 1 and "**latency (median)**" in text
    with pytest.raises(SystemExit, match="no such ONNX file"):
        profile_onnx.main([str(tmp_path / "missing.onnx")])
