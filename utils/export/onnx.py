"""ONNX writer (torch.onnx tracing of the fused model, metadata in metadata_props) and optional onnxslim."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from models.blocks.heads import Segment
from utils.export.common import ExportError, atomic_path, head_of, quiet_warnings
from utils.export.graphs import export_mode, graph_module, output_names
from utils.export.metadata import GRAPH_FORMATS
from utils.general import LOGGER


def require_onnx(runtime: bool = False):
    """Import onnx (and onnxruntime); a missing package is a one-line error naming what to install."""
    missing = []
    try:
        import onnx
    except ImportError:
        missing.append("onnx")
    if runtime:
        try:
            import onnxruntime
        except ImportError:
            missing.append("onnxruntime")
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install {' '.join(missing)}")


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
    tmp = atomic_path(file)
    try:
        with export_mode(model, graph), torch.no_grad(), quiet_warnings():
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

