"""Export-time verification: the exported model runs in its own runtime (in a child process, so a runtime that
crashes cannot take the export down with it) on a letterboxed real image and on random input, and must match the
PyTorch model within float32 rounding.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.export.common import ExportError, quiet_warnings
from utils.export.graphs import export_mode, graph_module

ROOT = Path(__file__).resolve().parents[2]
# Tolerance on max_rel_diff. Each runtime reorders the float32 sums of every convolution (blocked, Winograd, fused
# kernels): a K-term dot product then differs by ~sqrt(K) * 6e-8 relative (unit roundoff), ~3e-6 for the nano
# models' widest 3x3 convs (K = 2304), and ~20 such layers in depth compound that to a few 1e-5 at the head
# (measured: 0.4-3e-5 for ONNX Runtime and OpenVINO on the nano yamls at 64 px, utils.export.verify vs PyTorch).
# 3e-4 is that with a 10x margin for larger inputs and outputs; a wrong op (layout, shuffle order, activation)
# errs by 1e-2 or more.
RTOL = 3e-4
CHILD_TIMEOUT_S = 600


def _torchscript_runner(path):
    with quiet_warnings():  # torch.jit.load's deprecation notice
        m = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            y = m(torch.from_numpy(x))
        return [t.float().numpy() for t in (y if isinstance(y, (list, tuple)) else [y])]
    return run


def _onnx_runner(path):
    from utils.runtimes import OnnxRuntimeRunner
    return OnnxRuntimeRunner(path, threads=1)


# ONNX Runtime and TorchScript are checked in this process (neither has crashed on these graphs, and a child would
# cost seconds per export); the mobile runtimes run in a child process
IN_PROCESS = {"torchscript": _torchscript_runner, "onnx": _onnx_runner}


def reference_inputs(imgsz, batch: int = 1, image: str | Path | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """{'image': a letterboxed real image (image, else a generated shapes picture), 'random': uniform 0-1} as
    (batch, 3, h, w) float32 RGB 0-1, the input the detector sees."""
    import cv2

    from utils.data.augmentations import letterbox
    h, w = int(imgsz[0]), int(imgsz[1])
    im = cv2.imread(str(image)) if image is not None else None
    if im is None:
        from utils.data.synthetic import render_image
        im = render_image(seed, max(h, w))[0]
        im = cv2.resize(im, (max(h, w), max(1, max(h, w) * 3 // 4)))  # 4:3, so the letterbox pads as for a photo
    im = letterbox(im, (h, w), auto=False)[0]
    x = np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255.0
    rnd = np.random.default_rng(seed).random((batch, 3, h, w), dtype=np.float32)
    return {"image": np.repeat(x, batch, 0), "random": rnd}


def torch_outputs(model: nn.Module, x: np.ndarray, graph: str = "decoded") -> list[np.ndarray]:
    """What the exported graph computes, from the PyTorch model itself (same export mode, same wrapper)."""
    net = graph_module(model, graph, onnx=False)
    with export_mode(model, graph), torch.no_grad():
        p = next(model.parameters())
        y = net(torch.from_numpy(x).to(p.device, p.dtype))
    y = y if isinstance(y, (list, tuple)) else [y]
    return [t.float().cpu().numpy() for t in y]


def max_rel_diff(y: np.ndarray, ref: np.ndarray, decoded: bool = False) -> float:
    """max |y - ref| relative to ref's scale. Decoded detections (x, y, w, h, obj, cls...): boxes relative to the
    box scale (pixels), scores absolute (they are 0-1), so a box scale of 640 cannot hide a score error."""
    if y.shape != ref.shape:
        return float("inf")
    if decoded and ref.ndim == 3 and ref.shape[-1] > 4:
        boxes = np.abs(y[..., :4] - ref[..., :4]).max() / max(float(np.abs(ref[..., :4]).max()), 1.0)
        return float(max(boxes, np.abs(y[..., 4:] - ref[..., 4:]).max()))
    return float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-6))


def run_in_child(models: list[tuple[str, str | Path]], inputs: dict[str, np.ndarray], threads: int = 2) -> list:
    """[{input name: [outputs]} per (format, path)] from the runtimes in one child process (python -m
    utils.runtimes); a crash, hang or error there is a one-line ExportError naming the format."""
    fmts = "/".join(f for f, _ in models)
    with tempfile.TemporaryDirectory(prefix="verify_") as d:
        fin, fout = Path(d) / "in.npz", Path(d) / "out.npz"
        np.savez(fin, **inputs)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "utils.runtimes", str(fin), str(fout), str(threads)]
        cmd += [str(x) for fp in models for x in fp]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"{fmts} export check: the runtime did not finish in {CHILD_TIMEOUT_S} s") from None
        if r.returncode < 0:
            name = signal.Signals(-r.returncode).name
            done = r.stdout.split()  # the child prints each format once it has run
            fmt = next((f for f, _ in models if f not in done), fmts)
            raise ExportError(f"{fmt} export check: the {fmt} runtime crashed ({name}) running the exported model")
        if r.returncode != 0:
            lines = [x for x in (r.stderr or r.stdout).strip().splitlines() if x.strip()]
            raise ExportError(f"{fmts} export check failed: {lines[-1] if lines else f'exit code {r.returncode}'}")
        out: list[dict] = [{} for _ in models]
        with np.load(fout) as z:
            for k in sorted(z.files, key=lambda s: [int(p) if p.isdigit() else p for p in s.split("|")]):
                i, name, _ = k.split("|")
                out[int(i)].setdefault(name, []).append(z[k])
        return out


def compare(fmt: str, got: dict, model: nn.Module, inputs: dict[str, np.ndarray], graph: str = "decoded",
            rtol: float = RTOL) -> dict[str, float]:
    """{input: max rel. diff} of a runtime's outputs against PyTorch; above rtol, a one-line ExportError."""
    diffs = {}
    for name, x in inputs.items():
        ref = torch_outputs(model, x, graph)
        ys = got.get(name, [])
        if len(ys) != len(ref):
            raise ExportError(f"{fmt} export check: {len(ys)} outputs, the PyTorch model has {len(ref)}")
        diffs[name] = max(max_rel_diff(y, r, decoded=graph == "decoded" and i == 0)
                          for i, (y, r) in enumerate(zip(ys, ref)))
    worst = max(diffs.values())
    if not worst <= rtol:
        raise ExportError(f"{fmt} export does not match the PyTorch model: max rel. diff {worst:.3g} > {rtol:g} "
                          f"({', '.join(f'{k} {v:.3g}' for k, v in diffs.items())})")
    return diffs


def verify_export(fmt: str, path: str | Path, model: nn.Module, inputs: dict[str, np.ndarray], graph: str = "decoded",
                  rtol: float = RTOL) -> dict[str, float]:
    """Run the export in its runtime on each input, compare with PyTorch; {input: max rel. diff}. Above rtol,
    a one-line ExportError naming the format."""
    if fmt in IN_PROCESS:
        runner = IN_PROCESS[fmt](path)
        got = {k: runner(x) for k, x in inputs.items()}
    else:
        got = run_in_child([(fmt, path)], inputs)[0]
    return compare(fmt, got, model, inputs, graph, rtol)
