"""Latency per deployment runtime: ONNX Runtime, OpenVINO, ncnn and MNN, FP32, batch 1, the same fused model
exported (and verified against PyTorch) by export.py, threads stated, median of repeated runs after warm-up.

Usage (writes runs/benchmark/runtimes*/runtimes.md):
    python -m benchmarks.bench_runtimes                                   # nano yamls at 320
    python -m benchmarks.bench_runtimes --cfg yolov5n_ShuffleNetV2.yaml --imgsz 320 640 --threads 2 --runs 30

These are x86 numbers. On ARM (phones, boards) the order can change: ncnn and MNN ship hand-written NEON
depthwise and INT8 dot-product (sdot/i8mm) kernels that matter most there, while OpenVINO targets Intel CPUs,
iGPUs and NPUs and ONNX Runtime's ARM kernels are less tuned for depthwise convolutions.
"""
from __future__ import annotations

import argparse
import datetime
import logging
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
from utils.general import LOGGER
from utils.runtimes import load_runner

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.bench_runtimes"
RUNTIMES = ("onnx", "openvino", "ncnn", "mnn")
TITLES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO", "ncnn": "ncnn", "mnn": "MNN"}


def default_cfgs() -> list[str]:
    return sorted(p.name for p in (ROOT / "models").glob("yolov5n*.yaml"))


def bench_cfg(cfg: str, imgsz: int, work: Path, threads: int, runs: int, warmup: int,
              runtimes=RUNTIMES) -> dict:
    """{runtime: median ms, runtime_min: fastest ms} for one yaml at one size (freshly built weights: speed does
    not depend on them)."""
    torch.manual_seed(0)
    model = Model(ROOT / "models" / cfg, verbose=False)
    stem = work / f"{Path(cfg).stem}_{imgsz}.pt"
    files = export.run(weights=model, imgsz=(imgsz, imgsz), include=runtimes, file=stem)
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    runners = {rt: load_runner(f, threads=threads) for rt, f in zip(runtimes, files)}
    return time_callables({rt: (lambda r=r: r(x)) for rt, r in runners.items()}, runs, warmup)


def table(rows: list[dict], runtimes=RUNTIMES, stat: str = "") -> str:
    head = "| yaml | imgsz | " + " | ".join(f"{TITLES[r]} ms" for r in runtimes) + " | fastest |"
    lines = [head, "|" + "---|" * (len(runtimes) + 3)]
    for row in rows:
        t = {r: row.get(r + stat) for r in runtimes}
        ok = {r: v for r, v in t.items() if v is not None}
        best = min(ok, key=ok.get) if ok else None
        cells = [f"{t[r]:.1f}" if t[r] is not None else "-" for r in runtimes]
        lines.append(f"| {row['cfg']} | {row['imgsz']} | " + " | ".join(cells) +
                     f" | {TITLES[best] if best else '-'} |")
    return "\n".join(lines)


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Latency per deployment runtime (ONNX Runtime, OpenVINO, ncnn, MNN)")
    p.add_argument("--cfg", nargs="+", default=None, help="model yamls (default: every models/yolov5n*.yaml)")
    p.add_argument("--imgsz", nargs="+", type=int, default=[320], help="square input sizes")
    p.add_argument("--threads", type=int, default=1, help="threads given to every runtime")
    p.add_argument("--runs", type=int, default=20, help="timed runs per runtime (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--include", nargs="+", default=list(RUNTIMES), help="runtimes: onnx openvino ncnn mnn")
    add_output_args(p, "runtimes", "runtimes.md", "markdown file to write instead of project/name/runtimes.md "
                   "('' for none)")
    return p.parse_args(argv)


def main(opt) -> str:
    LOGGER.setLevel(logging.WARNING)  # export.run's per-file chatter; the table is the output
    runtimes = tuple(r for r in RUNTIMES if r in opt.include)
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_runtimes_") as tmp:
        for cfg in opt.cfg or default_cfgs():
            for s in opt.imgsz:
                row = {"cfg": cfg, "imgsz": s}
                try:
                    row.update(bench_cfg(cfg, s, Path(tmp), opt.threads, opt.runs, opt.warmup, runtimes))
                except Exception as e:  # one broken yaml or runtime must not lose the other rows
                    print(f"{cfg} {s}: skipped ({failure_reason(e)})")
                rows.append(row)
                print(table(rows[-1:], runtimes).splitlines()[-1], flush=True)
    m = machine_info()
    md = [f"# Latency per runtime (FP32, batch 1, {opt.threads} thread(s), median of {opt.runs} runs after "
          f"{opt.warmup} warm-up)", "",
          f"Machine: {m['cpu']}, {m['cores']} logical CPUs. Date: {datetime.datetime.now():%Y-%m-%d %H:%M} "
          f"({time.time() - t0:.0f} s). Command: `{COMMAND}{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`.",
          "", table(rows, runtimes), "", "Fastest run of each runtime:", "", table(rows, runtimes, "_min"), "",
          "x86 numbers: on ARM the ranking can differ (ncnn/MNN NEON depthwise and INT8 dot-product kernels).", ""]
    text = "\n".join(md)
    save_report(text, opt, "runtimes.md")
    return text


if __name__ == "__main__":
    main(parse_opt())
