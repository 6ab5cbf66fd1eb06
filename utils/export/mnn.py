"""MNN writer: the fused model's ONNX converted by MNN's converter into <stem>.mnn, metadata in <stem>.mnn.yaml.

The converter runs in a child process through MNN's compiled `_tools` module, not the `mnnconvert` script: that
script imports a telemetry logger which tries to pip-install a package and send a log of the conversion.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from utils.export.common import ExportError, atomic_path
from utils.runtimes import require, write_metadata

_CONVERT = "import sys, _tools; sys.exit(0 if _tools.mnnconvert(['mnnconvert'] + sys.argv[1:]) else 1)"


def export_mnn(onnx_file: str | Path, file: str | Path, metadata: dict, outputs: list[str]) -> Path:
    """Convert onnx_file to file (float32 weights); the sidecar <file>.yaml holds metadata and output names."""
    require("mnn")
    file = Path(file)
    tmp = atomic_path(file)
    try:
        cmd = [sys.executable, "-c", _CONVERT, "-f", "ONNX", "--modelFile", str(onnx_file), "--MNNModel", str(tmp),
               "--bizCode", "yolov5-lite"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or not tmp.stat().st_size:
            lines = [x for x in (r.stderr + r.stdout).splitlines() if "rror" in x or "nsupport" in x]
            why = lines[-1].strip() if lines else f"exit code {r.returncode}"
            raise ExportError(f"mnn export: MNN's converter failed on {Path(onnx_file).name}: {why}")
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    write_metadata(file.with_name(file.name + ".yaml"), {**metadata, "outputs": list(outputs)})
    return file
