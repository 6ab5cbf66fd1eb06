"""Mosaic training dataloader throughput (images/s) at --imgsz with 0 and 2 workers.

python -m benchmarks.bench_dataloader [--data shapes.yaml] [--imgsz 320] [--batch-size 16] [--batches 30]
"""
from __future__ import annotations

import argparse
import time

from utils.data.dataloaders import check_dataset, create_dataloader
from utils.general import check_yaml, load_yaml


def loader_throughput(path, imgsz: int, batch_size: int, hyp: dict, workers: int, batches: int, cache=False) -> float:
    """Images/s of the mosaic training loader over `batches` batches, after one warm-up batch (worker start-up
    excluded)."""
    loader, _ = create_dataloader(path, imgsz, batch_size, 32, hyp=hyp, augment=True, cache=cache, workers=workers,
                                  shuffle=True, prefix="bench: ")
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            ims = next(it)[0]
        except StopIteration:
            it = iter(loader)
            ims = next(it)[0]
        n += ims.shape[0]
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="shapes.yaml")
    p.add_argument("--hyp", default="hyp.scratch-low.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--cache", default=None, choices=(None, "ram", "disk"))
    a = p.parse_args(argv)
    d = check_dataset(a.data)
    hyp = load_yaml(check_yaml(a.hyp), "a mapping of hyperparameters")
    out = {}
    for w in a.workers:
        out[w] = loader_throughput(d["train"], a.imgsz, a.batch_size, hyp, w, a.batches, a.cache)
        print(f"mosaic dataloader imgsz {a.imgsz} batch {a.batch_size} workers {w} cache {a.cache}: "
              f"{out[w]:.1f} images/s")
    return out


if __name__ == "__main__":
    main()
