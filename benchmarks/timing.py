"""Wall-clock latency: medians of timed calls after warm-up, for PyTorch modules, ONNX Runtime sessions and any
set of callables timed in turns."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch


def timed_runs(fn, runs: int, warmup: int) -> list[float]:
    """Wall times of fn() in ms over runs calls, after warmup untimed calls (first-call costs excluded)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def time_callables(fns: dict, runs: int, warmup: int, block: int = 10, settle: float = 0.05) -> dict[str, float]:
    """Median ms per callable (and the fastest run, as '<name>_min'). Callables take turns in blocks of `block`
    back-to-back calls, each block after a pause of `settle` seconds and one untimed call: a slow stretch of the
    machine then hits every column alike, while each timed call finds its runtime's threads awake and its weights in
    cache. Measured here (2 cores), both matter: turns of single calls time every call cold (+2 ms on a 3 ms ONNX
    Runtime run after a PyTorch one), and without the pause the previous runtime's threads are still spinning when
    the next block starts (an INT8 session timed right after an FP32 one: 3.5-5 ms instead of 3.0 ms alone)."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    while min(len(v) for v in times.values()) < runs:
        for k, fn in fns.items():
            time.sleep(settle)
            times[k] += timed_runs(fn, min(block, runs - len(times[k])), warmup=1)
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_min": min(v) for k, v in times.items()})
    return out


def _timed_median(fn, runs: int, warmup: int) -> float:
    """Median of timed_runs(fn, runs, warmup)."""
    if runs < 1:
        raise ValueError(f"--runs must be >= 1, got {runs}")
    return statistics.median(timed_runs(fn, runs, warmup))


def measure_latency_torch(model, imgsz: int, threads: int = 2, runs: int = 50, warmup: int = 10,
                          channels_last: bool = True) -> float:
    """Batch-1 eval-mode forward latency (ms, median) of a PyTorch model with `threads` intra-op threads; by default
    in channels_last memory format, as DetectBackend (detect.py, val.py, the predictor) runs it on a CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        x = torch.rand(1, 3, imgsz, imgsz)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return _timed_median(lambda: model(x), runs, warmup)
    finally:
        torch.set_num_threads(previous)


def measure_latency_onnx(path: str | Path, imgsz: int, threads: int = 2, runs: int = 50, warmup: int = 10) -> float:
    """Batch-1 latency (ms, median) of an ONNX file in ONNX Runtime on the CPU with `threads` intra-op threads."""
    from utils.backends import onnx_session
    sess = onnx_session(path, "cpu", threads)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else s for d, s in zip(inp.shape, (1, 3, imgsz, imgsz))]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return _timed_median(lambda: sess.run(None, {inp.name: x}), runs, warmup)
