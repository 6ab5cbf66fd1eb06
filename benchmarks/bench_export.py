"""Deployment latency per model: PyTorch eager (fused, before and after the CPU tuning of utils/backends.py),
ONNX Runtime FP32 and ONNX Runtime INT8 at 320 and 640, batch 1, medians; and, for trained checkpoints, the
mAP50 / mAP50-95 of the FP32 and INT8 exports on the dataset's val split.

Usage (writes runs/benchmark/export*/export.md; `--out benchmarks/results/export.md` regenerates the published one):
    python -m benchmarks.bench_export                                        # nano lightweight yamls, speed
    python -m benchmarks.bench_export --cfg yolov5n_ShuffleNetV2.yaml --imgsz 320 --runs 20
    python -m benchmarks.bench_export --map-weights runs/train/exp/weights/best.pt --map-imgsz 256   # + INT8 mAP

Speed does not depend on the weights, so speed rows use freshly built models (the INT8 graph is calibrated on
the dataset's train images all the same). Backends take turns in blocks of back-to-back runs, so a burst of
load from another process hits every column alike; the 1-minute load average before and after is printed with
the table. A loaded machine makes every number slower and noisier: compare columns of one run, not runs.

Columns: eager NCHW = the fused model as attempt_load returns it, under torch.no_grad() (before);
eager tuned = DetectBackend's PyTorch path: fused, channels_last, torch.inference_mode() (after).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import export
from benchmarks.cells import failure_reason
from benchmarks.machine import machine_info
from benchmarks.report import add_output_args, save_report
from benchmarks.timing import time_callables
from models.yolo import Model
from utils.backends import DetectBackend, onnx_session
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.general import LOGGER

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.bench_export"


def default_cfgs() -> list[str]:
    """The nano-scale yamls: yolov5n and every yolov5n_* lightweight backbone."""
    return ["yolov5n.yaml"] + sorted(p.name for p in (ROOT / "models").glob("yolov5n_*.yaml"))


def load_avg() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def bench_cfg(cfg: str, imgszs: list[int], work: Path, data: str, threads: int, runs: int, warmup: int,
              calib: int, nc: int | None = None, settle: float = 0.05) -> list[dict]:
    """Latency rows (one per imgsz) for one yaml."""
    torch.manual_seed(0)
    model = Model(cfg, nc=nc, verbose=False)
    params = sum(p.numel() for p in model.parameters())
    w = save_checkpoint(make_checkpoint(model), work / f"{Path(cfg).stem}.pt")
    before = export.load_model(w, torch.device("cpu"))  # fused, NCHW: what attempt_load gives a script
    after = DetectBackend(w)  # fused, channels_last, run under inference_mode below
    rows = []
    for s in imgszs:
        stem = work / f"{Path(cfg).stem}_{s}"
        files = export.run(weights=w, imgsz=(s, s), include=("onnx",), file=stem, int8=True, data=data,
                           calib_images=calib, check_int8=False)
        fp32, int8 = onnx_session(files[0], "cpu", threads), onnx_session(files[1], "cpu", threads)
        x = torch.rand(1, 3, s, s)
        xn = x.numpy()

        def eager_before():
            with torch.no_grad():
                before(x)

        def eager_after():
            with torch.inference_mode():
                after(x)

        t = time_callables({"eager": eager_before, "eager_tuned": eager_after,
                            "ort_fp32": lambda: fp32.run(None, {"images": xn}),
                            "ort_int8": lambda: int8.run(None, {"images": xn})}, runs, warmup, settle=settle)
        rows.append({"model": Path(cfg).name, "params": params, "imgsz": s, **t})
    return rows


def bench_map(weights: str, data: str, imgsz: int, work: Path, calib: int, threads: int, runs: int,
              warmup: int, settle: float = 0.05) -> dict:
    """FP32 vs INT8 mAP of a trained checkpoint on data's val split, plus their latency at that size."""
    stem = work / (Path(weights).stem + f"_map{imgsz}")
    files = export.run(weights=weights, imgsz=(imgsz, imgsz), include=("onnx",), file=stem, int8=True, data=data,
                       calib_images=calib, check_int8=False)
    m = export.compare_int8(Path(files[0]), Path(files[1]), data, imgsz)
    fp32, int8 = onnx_session(files[0], "cpu", threads), onnx_session(files[1], "cpu", threads)
    xn = np.random.rand(1, 3, imgsz, imgsz).astype(np.float32)
    t = time_callables({"ort_fp32": lambda: fp32.run(None, {"images": xn}),
                        "ort_int8": lambda: int8.run(None, {"images": xn})}, runs, warmup, settle=settle)
    cfg = DetectBackend(weights).yaml.get("yaml_file", "?")
    return {"weights": str(weights), "model": cfg, "imgsz": imgsz, **t,
            **{f"{k}_{n}": v for k, d in m.items() for n, v in d.items()}}


def speed_table(rows: list[dict], stat: str = "") -> str:
    """stat '' for medians, '_min' for the fastest run of each backend."""
    head = ("| model | params | imgsz | eager NCHW (ms) | eager tuned (ms) | ORT FP32 (ms) | ORT INT8 (ms) | "
            "FP32 vs eager | FP32 vs eager tuned | INT8 vs FP32 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        e, et, f, q = (r[k + stat] for k in ("eager", "eager_tuned", "ort_fp32", "ort_int8"))
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['imgsz']} | {e:.1f} | {et:.1f} | {f:.1f} | "
                     f"{q:.1f} | {e / f:.2f}x | {et / f:.2f}x | {f / q:.2f}x |")
    return "\n".join(lines)


def map_table(rows: list[dict]) -> str:
    head = ("| weights | model | imgsz | mAP50 FP32 | mAP50 INT8 | Δ mAP50 (points) | mAP50-95 FP32 | mAP50-95 INT8 | "
            "ORT FP32 (ms) | ORT INT8 (ms) | INT8 vs FP32 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {Path(r['weights']).name} | {r['model']} | {r['imgsz']} | {r['fp32_mAP50']:.4f} | "
                     f"{r['int8_mAP50']:.4f} | {(r['int8_mAP50'] - r['fp32_mAP50']) * 100:+.2f} | "
                     f"{r['fp32_mAP50-95']:.4f} | {r['int8_mAP50-95']:.4f} | {r['ort_fp32']:.1f} | "
                     f"{r['ort_int8']:.1f} | {r['ort_fp32'] / r['ort_int8']:.2f}x |")
    return "\n".join(lines)


def machine() -> str:
    m = machine_info()
    return (f"{m['cpu']}, {m['cores']} logical CPUs; torch {m['torch_version']}, onnxruntime "
            f"{m['onnxruntime_version']}, Python {m['python']}")


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", nargs="+", default=None, help="model yamls (default: yolov5n and yolov5n_*)")
    p.add_argument("--imgsz", nargs="+", type=int, default=[320, 640], help="square input sizes")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--nc", type=int, default=None, help="classes of the speed models (default: the yaml's, 80)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per backend (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--data", default="shapes.yaml", help="dataset yaml: INT8 calibration (train) and mAP (val)")
    p.add_argument("--calib-images", type=int, default=100, help="INT8 calibration images")
    p.add_argument("--map-weights", nargs="*", default=[], help="trained checkpoints for the FP32-vs-INT8 mAP table")
    p.add_argument("--map-imgsz", type=int, default=256, help="export/validation size for the mAP table")
    p.add_argument("--settle", type=float, default=0.05, help="seconds of pause before each block of timed runs "
                   "(0 shows how the previous runtime's spinning threads slow the next one)")
    p.add_argument("--no-speed", action="store_true", help="only the mAP table")
    add_output_args(p, "export", "export.md", "markdown file to write instead of project/name/export.md "
                   "(benchmarks/results/export.md: the published table; '' for none)")
    return p.parse_args(argv)


def main(opt) -> str:
    torch.set_num_threads(opt.threads)
    LOGGER.setLevel(logging.WARNING)  # export.run's per-file chatter; the table is the output
    cfgs = opt.cfg or default_cfgs()
    load0 = load_avg()
    t0 = time.time()
    speed_rows, map_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        work = Path(tmp)
        if not opt.no_speed:
            for cfg in cfgs:
                try:
                    speed_rows += bench_cfg(cfg, opt.imgsz, work, opt.data, opt.threads, opt.runs, opt.warmup,
                                            opt.calib_images, opt.nc, opt.settle)
                except Exception as e:  # one broken yaml must not lose the other rows
                    print(f"{cfg}: skipped ({failure_reason(e)})")
                print(speed_table(speed_rows[-len(opt.imgsz):]).splitlines()[-1] if speed_rows else "", flush=True)
        for w in opt.map_weights:
            map_rows.append(bench_map(w, opt.data, opt.map_imgsz, work, opt.calib_images, opt.threads, opt.runs,
                                      opt.warmup, opt.settle))
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    args = " ".join(sys.argv[1:])
    md = [f"# Export latency (batch 1, {opt.threads} threads, median of {opt.runs} runs)", "",
          f"Machine: {machine()}. Date: {date}. 1-minute load average {load0} before, {load_avg()} after "
          f"({time.time() - t0:.0f} s). Command: `{COMMAND}{' ' + args if args else ''}`.", ""]
    if speed_rows:
        md += ["Medians:", "", speed_table(speed_rows), "",
               "Fastest run of each backend (less sensitive to load from other processes):", "",
               speed_table(speed_rows, "_min"), ""]
    if map_rows:
        md += [f"## FP32 vs INT8 accuracy ({opt.data} val split, {opt.calib_images} calibration images from train)",
               "", map_table(map_rows), ""]
    text = "\n".join(md)
    save_report(text, opt, "export.md")
    return text


if __name__ == "__main__":
    main(parse_opt())
