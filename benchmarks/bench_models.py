"""Parameters, GFLOPs at 640 and fused CPU latency (batch 1) of every model yaml, as a markdown table.

Usage (writes runs/benchmark/models*/models.md; `--out benchmarks/results/models.md` regenerates the published one):
    python -m benchmarks.bench_models
    python -m benchmarks.bench_models --cfg yolov5n.yaml yolov5n_RepVGG.yaml --imgsz 320 --runs 10 --threads 2
"""
from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import torch

from benchmarks.machine import cpu_model
from benchmarks.report import add_output_args, save_report
from benchmarks.timing import time_callables
from models.yolo import Model
from utils.torch_utils import model_flops

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.bench_models"


def prepare(cfg: str) -> tuple[dict, torch.nn.Module]:
    """Build cfg, count parameters and GFLOPs (thop, at 640) on the unfused model, return it fused in eval mode."""
    torch.manual_seed(0)
    model = Model(cfg, verbose=False)
    row = {"model": Path(cfg).name, "params": sum(p.numel() for p in model.parameters()),
           "gflops": model_flops(model, 640)}
    return row, model.fuse(verbose=False).eval()


def time_models(models: list[torch.nn.Module], imgsz: int = 320, runs: int = 10, warmup: int = 2) -> list[dict]:
    """Median and fastest forward time (ms, batch 1) per model, models taking turns in blocks of back-to-back runs
    (benchmarks.timing.time_callables): a burst of load hits every model alike and each timed run finds a warm cache."""
    x = torch.rand(1, 3, imgsz, imgsz)
    with torch.inference_mode():
        t = time_callables({i: (lambda m=m: m(x)) for i, m in enumerate(models)}, runs, warmup, block=5)
    return [{"latency_ms": t[f"{i}_min"], "median_ms": t[i]} for i in range(len(models))]


def bench_models(cfgs: list[str], imgsz: int = 320, runs: int = 10, warmup: int = 2) -> list[dict]:
    """Rows with params, GFLOPs and the best and median fused CPU latency of each yaml."""
    from tqdm import tqdm
    prepared = [prepare(c) for c in tqdm(cfgs, desc="building")]
    times = time_models([m for _, m in prepared], imgsz, runs, warmup)
    return [{**row, **t} for (row, _), t in zip(prepared, times)]


def markdown_table(rows: list[dict], imgsz: int, runs: int, threads: int, command: str = COMMAND,
                   load: float | None = None) -> str:
    """The README section: one row per yaml, plus how and where it was measured."""
    lines = [f"| model yaml | parameters | GFLOPs (640) | CPU ms, fused, {imgsz}x{imgsz}, batch 1: best | median |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        g = f"{r['gflops']:.1f}" if r["gflops"] is not None else "n/a"
        lines.append(f"| `{r['model']}` | {r['params']:,} | {g} | {r['latency_ms']:.1f} | {r['median_ms']:.1f} |")
    meta = (f"\nMeasured {datetime.date.today().isoformat()} on {cpu_model()}, torch {torch.__version__}, "
            f"{threads} CPU thread(s), best and median of {runs} runs after warm-up, models timed in alternating "
            f"blocks; nc=80; "
            f"GFLOPs counted with thop on the unfused model as YOLOv5 does."
            + (f" The 1-minute load average was {load:.1f} when the run started: other processes inflate latencies "
               f"(the best-of-N column least), so compare models within one table only." if load is not None else "")
            + "\n\n"
            f"Regenerate with:\n\n```bash\n{command}\n```\n")
    return "\n".join(lines) + "\n" + meta


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="*", default=None, help="model yamls (default: every models/*.yaml)")
    parser.add_argument("--imgsz", type=int, default=320, help="latency input size")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    add_output_args(parser, "models", "models.md", "markdown file to write instead of project/name/models.md "
                        "(benchmarks/results/models.md: the published table)")
    return parser.parse_args(argv)


def main(opt) -> str:
    torch.set_num_threads(opt.threads)
    cfgs = opt.cfg or sorted(p.name for p in (ROOT / "models").glob("*.yaml"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = bench_models(cfgs, opt.imgsz, opt.runs)
    text = markdown_table(rows, opt.imgsz, opt.runs, opt.threads, load=load)
    save_report(text, opt, "models.md")
    return text


if __name__ == "__main__":
    main(parse_opt())
