"""Parameters, GFLOPs at 640 and fused CPU latency (batch 1) of every model yaml, as a markdown table.

Usage (regenerates benchmarks/results/models.md):
    python benchmarks/bench_models.py
    python benchmarks/bench_models.py --cfg yolov5n.yaml yolov5n_RepVGG.yaml --imgsz 320 --runs 10 --threads 2
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.yolo import Model  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "models.md"
COMMAND = "python benchmarks/bench_models.py"


def bench_model(cfg: str, imgsz: int = 320, runs: int = 10, warmup: int = 3) -> dict:
    """Build cfg, count parameters and GFLOPs (thop, at 640) unfused, then time the fused model on CPU."""
    torch.manual_seed(0)
    model = Model(cfg, verbose=False)
    params = sum(p.numel() for p in model.parameters())
    gflops = model_flops(model, 640)
    model.fuse(verbose=False).eval()
    x = torch.rand(1, 3, imgsz, imgsz)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return {"model": Path(cfg).name, "params": params, "gflops": gflops, "latency_ms": statistics.median(times)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(rows: list[dict], imgsz: int, runs: int, threads: int, command: str = COMMAND,
                   load: float | None = None) -> str:
    """The README section: one row per yaml, plus how and where it was measured."""
    lines = [f"| model yaml | parameters | GFLOPs (640) | CPU latency fused, {imgsz}x{imgsz}, batch 1 (ms) |",
             "| --- | ---: | ---: | ---: |"]
    for r in rows:
        g = f"{r['gflops']:.1f}" if r["gflops"] is not None else "n/a"
        lines.append(f"| `{r['model']}` | {r['params']:,} | {g} | {r['latency_ms']:.1f} |")
    meta = (f"\nMeasured {datetime.date.today().isoformat()} on {cpu_name()}, torch {torch.__version__}, "
            f"{threads} CPU thread(s), median of {runs} runs after warm-up; nc=80; GFLOPs counted with thop on the "
            f"unfused model as YOLOv5 does."
            + (f" The 1-minute load average was {load:.1f} when the run started: on a busy machine latencies are "
               f"inflated and vary between runs, compare them within one table only." if load is not None else "")
            + "\n\n"
            f"Regenerate with:\n\n```bash\n{command}\n```\n")
    return "\n".join(lines) + "\n" + meta


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="*", default=None, help="model yamls (default: every models/*.yaml)")
    parser.add_argument("--imgsz", type=int, default=320, help="latency input size")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    return parser.parse_args(argv)


def main(opt) -> str:
    from tqdm import tqdm
    torch.set_num_threads(opt.threads)
    cfgs = opt.cfg or sorted(p.name for p in (ROOT / "models").glob("*.yaml"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = [bench_model(c, opt.imgsz, opt.runs) for c in tqdm(cfgs, desc="benchmarking")]
    text = markdown_table(rows, opt.imgsz, opt.runs, opt.threads, load=load)
    opt.out.parent.mkdir(parents=True, exist_ok=True)
    opt.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main(parse_opt())
