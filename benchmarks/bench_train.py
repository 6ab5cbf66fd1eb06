"""Training-step and mosaic-dataloader throughput (images/s), and whether the loader keeps up with the step.

python -m benchmarks.bench_train [--cfg yolov5n.yaml yolov5_MobileNetv2.yaml] [--imgsz 320] [--batch-size 16]
                                   [--steps 8] [--workers 0 2] [--data shapes.yaml]
python -m benchmarks.bench_train --grid --threads-list 1 2 --workers 0 1 2 [--reps 3] [--data cards.yaml]
    the whole loop (loader workers running beside the step) for every threads x workers x channels_last
    combination, interleaved round-robin within one run so that load from other processes hits all alike;
    reports the median images/s of each and its ratio to the first combination.

Training step = forward, ComputeLoss, backward, gradient clipping, SGD step and EMA update, exactly as train.py
runs them, on batches drawn from the loader beforehand (so loading is not counted). Loader = the augmenting
training DataLoader (mosaic, random perspective, HSV, flips) iterated alone. The loader is not the bottleneck
when its images/s is at least twice the step's. Torch threads and memory format default to train.py's choice:
one thread per core, channels_last on CPU (the --grid measurement behind that choice is in the README).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.bench_dataloader import loader_throughput
from models.yolo import Model
from utils.data.dataloaders import check_dataset, create_dataloader
from utils.general import check_yaml, load_yaml
from utils.torch_utils import ModelEMA
from utils.training import set_cpu_threads, training_memory_format
from utils.training.loss import ComputeLoss
from utils.training.optim import smart_optimizer


def train_step_throughput(cfg: str, batches: list, nc: int, imgsz: int, hyp: dict, steps: int) -> float:
    """Images/s of train.py's optimisation step on pre-loaded batches, after one warm-up step."""
    model, step = make_step(cfg, nc, imgsz, hyp)
    fmt = training_memory_format(torch.device("cpu"))
    batches = [(imgs.contiguous(memory_format=fmt), targets) for imgs, targets in batches]
    step(*batches[0])
    n, t0 = 0, time.perf_counter()
    for i in range(steps):
        imgs, targets = batches[i % len(batches)]
        step(imgs, targets)
        n += imgs.shape[0]
    return n / (time.perf_counter() - t0)


def loop_throughput(model, step, loader, steps: int, channels_last: bool) -> float:
    """Images/s of the real loop: batches come from loader's workers while the step runs (data wait included),
    after warm-up steps that drain what the workers had prefetched while other combinations ran."""
    it = iter(loader)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    warm = 2 * getattr(loader, "num_workers", 0) + 1
    n, t0 = 0, 0.0
    for i in range(warm + steps):
        if i == warm:
            n, t0 = 0, time.perf_counter()
        imgs, targets = next(it)[:2]
        step(imgs.contiguous(memory_format=fmt), targets)
        n += imgs.shape[0]
    return n / (time.perf_counter() - t0)


def grid(a, d: dict, hyp: dict) -> list[dict]:
    """--grid: every (threads, workers, channels_last) combination, interleaved over --reps rounds."""
    import statistics

    nc = int(d["nc"])
    model, step = make_step(a.cfg[0], nc, a.imgsz, hyp)
    loaders = {w: create_dataloader(d["train"], a.imgsz, a.batch_size, 32, hyp=hyp, augment=True, workers=w,
                                    shuffle=True)[0] for w in a.workers}
    combos = [(t, w, cl) for t in a.threads_list for w in a.workers for cl in a.channels_last]
    ips: dict = {c: [] for c in combos}
    for _ in range(a.reps):
        for c in combos:
            torch.set_num_threads(c[0])
            ips[c].append(loop_throughput(model, step, loaders[c[1]], a.steps, c[2]))
            print(f"  threads {c[0]} workers {c[1]} channels_last {int(c[2])}: {ips[c][-1]:.1f} images/s", flush=True)
    base = statistics.median(ips[combos[0]])
    rows = []
    for (t, w, cl), v in ips.items():
        med = statistics.median(v)
        rows.append({"threads": t, "workers": w, "channels_last": cl, "ips": med, "ratio": med / base})
        print(f"threads {t} workers {w} channels_last {int(cl)}: {med:6.1f} images/s (median of {len(v)}), "
              f"{med / base:.2f}x the first")
    print(f"{a.cfg[0]} imgsz {a.imgsz} batch {a.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    return rows


def make_step(cfg: str, nc: int, imgsz: int, hyp: dict):
    """(model, step(imgs uint8, targets)) running train.py's optimisation step."""
    model = Model(cfg, nc=nc, verbose=False).to(memory_format=training_memory_format(torch.device("cpu")))
    model.train()
    compute_loss = ComputeLoss(model, hyp=hyp, imgsz=imgsz)  # train.py's gains for nl, nc and imgsz
    opt = smart_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    ema = ModelEMA(model)

    def step(imgs, targets):
        loss, _ = compute_loss(model(imgs.float() / 255), targets)  # imgs in the caller's memory format
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        opt.step()
        opt.zero_grad()
        ema.update(model)

    return model, step


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", nargs="+", default=["yolov5n.yaml", "yolov5_MobileNetv2.yaml"])
    p.add_argument("--data", default="shapes.yaml")
    p.add_argument("--hyp", default="hyp.scratch-low.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per model")
    p.add_argument("--batches", type=int, default=20, help="timed loader batches per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: train.py's, one per core)")
    p.add_argument("--out", default="", help="also write the table as markdown to this file")
    p.add_argument("--grid", action="store_true", help="time the whole loop for threads x workers x channels_last")
    p.add_argument("--threads-list", type=int, nargs="+", default=[1, 2], help="--grid: torch thread counts")
    p.add_argument("--channels-last", type=int, nargs="+", default=[0, 1], help="--grid: 0 and/or 1")
    p.add_argument("--reps", type=int, default=3, help="--grid: interleaved rounds")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    else:
        set_cpu_threads(torch.device("cpu"), max(a.workers))
    d = check_dataset(a.data)
    hyp = load_yaml(check_yaml(a.hyp), "a mapping of hyperparameters")
    if a.grid:
        return grid(a, d, hyp)

    loader = {w: loader_throughput(d["train"], a.imgsz, a.batch_size, hyp, w, a.batches) for w in a.workers}
    for w, v in loader.items():
        print(f"mosaic dataloader  imgsz {a.imgsz} batch {a.batch_size} workers {w}: {v:7.1f} images/s")

    src, _ = create_dataloader(d["train"], a.imgsz, a.batch_size, 32, hyp=hyp, augment=True, workers=0, shuffle=True)
    it = iter(src)
    batches = [tuple(next(it)[:2]) for _ in range(min(4, len(src)))]
    rows = []
    best_loader = max(loader.values())
    for cfg in a.cfg:
        tput = train_step_throughput(cfg, batches, int(d["nc"]), a.imgsz, hyp, a.steps)
        ratio = best_loader / tput
        rows.append({"cfg": cfg, "train_ips": tput, **{f"loader_w{w}": v for w, v in loader.items()}, "ratio": ratio})
        print(f"training step      {cfg:<28} imgsz {a.imgsz} batch {a.batch_size}: {tput:7.1f} images/s; "
              f"loader/step = {ratio:.1f}x {'(OK: loader not the bottleneck)' if ratio >= 2 else '(loader too slow)'}")
    print(f"torch threads {torch.get_num_threads()}")
    if a.out:
        cols = [f"loader w{w} img/s" for w in loader]
        lines = [f"`python -m benchmarks.bench_train {' '.join(argv if argv is not None else sys.argv[1:])}` "
                 f"(imgsz {a.imgsz}, batch {a.batch_size}, torch threads {torch.get_num_threads()}, "
                 f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end)", "",
                 "| model | train step img/s | " + " | ".join(cols) + " | loader / step |",
                 "|---|---:|" + "---:|" * len(cols) + "---:|"]
        for r in rows:
            lines.append(f"| {r['cfg']} | {r['train_ips']:.1f} | " +
                         " | ".join(f"{r[f'loader_w{w}']:.1f}" for w in loader) + f" | {r['ratio']:.1f}x |")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
