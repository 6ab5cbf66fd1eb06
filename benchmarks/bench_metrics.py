"""Time the validation metric code (COCO-exact matching + AP + confusion matrix) on a synthetic COCO-sized run
and report its share of a full validation of yolov5n at the given image size.

    python -m benchmarks.bench_metrics [--images 5000 --preds 100 --nc 80 --batch 32 --imgsz 320]

The share uses this machine's measured per-image time for pre-processing, the yolov5n forward and NMS
(conf 0.001, IoU 0.6, multi-label, as val.py runs them) on a few batches, extrapolated to --images.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from utils.metrics import ConfusionMatrix, DetectionMetrics, xyxy2coco

ROOT = Path(__file__).resolve().parents[1]


def synthetic_batches(n_images: int, n_preds: int, nc: int, batch: int, seed: int = 0):
    """Per batch: (preds xywh conf cls, labels cls xywh, preds xyxy, labels cls xyxy) lists; ~7 objects per
    image (COCO's mean), detections = jittered objects (true and wrong class) plus background clutter."""
    rng = np.random.default_rng(seed)
    for s in range(0, n_images, batch):
        P, L, Pxy, Lxy = [], [], [], []
        for _ in range(min(batch, n_images - s)):
            ng = rng.poisson(7)
            g = np.c_[rng.uniform(0, 560, (ng, 2)), rng.uniform(8, 200, (ng, 2))]
            gc = rng.integers(0, nc, ng)
            k = min(n_preds // 2, 4 * ng)
            src = rng.integers(0, max(ng, 1), k)
            d = np.c_[rng.uniform(0, 560, (n_preds, 2)), rng.uniform(8, 200, (n_preds, 2))]
            dc = rng.integers(0, nc, n_preds)
            if ng:
                d[:k] = g[src] * np.exp(rng.normal(0, 0.1, (k, 4)) * np.array([0, 0, 1, 1]))
                d[:k, :2] += rng.normal(0, 0.08, (k, 2)) * g[src, 2:]
                dc[:k] = np.where(rng.random(k) < 0.8, gc[src], dc[:k])
            conf = rng.random(n_preds) ** 2
            order = np.argsort(-conf)  # NMS output is score-sorted
            p = np.c_[d, conf, dc][order]
            P.append(p)
            L.append(np.c_[gc, g])
            Pxy.append(np.c_[p[:, :2], p[:, :2] + p[:, 2:4], p[:, 4:]])
            Lxy.append(np.c_[gc, g[:, :2], g[:, :2] + g[:, 2:]])
        yield P, L, Pxy, Lxy


def time_metrics(n_images: int, n_preds: int, nc: int, batch: int) -> tuple[float, dict]:
    batches = list(synthetic_batches(n_images, n_preds, nc, batch))
    metrics, cm = DetectionMetrics(nc), ConfusionMatrix(nc)
    t0 = time.perf_counter()
    for P, L, Pxy, Lxy in batches:
        for p in Pxy:  # val.py converts each image's boxes once for the metric and the json
            xyxy2coco(p[:, :4])
        metrics.update(P, L)
        cm.update(Pxy, Lxy)
    t1 = time.perf_counter()
    r = metrics.compute()
    t2 = time.perf_counter()
    print(f"metrics: {n_images} images x {n_preds} preds x {nc} classes: update {t1 - t0:.2f} s, "
          f"compute {t2 - t1:.2f} s, total {t2 - t0:.2f} s ({(t2 - t0) / n_images * 1e3:.3f} ms/image); "
          f"mAP50 {r['map50']:.3f} mAP50-95 {r['map']:.3f}")
    return t2 - t0, r


def time_val_pipeline(imgsz: int, batch: int, n_batches: int = 3) -> float | None:
    """Seconds per image for pre-process + yolov5n forward + NMS at imgsz (None if the model can't be built)."""
    try:
        import torch

        from models.yolo import Model
        from utils.inference.nms import non_max_suppression
    except Exception as e:  # the core may be missing in a partial checkout
        print(f"skipping the val-time estimate: {e}")
        return None
    torch.manual_seed(0)
    model = Model(ROOT / "models" / "yolov5n.yaml", verbose=False).eval()
    ref = ROOT.parent / "shared" / "reference" / "yolov5n_reference.pt"
    if ref.exists():  # trained-looking statistics give NMS a realistic number of candidates
        model.load_state_dict(torch.load(ref, weights_only=True)["state_dict"])
    if hasattr(model, "fuse"):
        model = model.fuse()
    imgs = torch.randint(0, 255, (batch, 3, imgsz, imgsz), dtype=torch.uint8)
    with torch.inference_mode():
        model(imgs.float() / 255)  # warm-up
        t = [0.0, 0.0, 0.0]
        for _ in range(n_batches):
            t0 = time.perf_counter()
            x = imgs.float() / 255
            t1 = time.perf_counter()
            out = model(x)
            t2 = time.perf_counter()
            non_max_suppression(out, 0.001, 0.6, multi_label=True, max_det=300)
            t3 = time.perf_counter()
            t = [t[0] + t1 - t0, t[1] + t2 - t1, t[2] + t3 - t2]
    n = batch * n_batches
    print(f"yolov5n @ {imgsz}: pre-process {t[0] / n * 1e3:.2f} ms, inference {t[1] / n * 1e3:.2f} ms, "
          f"NMS {t[2] / n * 1e3:.2f} ms per image (torch threads {torch.get_num_threads()})")
    return sum(t) / n


def parse_opt(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--preds", type=int, default=100, help="predictions per image")
    ap.add_argument("--nc", type=int, default=80)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--imgsz", type=int, default=320)
    return ap.parse_args(argv)


def main(opt) -> None:
    t_metrics, _ = time_metrics(opt.images, opt.preds, opt.nc, opt.batch)
    per_image = time_val_pipeline(opt.imgsz, opt.batch)
    if per_image is not None:
        t_val = per_image * opt.images + t_metrics
        print(f"estimated full validation of {opt.images} images: {t_val:.1f} s; metric share "
              f"{100 * t_metrics / t_val:.2f}% (target < 5%)")


if __name__ == "__main__":
    main(parse_opt())
