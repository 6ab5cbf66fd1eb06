"""Where the time of an ONNX file goes in ONNX Runtime: kernel time per operator type (depthwise convs counted
apart), from ONNX Runtime's own profiler, for one or more files side by side (e.g. an FP32 export and its INT8
twin). This is how the README explains why INT8 gains little on depthwise/SiLU models.

Usage:
    python export.py --weights best.pt --include onnx --int8 --data shapes.yaml --imgsz 320
    python -m benchmarks.profile_onnx best.onnx best_int8.onnx --imgsz 320 --threads 1
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def depthwise_nodes(optimized_model: str) -> set[str]:
    """Names of grouped convolutions (group > 1) in the graph ONNX Runtime actually runs."""
    import onnx
    out = set()
    for node in onnx.load(optimized_model).graph.node:
        if "Conv" in node.op_type and any(a.name == "group" and a.i > 1 for a in node.attribute):
            out.add(node.name)
    return out


def profile(file: str | Path, imgsz: int, threads: int = 1, runs: int = 30, warmup: int = 5) -> dict:
    """Median latency (ms) and mean kernel ms per operator type over `runs` batch-1 calls."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3  # saving the optimized graph warns that it is machine-specific; it is only read here
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "prof")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")  # to tell depthwise convs apart
        sess = ort.InferenceSession(str(file), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(warmup):
            sess.run(None, feed)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t) * 1000)
        events = json.loads(Path(sess.end_profiling()).read_text())
        depthwise = depthwise_nodes(so.optimized_model_filepath)
    per_op = collections.Counter()
    for e in events:  # warm-up calls are profiled too: divide by every call
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op + " (depthwise)" if e["name"][:-len("_kernel_time")] in depthwise else op] += e["dur"]
    calls = runs + warmup
    return {"median_ms": float(np.median(times)), "ops_ms": {k: v / calls / 1000 for k, v in per_op.items()}}


def table(results: dict[str, dict], top: int = 12) -> str:
    """Markdown: one column per file, the operator types that take the most time in any of them."""
    ops = collections.Counter()
    for r in results.values():
        ops.update(r["ops_ms"])
    names = list(results)
    lines = ["| operator | " + " | ".join(f"{Path(n).name} ms (%)" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for op, _ in ops.most_common(top):
        cells = []
        for n in names:
            ms, total = results[n]["ops_ms"].get(op, 0.0), sum(results[n]["ops_ms"].values())
            cells.append(f"{ms:.2f} ({100 * ms / total:.0f}%)" if ms else "-")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("| **latency (median)** | " + " | ".join(f"{results[n]['median_ms']:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="ONNX files exported by export.py")
    p.add_argument("--imgsz", type=int, default=320, help="square input size (must match a fixed-shape export)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--runs", type=int, default=30, help="profiled runs after the warm-up")
    opt = p.parse_args(argv)
    missing = [f for f in opt.files if not Path(f).is_file()]
    if missing:
        sys.exit(f"ERROR: no such ONNX file: {', '.join(missing)}")
    text = table({f: profile(f, opt.imgsz, opt.threads, opt.runs) for f in opt.files})
    print(text)
    return text


if __name__ == "__main__":
    main()
