"""Choose a backbone for a device: size, CPU speed, memory and accuracy of model yamls, measured on this machine.

    python benchmarks.py --data data/shapes.yaml --imgsz 320 --cfgs models/yolov5n*.yaml --epochs 10

For every model yaml one CSV row: parameters and GFLOPs (the YOLOv5 summary of the model as built, at --imgsz),
batch-1 CPU latency for the fused PyTorch model, the ONNX Runtime FP32 export and the ONNX Runtime INT8 export
(median of --runs timed calls after --warmup untimed ones, --threads intra-op threads), peak memory of each
inference backend, exported file sizes and, when --epochs > 0, mAP50 and mAP50-95 of best.pt after training that
many epochs from scratch with one recipe and seed for all. The CSV also records the machine (CPU, cores, library
versions, load average) so tables from different machines are not mixed up. A stage that fails writes 'n/a' in
its columns and the reason in the row's 'skipped' column; the run goes on with the next stage and model.

Peak memory method: each backend is loaded and run in a fresh child process (so freed memory of earlier models
cannot be reused); after the imports the child resets the kernel's RSS high-water mark (/proc/self/clear_refs)
and reports peak RSS (VmHWM) minus RSS at that point, i.e. weights + activations + runtime buffers of loading the
model and running 3 batch-1 inferences. Without /proc it reports the growth of getrusage's ru_maxrss instead.

Outputs: <out>/<name>.csv, <name>.png (latency vs mAP50-95 with the Pareto front; latency vs GFLOPs when
--epochs 0) and <name>.md (the table, the machine and the command). Training runs and exports go under
runs/benchmark/<name>/.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.general import LOGGER, first_line  # noqa: E402

NA = "n/a"
METRIC_COLUMNS = ["model", "params", "gflops", "torch_ms", "ort_fp32_ms", "ort_int8_ms", "torch_mem_mb",
                  "ort_fp32_mem_mb", "ort_int8_mem_mb", "onnx_fp32_mb", "onnx_int8_mb", "map50", "map50_95",
                  "train_s"]
RECIPE_COLUMNS = ["epochs", "imgsz", "train_imgsz", "batch_size", "optimizer", "nbs", "hyp", "seed", "data", "cfg",
                  "threads", "warmup", "runs"]
MACHINE_COLUMNS = ["cpu", "cpu_isa", "cores", "torch_version", "onnxruntime_version", "python", "os", "date",
                   "load_avg"]
COLUMNS = METRIC_COLUMNS + RECIPE_COLUMNS + MACHINE_COLUMNS + ["skipped"]
TABLE = [  # (column, header, format) of the printed / markdown table
    ("model", "Model", "{}"), ("params", "Params (M)", "{:.2f}"), ("gflops", "GFLOPs", "{:.2f}"),
    ("torch_ms", "PyTorch ms", "{:.1f}"), ("ort_fp32_ms", "ORT FP32 ms", "{:.1f}"),
    ("ort_int8_ms", "ORT INT8 ms", "{:.1f}"), ("torch_mem_mb", "PyTorch MB", "{:.0f}"),
    ("ort_fp32_mem_mb", "ORT FP32 MB", "{:.0f}"), ("ort_int8_mem_mb", "ORT INT8 MB", "{:.0f}"),
    ("onnx_fp32_mb", "ONNX MB", "{:.1f}"), ("onnx_int8_mb", "INT8 MB", "{:.1f}"),
    ("map50", "mAP50", "{:.3f}"), ("map50_95", "mAP50-95", "{:.3f}")]

# Run with `python -c` in a fresh process; it must not import this module (that would load torch for ONNX too).
_MEMORY_PROBE = r"""
import json, os, resource, sys
kind, path, imgsz, threads, runs, root = sys.argv[1:7]
imgsz, threads, runs = int(imgsz), int(threads), int(runs)
import numpy as np
if kind == "torch":
    sys.path.insert(0, root)
    import torch
    import models.yolo  # noqa: F401  (module classes for unpickling; imported before the baseline)
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


class Skip(Exception):
    """A stage that cannot run here (missing backend, nothing to measure); the message is the reason."""


# ---------------------------------------------------------------------------------------------- machine


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp")


def _cpuinfo() -> dict[str, str]:
    """First value of each /proc/cpuinfo key ({} where there is none)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo ('model name'), else platform.processor()."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_isa() -> str:
    """The CPU's SIMD extensions that decide FP32/INT8 kernel speed (VNNI, AMX: fast INT8), space-separated."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    return " ".join(f for f in ISA_FLAGS if f in flags) or "unknown"


def machine_info() -> dict:
    """The CSV's machine columns: what a latency figure is only valid for."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    try:
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        load = "unknown"
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cores": os.cpu_count(), "torch_version": torch.__version__,
            "onnxruntime_version": ort_version, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "load_avg": load}


# ---------------------------------------------------------------------------------------------- stages


def build_model(cfg: str | Path, nc: int, seed: int = 0):
    """The model as a training run would build it (same nc, same seeded initialisation)."""
    from models.yolo import Model
    torch.manual_seed(seed)
    return Model(cfg, nc=nc, verbose=False)


def model_size(model, imgsz: int) -> tuple[int, float]:
    """(parameters, GFLOPs at imgsz), counted as YOLOv5's model summary counts them."""
    from utils.torch_utils import model_flops
    params = sum(p.numel() for p in model.parameters())
    gflops = model_flops(model, imgsz)
    if gflops is None:
        raise Skip("thop is not installed")
    return params, gflops


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


def start_peak_memory(kind: str, path: str | Path, imgsz: int, threads: int = 2, runs: int = 3) -> subprocess.Popen:
    """Start the memory probe child for a torch.save'd nn.Module (kind 'torch') or an ONNX file (kind 'onnx');
    finish_peak_memory() collects its result, so other untimed work can run meanwhile."""
    if kind not in ("torch", "onnx"):
        raise ValueError(f"kind must be 'torch' or 'onnx', got {kind!r}")
    cmd = [sys.executable, "-c", _MEMORY_PROBE, kind, str(path), str(imgsz), str(threads), str(runs), str(ROOT)]
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


def _results_csv_metrics(csv_file: Path) -> tuple[float, float]:
    """(mAP50, mAP50-95) of the best-fitness epoch (0.1 mAP50 + 0.9 mAP50-95: the epoch best.pt holds)."""
    key50, key95 = "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"
    with open(csv_file, newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in r.items() if k} for r in csv.DictReader(f)]
    if not rows or key50 not in rows[0] or key95 not in rows[0]:
        raise ValueError(f"{csv_file}: no '{key50}' and '{key95}' columns")
    best = max(rows, key=lambda r: 0.1 * float(r[key50]) + 0.9 * float(r[key95]))
    return float(best[key50]), float(best[key95])


RECORD = "benchmark.json"  # written into a training run folder once it has finished: what it was and what it scored


def training_recipe(cfg: str | Path, data: str | Path, epochs: int, imgsz: int, seed: int, batch_size: int,
                    hyp: str | None, optimizer: str, nbs: int) -> dict:
    """Everything that decides a benchmark training run's result. The yaml's parsed content is hashed, not just its
    name, so an edited model is retrained while a comment edit is not. Hyp and data yamls are named, not hashed
    (edit them and use a new --name)."""
    return dict(cfg=Path(cfg).name, model_sha1=model_hash(cfg), data=Path(str(data)).name,
                epochs=epochs, imgsz=imgsz, seed=seed, batch_size=batch_size, hyp=str(hyp or ""),
                optimizer=optimizer, nbs=nbs)


def model_hash(cfg: str | Path) -> str:
    """sha1 of the model yaml's content (keys sorted, comments and layout ignored); of its text if it does not parse."""
    import hashlib
    text = Path(cfg).read_text() if Path(cfg).is_file() else str(cfg)
    try:
        text = json.dumps(yaml.safe_load(text), sort_keys=True, default=str)
    except yaml.YAMLError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()


def finished_run(project: str | Path, name: str, recipe: dict) -> dict | None:
    """The newest finished training run of this recipe under project/name*, or None: a rerun of an interrupted or
    repeated benchmark reuses it instead of training again (latencies are measured anew every time)."""
    records = [f for f in Path(project).glob(f"{name}*/{RECORD}")  # name, name2, name3 ... (train.py's numbering)
               if f.parent.name == name or f.parent.name[len(name):].isdigit()]
    for record in sorted(records, key=lambda f: f.stat().st_mtime, reverse=True):
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        weights = record.parent / "weights" / info.get("weights", "best.pt")
        if info.get("recipe") == recipe and weights.is_file():
            return {"weights": weights, "map50": info["map50"], "map50_95": info["map50_95"],
                    "train_s": info["train_s"], "reused": True}
    return None


def train_and_eval(cfg: str | Path, data: str | Path, epochs: int, imgsz: int, seed: int = 0, batch_size: int = 16,
                   hyp: str | None = "hyp.scratch-low.yaml", workers: int = 2,
                   project: str | Path = ROOT / "runs/benchmark", name: str = "exp", optimizer: str = "SGD",
                   nbs: int = 64, reuse: bool = True) -> dict:
    """Train cfg from scratch for `epochs` with train.run and the shared recipe; returns weights (best.pt), mAP50,
    mAP50-95 (the best epoch's validation, which best.pt holds) and the wall time in seconds. With reuse, a
    finished run of the same recipe under project/name* is returned instead (its 'reused' key is True)."""
    recipe = training_recipe(cfg, data, epochs, imgsz, seed, batch_size, hyp, optimizer, nbs)
    if reuse and (done := finished_run(project, name, recipe)):
        LOGGER.info(f"benchmarks: reusing {done['weights']} (same recipe, trained earlier)")
        return done
    try:
        import train
    except ImportError as e:
        raise Skip(f"train.py is not available ({e})") from None
    kw = dict(weights="", cfg=str(cfg), data=str(data), epochs=epochs, imgsz=imgsz, batch_size=batch_size,
              seed=seed, workers=workers, project=str(project), name=name, exist_ok=False, device="cpu",
              noplots=True, optimizer=optimizer, nbs=nbs)
    if hyp:
        kw["hyp"] = str(hyp)
    t = time.perf_counter()
    opt = train.run(**kw)  # a fresh run folder (name, name2, ...): a rerun never reads an older run's files
    seconds = time.perf_counter() - t
    status = str(getattr(opt, "status", "completed"))
    if status == "interrupted":
        raise KeyboardInterrupt  # Ctrl-C during training stops the whole benchmark, not just this model
    if status not in ("completed", "early stopped"):
        raise RuntimeError(f"training stopped: {status}")
    save_dir = Path(getattr(opt, "save_dir", None) or Path(project) / name)
    weights = next((w for w in (save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt") if w.is_file()),
                   None)
    if weights is None:
        raise FileNotFoundError(f"training wrote no weights under {save_dir / 'weights'}")
    results = getattr(opt, "results", None)  # train.py's final validation of best.pt: (P, R, mAP50, mAP50-95, ...)
    if isinstance(results, (list, tuple)) and len(results) >= 4 and all(as_float(v) is not None for v in results[2:4]):
        map50, map50_95 = float(results[2]), float(results[3])
    else:
        map50, map50_95 = _results_csv_metrics(save_dir / "results.csv")
    record = dict(recipe=recipe, weights=weights.name, map50=map50, map50_95=map50_95, train_s=seconds)
    tmp = save_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, save_dir / RECORD)  # atomic: a record only ever describes a finished run
    return {"weights": weights, "map50": map50, "map50_95": map50_95, "train_s": seconds, "reused": False}


def save_untrained(model, file: Path) -> Path:
    """A checkpoint of the freshly built model, for --epochs 0 (speed and size do not depend on the weights)."""
    from utils.checkpoint import make_checkpoint, save_checkpoint
    file.parent.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(make_checkpoint(model, epoch=-1), file))


def export_onnx(weights: str | Path, imgsz: int, int8: bool = False, data: str | Path | None = None,
                calib_images: int | None = None) -> dict[str, Path]:
    """Files written by export.run for weights: {'fp32': .onnx} plus {'int8': _int8.onnx} (static INT8 calibrated
    on data's train images) when int8. The FP32-vs-INT8 mAP check of export.py is not run here."""
    try:
        import export
    except ImportError as e:
        raise Skip(f"export.py is not available ({e})") from None
    kw = dict(weights=str(weights), include=("onnx",), imgsz=(imgsz, imgsz), device="cpu")
    if int8:
        kw.update(int8=True, data=str(data), check_int8=False)
        if calib_images:
            kw["calib_images"] = calib_images
    files = [Path(f) for f in export.run(**kw)]
    onnx = [f for f in files if f.suffix == ".onnx" and f.is_file()]
    out = {"fp32": next((f for f in onnx if not f.stem.endswith("_int8")), None)}
    if int8:
        out["int8"] = next((f for f in onnx if f.stem.endswith("_int8")), None)
    if out["fp32"] is None:
        raise RuntimeError(f"export.run wrote no FP32 .onnx file (returned {files})")
    return out


# ---------------------------------------------------------------------------------------------- one model


def failure_reason(e: BaseException) -> str:
    """One line for the 'skipped' column: the message of a Skip, 'Type: first line' of anything else."""
    msg = first_line(e) if str(e).strip() else ""
    return msg if isinstance(e, Skip) else f"{type(e).__name__}: {msg}".rstrip(": ")


class Row(dict):
    """One CSV row; stage() runs a measurement and records either its values or 'n/a' with the reason."""

    def stage(self, columns: tuple[str, ...], fn, keep: bool = False):
        """Store fn()'s value(s) in columns; on any exception mark them 'n/a' with the reason and return None.
        keep: return fn()'s result without storing it (an intermediate such as a file or a model)."""
        try:
            value = fn()
        except Exception as e:  # any failure of one stage must not stop the others
            self.skip(columns, failure_reason(e))
            return None
        if not keep:
            for c, v in zip(columns, value if isinstance(value, tuple) else (value,)):
                self[c] = v
        return value

    def skip(self, columns, reason: str) -> None:
        """Mark columns 'n/a' and record why (one line, no ';' which separates reasons)."""
        reason = " ".join(reason.replace(";", ",").split())[:300]
        for c in columns:
            self[c] = NA
        self.setdefault("_reasons", []).append(f"{'+'.join(columns)}: {reason}")


def benchmark_model(cfg: str | Path, opt: argparse.Namespace, nc: int, workdir: Path, progress=None) -> Row:
    """Every measurement for one model yaml; a failing stage marks its columns and the others still run."""
    cfg = Path(cfg)
    row = Row(model=cfg.stem, cfg=str(cfg), epochs=opt.epochs, imgsz=opt.imgsz,
              train_imgsz=opt.train_imgsz or opt.imgsz, batch_size=opt.batch_size, optimizer=opt.optimizer,
              nbs=opt.nbs, hyp=opt.hyp or "train.py default", seed=opt.seed, data=Path(str(opt.data)).name,
              threads=opt.threads, warmup=opt.warmup, runs=opt.runs)

    def step(name: str) -> None:
        if progress is not None:
            progress.set_postfix_str(f"{cfg.stem}: {name}")

    step("build")
    model = row.stage(("params", "gflops"), lambda: build_model(cfg, nc, opt.seed), keep=True)
    if model is None:  # the yaml does not build: nothing else can run
        row.skip([c for c in METRIC_COLUMNS if c not in row], "the model does not build")
        return row
    row.stage(("params", "gflops"), lambda: model_size(model, opt.imgsz))

    weights = None
    if opt.epochs > 0:
        step(f"train {opt.epochs} epochs")
        res = row.stage(("map50", "map50_95", "train_s"), lambda: train_and_eval(
            cfg, opt.data, opt.epochs, opt.train_imgsz or opt.imgsz, opt.seed, opt.batch_size, opt.hyp, opt.workers,
            workdir / "train", cfg.stem, opt.optimizer, opt.nbs, not opt.retrain), keep=True)
        if res is not None:
            row.update(map50=res["map50"], map50_95=res["map50_95"], train_s=res["train_s"])
            weights = res["weights"]
    else:
        row.skip(("map50", "map50_95", "train_s"), "--epochs 0 (no training)")
    if weights is None:  # speed, memory and size do not depend on the weights' values
        weights = row.stage(("weights",), lambda: save_untrained(model, workdir / "weights" / f"{cfg.stem}.pt"),
                            keep=True)
        if weights is None:
            row.pop("weights")
            row.skip([c for c in METRIC_COLUMNS if c not in row], "no weights file to load or export")
            return row
    del model

    step("PyTorch latency")
    fused_file = workdir / "weights" / f"{cfg.stem}_fused_module.pt"

    def torch_latency():
        from models.experimental import attempt_load
        fused = attempt_load(weights, fuse=True)
        fused_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(fused, fused_file)  # the memory probe loads this exact module
        return measure_latency_torch(fused, opt.imgsz, opt.threads, opt.runs, opt.warmup)

    row.stage(("torch_ms",), torch_latency)
    probe = None  # the PyTorch memory probe runs in a child process while the (untimed) export runs here
    if row.get("torch_ms", NA) == NA:
        row.skip(("torch_mem_mb",), "no fused PyTorch model to load")
    else:
        probe = row.stage(("torch_mem_mb",), lambda: start_peak_memory("torch", fused_file, opt.imgsz, opt.threads),
                          keep=True)

    step("ONNX export, PyTorch memory")
    try:
        files = export_onnx(weights, opt.imgsz, not opt.no_int8, opt.data, opt.calib_images)
    except Exception as e:  # INT8 quantisation may be what failed: FP32 on its own may still export
        files, reason = None, failure_reason(e)
        if not opt.no_int8:
            row.skip(("ort_int8_ms", "ort_int8_mem_mb", "onnx_int8_mb"), reason)
            files = row.stage(("ort_fp32_ms", "ort_fp32_mem_mb", "onnx_fp32_mb"),
                              lambda: export_onnx(weights, opt.imgsz, False), keep=True)
        else:
            row.skip(("ort_fp32_ms", "ort_fp32_mem_mb", "onnx_fp32_mb"), reason)
    if probe is not None:  # collected before any ONNX timing: the child must not compete for the cores
        row.stage(("torch_mem_mb",), lambda: finish_peak_memory(probe))
    for tag in ("fp32", "int8"):
        cols = (f"ort_{tag}_ms", f"ort_{tag}_mem_mb", f"onnx_{tag}_mb")
        onnx = (files or {}).get(tag)
        if onnx is None:
            if tag == "int8" and opt.no_int8:
                row.skip(cols, "--no-int8")
            elif row.get(cols[2]) != NA:  # not already explained by a failed export
                row.skip(cols, "export.run returned no such file")
            continue
        row[f"onnx_{tag}_mb"] = onnx.stat().st_size / 2 ** 20
        step(f"ORT {tag.upper()} latency")
        row.stage((f"ort_{tag}_ms",), lambda: measure_latency_onnx(onnx, opt.imgsz, opt.threads, opt.runs, opt.warmup))
        step(f"ORT {tag.upper()} memory")
        row.stage((f"ort_{tag}_mem_mb",), lambda: measure_peak_memory("onnx", onnx, opt.imgsz, opt.threads))
    return row


# ---------------------------------------------------------------------------------------------- results


def as_float(v) -> float | None:
    """A CSV cell as a float, None for 'n/a' or anything non-numeric."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def pareto_front(x: list[float], y: list[float]) -> list[int]:
    """Indices of points no other point beats (x lower-is-better, y higher-is-better), sorted by x."""
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i]))
    front, best = [], -math.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return front


LATENCY_PANELS = {"ort_fp32_ms": "ONNX Runtime FP32", "ort_int8_ms": "ONNX Runtime INT8", "torch_ms": "PyTorch fused"}


def latency_columns(rows: list[dict]) -> list[str]:
    """The chart's panels: every latency column that some row has, ONNX Runtime FP32 (what a device runs) first."""
    cols = [c for c in LATENCY_PANELS if any(as_float(r.get(c)) is not None for r in rows)]
    return cols or ["torch_ms"]


def label_points(ax, pts: list[tuple[float, float, str]], fontsize: int = 8) -> None:
    """Name each point next to it, moving a label above or below its point when it would cover one already placed:
    models with near-equal latency and mAP (a yaml and its ReLU variant) otherwise print on top of each other."""
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling so transData maps to the final positions
    px = ax.figure.dpi / 72  # pixels per point
    height, char = 1.2 * fontsize * px, 0.62 * fontsize * px
    placed: list[tuple[float, float, float, float]] = []
    for xi, yi, name in sorted(pts, key=lambda p: -p[1]):
        x0, y0 = ax.transData.transform((xi, yi))
        for dy in (4, -12, 14, -22, 24, -32, 34):
            box = (x0 + 5 * px, y0 + dy * px, x0 + 5 * px + char * len(name), y0 + dy * px + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, dy), fontsize=fontsize)


def make_chart(rows: list[dict], title: str = ""):
    """Figure with one panel per latency backend, each plotting latency vs mAP50-95 (one labelled point per model,
    that backend's Pareto front drawn): the fastest accurate model depends on the runtime. Latency vs GFLOPs, said
    in the title, when no row has an mAP."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_map = any(as_float(r.get("map50_95")) is not None for r in rows)
    ycol = "map50_95" if has_map else "gflops"
    cols = latency_columns(rows)
    fig, axes = plt.subplots(1, len(cols), figsize=(6.5 * len(cols), 6), dpi=100, sharey=True, squeeze=False)
    for ax, xcol in zip(axes[0], cols):
        pts = [(as_float(r.get(xcol)), as_float(r.get(ycol)), str(r.get("model"))) for r in rows]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            x, y, _ = zip(*pts)
            ax.scatter(x, y, s=36, zorder=3, color="tab:blue")
            ax.margins(x=0.15, y=0.12)  # room for the labels of the outermost points
            label_points(ax, pts)
            if has_map:
                f = pareto_front(list(x), list(y))
                ax.step([x[i] for i in f], [y[i] for i in f], where="post", color="tab:red", lw=1.5, zorder=2,
                        label="Pareto front (no other model is both faster and more accurate)")
                ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no model has both values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"CPU latency, batch 1, {LATENCY_PANELS[xcol]} (ms, median)")
        ax.set_title(LATENCY_PANELS[xcol], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mAP50-95" if has_map else "GFLOPs")
    head = "latency vs mAP50-95" if has_map else "latency vs GFLOPs (no mAP: --epochs 0)"
    fig.suptitle(f"{head}\n{title}" if title else head, fontsize=11)
    fig.tight_layout()
    return fig


def plot_results(rows: list[dict], file: str | Path, title: str = "") -> Path:
    """Save make_chart(rows) as a PNG."""
    import matplotlib.pyplot as plt
    fig = make_chart(rows, title)
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file)
    plt.close(fig)
    return file


def format_table(rows: list[dict]) -> str:
    """Markdown table of the headline columns; 'n/a' where a stage was skipped (reasons listed under it)."""
    lines = ["| " + " | ".join(h for _, h, _ in TABLE) + " |", "|" + "|".join("---" for _ in TABLE) + "|"]
    for r in rows:
        cells = []
        for c, _, fmt in TABLE:
            v = r.get(c, NA)
            if c == "params" and as_float(v) is not None:
                v = as_float(v) / 1e6
            cells.append(fmt.format(as_float(v)) if fmt != "{}" and as_float(v) is not None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + skip_notes(rows))


def skip_notes(rows: list[dict]) -> list[str]:
    """'Skipped:' lines under the table, one per distinct reason, naming its models ('all models' if every one)."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        for part in str(r.get("skipped") or "none").split("; "):
            if part != "none":
                by_reason.setdefault(part, []).append(str(r["model"]))
    if not by_reason:
        return []
    names = [str(r["model"]) for r in rows]
    return ["", "Skipped:"] + [f"- {'all models' if m == names and len(m) > 1 else ', '.join(m)}: {reason}"
                               for reason, m in by_reason.items()]


def write_csv(rows: list[dict], file: str | Path) -> Path:
    """CSV with COLUMNS in order; every cell filled (a value, or 'n/a' explained in 'skipped')."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _csv_value(r.get(c, NA)) for c in COLUMNS})
    os.replace(tmp, file)
    return file


def _csv_value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v if v not in (None, "") else NA


def finish_row(row: Row, machine: dict) -> dict:
    """Machine columns, explicit 'n/a' for anything unset, reasons joined into 'skipped'."""
    reasons = row.pop("_reasons", [])
    out = {**row, **machine}
    missing = [c for c in COLUMNS if c != "skipped" and out.get(c) in (None, "")]
    if missing:
        reasons.append(f"{'+'.join(missing)}: not measured")
        out.update({c: NA for c in missing})
    out["skipped"] = "; ".join(reasons) or "none"
    return out


# ---------------------------------------------------------------------------------------------- entry points


def expand_cfgs(cfgs) -> list[Path]:
    """Model yamls from paths or glob patterns (quoted globs work too), in order, without duplicates."""
    out = []
    for c in cfgs:
        if any(ch in str(c) for ch in "*?["):
            matches = sorted(glob.glob(str(c))) or sorted(glob.glob(str(ROOT / str(c))))
            if not matches:
                raise FileNotFoundError(f"--cfgs {c}: no model yaml matches")
        else:
            matches = [c]
        for m in matches:
            if Path(m) not in out:
                out.append(Path(m))
    return out


def run(data="data/shapes.yaml", imgsz: int = 320, cfgs=("models/yolov5n*.yaml",), epochs: int = 0,
        batch_size: int = 16, hyp: str | None = "hyp.scratch-low.yaml", seed: int = 0, workers: int = 2,
        train_imgsz: int | None = None, optimizer: str = "SGD", nbs: int = 64, retrain: bool = False,
        threads: int = 2, runs: int = 50, warmup: int = 10, no_int8: bool = False, calib_images: int | None = None,
        out=ROOT / "benchmarks/results", name: str = "backbones", project=ROOT / "runs/benchmark",
        command: str | None = None) -> list[dict]:
    """Benchmark every model yaml; writes <out>/<name>.csv/.png/.md and returns the rows."""
    from tqdm import tqdm

    from utils.dataloaders import check_dataset
    if epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {epochs}")
    cfgs = expand_cfgs(cfgs)
    data_dict = check_dataset(data)  # generates the default dataset on first use; a bad yaml stops here
    opt = argparse.Namespace(data=data, imgsz=imgsz, epochs=epochs, batch_size=batch_size, hyp=hyp, seed=seed,
                             train_imgsz=train_imgsz, optimizer=optimizer, nbs=nbs, retrain=retrain,
                             workers=workers, threads=threads, runs=runs, warmup=warmup, no_int8=no_int8,
                             calib_images=calib_images)
    workdir = Path(project) / name
    machine = machine_info()
    LOGGER.info(f"benchmarks: {len(cfgs)} models at {imgsz}px on {machine['cpu']} ({machine['cores']} cores, "
                f"{threads} threads), torch {machine['torch_version']}, onnxruntime {machine['onnxruntime_version']}")
    load = load_1min(machine)
    if load is not None and load >= 0.5 * (machine["cores"] or 1):
        LOGGER.warning(f"WARNING ⚠️ load average {load:.1f} on {machine['cores']} cores: other jobs compete for "
                       f"the CPU and will inflate the latencies (each row records the load it was measured under)")
    rows = []
    pbar = tqdm(cfgs, desc="benchmarks", unit="model")
    for cfg in pbar:
        row = benchmark_model(cfg, opt, int(data_dict["nc"]), workdir, pbar)
        machine["load_avg"] = machine_info()["load_avg"]  # per row: how busy the machine was when it was timed
        rows.append(finish_row(row, machine))
        write_csv(rows, Path(out) / f"{name}.csv")  # partial results survive an interrupted run
    csv_file = write_csv(rows, Path(out) / f"{name}.csv")
    trained = f", {epochs} epochs at {train_imgsz or imgsz}px" if epochs else ""
    title = (f"{Path(str(data)).name}, latency at {imgsz}px{trained} | {machine['cpu']}, {machine['cores']} cores, "
             f"{threads} threads")
    png = plot_results(rows, Path(out) / f"{name}.png", title)
    table = format_table(rows)
    md = Path(out) / f"{name}.md"
    md.write_text(markdown_report(rows, table, machine, command, png.name, opt))
    LOGGER.info(f"\n{table}\n\nResults saved to {csv_file}, {png} and {md}")
    return rows


def load_1min(row: dict) -> float | None:
    """The 1-minute load average recorded in a row's load_avg ('1m/5m/15m')."""
    return as_float(str(row.get("load_avg", "")).split("/")[0])


def markdown_report(rows, table: str, machine: dict, command: str | None, png: str, opt) -> str:
    """The README section: table, chart, machine, recipe and the exact command."""
    train_imgsz = opt.train_imgsz or opt.imgsz
    recipe = (f"{opt.epochs} epochs from scratch at {train_imgsz}px (mAP50 and mAP50-95 of best.pt on the val split "
              f"at {train_imgsz}px), batch {opt.batch_size}, {opt.optimizer} (nominal batch {opt.nbs}), hyp "
              f"{opt.hyp or 'train.py default'}, seed {opt.seed}" if opt.epochs
              else "no training (--epochs 0): mAP not measured")
    loads = [x for x in (load_1min(r) for r in rows) if x is not None]
    load = f" 1-minute load average after each model: {min(loads):.1f}-{max(loads):.1f}." if loads else ""
    return "\n".join([
        f"Machine: {machine['cpu']} ({machine['cpu_isa']}), {machine['cores']} cores, {opt.threads} threads; torch "
        f"{machine['torch_version']}, onnxruntime {machine['onnxruntime_version']}, Python {machine['python']}, "
        f"{machine['os']}; {machine['date'][:10]}.{load}",
        f"Data {Path(str(opt.data)).name}, {opt.imgsz}px; {recipe}. Latency: batch 1, median of {opt.runs} runs "
        f"after {opt.warmup} warm-up runs. Memory: peak RSS over a fresh process's baseline while loading and "
        f"running the model. Params/GFLOPs: the model as built (before fusing).",
        "", table, "", f"![latency vs accuracy]({png})", "",
        "Produced by:", "", "```bash", command or "python benchmarks.py", "```", ""])


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark model yamls: params, GFLOPs, CPU latency, memory, mAP")
    p.add_argument("--data", default="data/shapes.yaml", help="dataset yaml (nc, INT8 calibration, training)")
    p.add_argument("--imgsz", "--img", type=int, default=320, help="square input size (pixels)")
    p.add_argument("--cfgs", nargs="+", default=["models/yolov5n*.yaml"], help="model yamls or glob patterns")
    p.add_argument("--epochs", type=int, default=0, help="train each model this many epochs (0: no mAP)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--hyp", default="hyp.scratch-low.yaml", help="hyperparameters yaml (the recipe for all models)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and training")
    p.add_argument("--train-imgsz", type=int, default=None, help="training and mAP image size (default: --imgsz)")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD", help="training optimizer")
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size for training (train.py --nbs)")
    p.add_argument("--retrain", action="store_true", help="train again even if a finished run of the same recipe "
                                                          "exists under --project")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers for training")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime inference")
    p.add_argument("--runs", type=int, default=50, help="timed runs per latency (median reported)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs before timing")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 ONNX export")
    p.add_argument("--calib-images", type=int, default=None, help="INT8 calibration images (default: export.py's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="folder for the CSV, PNG and markdown")
    p.add_argument("--name", default="backbones", help="file stem of the outputs")
    p.add_argument("--project", default=str(ROOT / "runs/benchmark"), help="folder for training runs and exports")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    opt = parse_opt(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python benchmarks.py " + " ".join(shlex.quote(a) for a in argv)
    return run(**vars(opt), command=command)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, ImportError) as e:  # bad --cfgs/--data/--epochs: say so, no traceback
        LOGGER.error(f"ERROR: {first_line(e)}")
        sys.exit(1)
