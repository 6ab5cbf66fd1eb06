"""Latency per deployment runtime: ONNX Runtime, OpenVINO, ncnn and MNN, FP32, batch 1, the same fused model
exported (and verified against PyTorch) by export.py, threads stated, median of repeated runs after warm-up.

Usage (writes runs/benchmark/runtimes*/runtimes.md):
    python -m benchmarks.bench_runtimes                                   # nano yamls at 320
    python -m benchmarks.bench_runtimes --cfg yolov5n_ShuffleNetV2.yaml --imgsz 320 640 --threads 2 --runs 30

time_runtimes times any set of exports in turns in one process; time_runtimes_in_child does it in a child
process (python -m benchmarks.bench_runtimes --child), which is how the backbone table (python -m benchmarks)
times them beside its own long-lived process.

These are x86 numbers. On ARM (phones, boards) the order can change: ncnn and MNN ship hand-written NEON
depthwise and INT8 dot-product (sdot/i8mm) kernels that matter most there, while OpenVINO targets Intel CPUs,
iGPUs and NPUs and ONNX Runtime's ARM kernels are less tuned for depthwise convolutions.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cells import failure_reason
from benchmarks.machine import machine_info
from benchmarks.report import add_output_args, save_report
from benchmarks.timing import time_callables
from utils.general import LOGGER
from utils.runtimes import load_runner

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.bench_runtimes"
RUNTIMES = ("onnx", "openvino", "ncnn", "mnn")
TITLES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO", "ncnn": "ncnn", "mnn": "MNN"}
CHILD_TIMEOUT_S = 1800


def default_cfgs() -> list[str]:
    return sorted(p.name for p in (ROOT / "models").glob("yolov5n*.yaml"))


def time_runtimes(files: dict, imgsz: int, threads: int, runs: int, warmup: int, progress=None) -> dict[str, float]:
    """{key: median ms, key_min: fastest ms} of exported models ({key: file or folder}, any runtime load_runner
    reads) at batch 1, `threads` threads each, loaded into this process and timed in turns (time_callables) on one
    random input. progress(key, stage) is told when each model starts loading and when its first run is done."""
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    runners = {}
    for k, f in files.items():
        if progress:
            progress(k, "start")
        runners[k] = load_runner(f, threads=threads)
        runners[k](x)  # a runtime that cannot run the graph fails (or crashes) here, naming itself
        if progress:
            progress(k, "ok")
    return time_callables({k: (lambda r=r: r(x)) for k, r in runners.items()}, runs, warmup)


def _child(spec_file: str, out_file: str) -> int:
    """python -m benchmarks.bench_runtimes --child SPEC.json OUT.json: time_runtimes on the spec, result as JSON;
    each model's progress printed (flushed) so that the parent can name the runtime a crash happened in."""
    spec = json.loads(Path(spec_file).read_text())
    try:
        t = time_runtimes(spec["files"], spec["imgsz"], spec["threads"], spec["runs"], spec["warmup"],
                          progress=lambda k, stage: print(f"{stage} {k}", flush=True))
    except Exception as e:  # a runtime's own error (bad graph, missing package): one line for the parent
        print(failure_reason(e), file=sys.stderr)
        return 1
    Path(out_file).write_text(json.dumps(t))
    return 0


def _run_child(files: dict, imgsz: int, threads: int, runs: int, warmup: int) -> tuple[dict, str | None, str]:
    """One child: (times or {}, the key it crashed or failed in (None: unknown), the one-line failure or '')."""
    with tempfile.TemporaryDirectory(prefix="time_runtimes_") as d:
        spec, out = Path(d) / "spec.json", Path(d) / "out.json"
        spec.write_text(json.dumps({"files": {k: str(f) for k, f in files.items()}, "imgsz": imgsz,
                                    "threads": threads, "runs": runs, "warmup": warmup}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "benchmarks.bench_runtimes", "--child", str(spec), str(out)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {}, None, f"the timing process did not finish in {CHILD_TIMEOUT_S} s"
        if r.returncode == 0:
            return json.loads(out.read_text()), None, ""
        started = [ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("start ")]
        done = {ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("ok ")}
        culprit = next((k for k in started if k not in done), None)
        if r.returncode < 0:
            why = f"crashed ({signal.Signals(-r.returncode).name})"
        else:
            lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
            why = lines[-1] if lines else f"exit code {r.returncode}"
        return {}, culprit, why


def time_runtimes_in_child(files: dict, imgsz: int, threads: int, runs: int,
                           warmup: int) -> tuple[dict[str, float], dict[str, str]]:
    """time_runtimes in a child process: OpenVINO, ncnn and MNN bring their own thread pools and allocators, which
    are kept out of a long-lived caller (the benchmark, a test process; see tests/test_isolated.py). Returns (times,
    {key: one-line reason} for the models that could not be timed). A model that fails or crashes the child is
    dropped and the others are timed again without it."""
    files, failed = dict(files), {}
    while files:
        times, culprit, why = _run_child(files, imgsz, threads, runs, warmup)
        if not why:
            return times, failed
        if culprit is None or culprit not in files:  # not attributable to one model: none of them is timed
            failed.update(dict.fromkeys(files, f"timing process {why}"))
            break
        failed[culprit] = f"the runtime {why} running the model" if why.startswith("crashed") else why
        files.pop(culprit)
    return {}, failed


def bench_cfg(cfg: str, imgsz: int, work: Path, threads: int, runs: int, warmup: int,
              runtimes=RUNTIMES) -> dict:
    """{runtime: median ms, runtime_min: fastest ms} for one yaml at one size (freshly built weights: speed does
    not depend on them)."""
    import torch

    import export
    from models.yolo import Model
    torch.manual_seed(0)
    model = Model(ROOT / "models" / cfg, verbose=False)
    stem = work / f"{Path(cfg).stem}_{imgsz}.pt"
    files = export.run(weights=model, imgsz=(imgsz, imgsz), include=runtimes, file=stem)
    return time_runtimes(dict(zip(runtimes, files)), imgsz, threads, runs, warmup)


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
    if sys.argv[1:2] == ["--child"]:
        sys.exit(_child(*sys.argv[2:4]))
    main(parse_opt())
