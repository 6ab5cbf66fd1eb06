"""TorchScript writer: torch.jit.trace of the fused model, metadata in the archive's config.txt."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from utils.export.common import atomic_path, quiet_warnings
from utils.export.graphs import export_mode, graph_module


def export_torchscript(model: nn.Module, im: torch.Tensor, file: str | Path, graph: str = "decoded",
                       nms_args: dict | None = None, metadata: dict | None = None) -> Path:
    """torch.jit.trace of the fused model; metadata in the archive's config.txt; written atomically."""
    file = Path(file)
    net = graph_module(model, graph, onnx=False, nms_args=nms_args)
    with export_mode(model, graph), torch.no_grad(), quiet_warnings():
        ts = torch.jit.trace(net, im, strict=False, check_trace=False)
    config = {k: (json.loads(v) if k in ("names", "yaml", "imgsz", "dynamic", "half", "strides", "anchors",
                                         "output_columns", "conf_thres", "iou_thres", "max_det", "agnostic")
                  else v) for k, v in (metadata or {}).items()}
    config["shape"] = list(im.shape)
    if "stride" in config:
        config["stride"] = int(config["stride"])
    if "names" in config:  # JSON keys are strings; readers turn them back into ints
        config["names"] = {str(k): v for k, v in config["names"].items()}
    tmp = atomic_path(file)
    try:
        ts.save(str(tmp), _extra_files={"config.txt": json.dumps(config)})
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file

