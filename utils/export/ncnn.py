"""ncnn writer: pnnx converts a TorchScript trace of the fused model into a `<stem>_ncnn_model/` folder
(model.ncnn.param, model.ncnn.bin, metadata.yaml), weights kept float32.

The trace writes channel shuffles as view-transpose-reshape (graphs.classic_shuffle): pnnx turns that into ncnn's
ShuffleChannel, but has no ncnn layer for the gather form and would leave a graph that crashes ncnn. pnnx runs as
its own executable; any op it reports as unconvertible is an ExportError naming the yaml rows that use it.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch
import torch.nn as nn

from utils.export.common import ExportError, quiet_warnings, staged_folder
from utils.export.graphs import classic_shuffle, export_mode, graph_module
from utils.runtimes import METADATA_FILE, write_metadata


def require_pnnx():
    """The pnnx converter executable; missing, a one-line ImportError saying what to install."""
    try:
        import pnnx
    except ImportError:
        raise ImportError("ncnn export needs pnnx (the PyTorch-to-ncnn converter): pip install pnnx ncnn") from None
    exe = Path(pnnx.EXEC_PATH)
    if not exe.is_file():
        raise ImportError(f"pnnx's executable {exe} is missing: pip install --force-reinstall pnnx")
    return exe


def rows_using(ts: torch.jit.ScriptModule, model: nn.Module, op: str) -> list[str]:
    """'row N (Type)' for each model layer whose traced graph holds op (e.g. 'index_select')."""
    rows = set()
    for node in ts.inlined_graph.nodes():
        if node.kind().split("::")[-1] == op:
            m = re.search(r"model\.model\.(\d+)|__module\.model\.(\d+)", node.scopeName())
            if m:
                rows.add(int(m.group(1) or m.group(2)))
    return [f"row {i} ({getattr(model.model[i], 'type', type(model.model[i]).__name__)})" for i in sorted(rows)]


def export_ncnn(model: nn.Module, im: torch.Tensor, folder: str | Path, metadata: dict,
                graph: str = "decoded") -> Path:
    """Trace (classic shuffle), convert with pnnx (fp16=0), check pnnx converted every op, write folder."""
    exe = require_pnnx()
    folder = Path(folder)
    with staged_folder(folder) as tmp:
        net = graph_module(model, graph, onnx=False)
        with classic_shuffle(model), export_mode(model, graph), torch.no_grad(), quiet_warnings():
            ts = torch.jit.trace(net, im, strict=False, check_trace=False)
        ts.save(str(tmp / "model.torchscript"))
        shape = ",".join(str(int(s)) for s in im.shape)
        cmd = [str(exe), "model.torchscript", f"inputshape=[{shape}]", "fp16=0", "ncnnparam=model.ncnn.param",
               "ncnnbin=model.ncnn.bin", "ncnnpy=model_ncnn.py", "pnnxparam=model.pnnx.param",
               "pnnxbin=model.pnnx.bin", "pnnxpy=model_pnnx.py", "pnnxonnx=model.pnnx.onnx"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=600)
        log = r.stdout + r.stderr
        ignored = sorted({m.group(1).split(".")[-1] for m in re.finditer(r"^ignore (\S+) ", log, re.M)})
        if ignored:
            where = "; ".join(f"{op} in {', '.join(rows_using(ts, model, op)) or 'the graph'}" for op in ignored)
            raise ExportError(f"ncnn export: pnnx has no ncnn layer for {where}")
        param, weights = tmp / "model.ncnn.param", tmp / "model.ncnn.bin"
        if r.returncode != 0 or not param.is_file() or not weights.is_file():
            lines = [x for x in log.strip().splitlines() if x.strip()]
            raise ExportError(f"ncnn export: pnnx failed (exit code {r.returncode}): {lines[-1] if lines else ''}")
        for f in tmp.iterdir():  # keep only what ncnn loads
            if f not in (param, weights):
                f.unlink()
        write_metadata(tmp / METADATA_FILE, metadata)
    return folder
