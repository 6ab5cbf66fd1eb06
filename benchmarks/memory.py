"""Peak memory of an inference backend, measured in a fresh child process.

Each backend is loaded and run in a fresh child process (so freed memory of earlier models cannot be reused);
after the imports the child resets the kernel's RSS high-water mark (/proc/self/clear_refs) and reports peak RSS
(VmHWM) minus RSS at that point, i.e. weights + activations + runtime buffers of loading the model and running 3
batch-1 inferences. Without /proc it reports the growth of getrusage's ru_maxrss instead.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run with `python -c` in a fresh process whose working directory is the repo root (`python -c` imports from the
# working directory, so the model classes unpickle); it must not import this package (that would load torch for
# ONNX too).
_MEMORY_PROBE = r"""
import json, os, resource, sys
kind, path, imgsz, threads, runs = sys.argv[1:6]
imgsz, threads, runs = int(imgsz), int(threads), int(runs)
import numpy as np
if kind == "torch":
    import torch
    import models.yolo  # module classes for unpickling; imported before the baseline
    torch.set_num_threads(threads)
else:
    import onnxruntime as ort

def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)

def maxrss_kb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark: import-time peaks must not count
    base, method = status_kb("VmRSS"), "VmHWM"
except OSError:
    base, method = maxrss_kb(), "ru_maxrss"
x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
if kind == "torch":
    model = torch.load(path, map_location="cpu", weights_only=False)  # a file this benchmark just wrote
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        for _ in range(runs):
            model(xt)
else:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {inp: x})
peak = status_kb("VmHWM") if method == "VmHWM" else maxrss_kb()
print("MEMORY_PROBE " + json.dumps({"peak_mb": (peak - base) / 1024, "method": method}))
"""


def start_peak_memory(kind: str, path: str | Path, imgsz: int, threads: int = 2, runs: int = 3) -> subprocess.Popen:
    """Start the memory probe child for a torch.save'd nn.Module (kind 'torch') or an ONNX file (kind 'onnx');
    finish_peak_memory() collects its result, so other untimed work can run meanwhile."""
    if kind not in ("torch", "onnx"):
        raise ValueError(f"kind must be 'torch' or 'onnx', got {kind!r}")
    cmd = [sys.executable, "-c", _MEMORY_PROBE, kind, str(path), str(imgsz), str(threads), str(runs)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish_peak_memory(p: subprocess.Popen, timeout: float = 600) -> float:
    """Peak extra RSS (MiB) reported by a start_peak_memory() child."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError(f"memory probe timed out after {timeout:.0f} s") from None
    for line in out.splitlines():
        if line.startswith("MEMORY_PROBE "):
            return float(json.loads(line[len("MEMORY_PROBE "):])["peak_mb"])
    raise RuntimeError(f"memory probe failed: {(err.strip().splitlines() or [f'exit code {p.returncode}'])[-1]}")


def measure_peak_memory(kind: str, path: str | Path, imgsz: int, threads: int = 2, runs: int = 3) -> float:
    """Peak extra RSS (MiB) of loading `path` and running `runs` batch-1 inferences in a fresh child process."""
    return finish_peak_memory(start_peak_memory(kind, path, imgsz, threads, runs))
