"""Time validation-style NMS + metrics against the model's inference on real images, and detect-time NMS.

    python -m benchmarks.bench_nms --weights runs/train/exp/weights/best.pt --data cards.yaml [--imgsz 320]
                                     [--batch 16] [--threads 1] [--no-old]
    python -m benchmarks.bench_nms --crowded [--threads 1]

Per image, on the --data val split: pre-process, inference (--weights, a .pt or an export, through DetectBackend),
NMS at conf 0.001 / IoU 0.6 / multi-label / max_det 300 (as val.py runs it: the compiled kernel), the metric as val.py
feeds it (boxes back to original pixels, COCO rows, update, and compute at the end), the same NMS through the
torchvision path (the kernel switched off) and with an unbounded window there (every candidate through one
torchvision call: the original algorithm), each checked to return the same boxes. Then NMS at conf 0.25 / IoU 0.45
/ max_det 1000 on one image at a time (as detect.py runs it).
"""
from __future__ import annotations

import argparse
import time

import torch

import utils.inference.nms as nms_module
from utils import backends
from utils.backends import DetectBackend
from utils.data.dataloaders import check_dataset, create_dataloader
from utils.metrics import DetectionMetrics
from val import coco_rows, to_original_pixels

VAL_NMS = dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=300)
DETECT_NMS = dict(conf_thres=0.25, iou_thres=0.45, max_det=1000)


PATHS = ("compiled", "torchvision", "all-candidates")


def _nms(preds, path: str = "compiled", **kw):
    """The shared postprocess (what val.py and detect.py call) through one of PATHS: the compiled kernel (the
    default), the torchvision path it falls back to, or that path with a window holding every candidate (one
    torchvision call over all of them: the original algorithm)."""
    compiled, window = nms_module.COMPILED, nms_module.WINDOW
    nms_module.COMPILED = path == "compiled"
    nms_module.WINDOW = 10 ** 9 if path == "all-candidates" else window
    try:
        return backends.postprocess(preds, **kw)
    finally:
        nms_module.COMPILED, nms_module.WINDOW = compiled, window


def _best(fn, repeat: int, total: float):
    """(fn(), total + its fastest of repeat runs): the minimum filters out other processes' load."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, total + best


def run(weights: str, data: str, imgsz: int = 320, batch: int = 16, workers: int = 0, old: bool = True,
        repeat: int = 3) -> dict:
    """Milliseconds per image for each phase (each the fastest of `repeat` runs on the same batch); keys pre,
    inference, nms, metrics, nms_torchvision, nms_old, detect_nms. The metric's update is timed on a scratch
    instance (it accumulates), then run once on the real one.
    old=False skips the all-candidates NMS."""
    model = DetectBackend(weights)
    if not model.pt:  # an export (.onnx, OpenVINO/ncnn folder, .mnn): square batches of the shape it was made for
        batch, _ = model.input_shape((imgsz, imgsz), batch, square=True)
    info = check_dataset(data)
    loader = create_dataloader(info["val"], imgsz, batch, model.stride, pad=0.5, rect=model.pt, workers=workers,
                               nc=model.nc)[0]
    metrics = DetectionMetrics(model.nc)
    t = dict.fromkeys(("pre", "inference", "nms", "metrics", "nms_torchvision", "nms_old", "detect_nms"), 0.0)
    seen, n_cand, n_kept, raw = 0, 0, 0, []
    with torch.inference_mode():
        for im, targets, _, shapes in loader:
            x, t["pre"] = _best(lambda: im.float() / 255, repeat, t["pre"])
            preds, t["inference"] = _best(lambda: model(x), repeat, t["inference"])
            preds = preds[0] if isinstance(preds, (list, tuple)) else preds
            dets, t["nms"] = _best(lambda: _nms(preds, **VAL_NMS), repeat, t["nms"])
            targets[:, 2:] *= torch.tensor((x.shape[3], x.shape[2], x.shape[3], x.shape[2]))
            def feed(m, dets=dets, targets=targets, x=x, shapes=shapes):
                return m.update(*coco_rows(*to_original_pixels(dets, targets, x.shape[2:], shapes)))
            t["metrics"] = _best(lambda: feed(DetectionMetrics(model.nc)), repeat, t["metrics"])[1]
            feed(metrics)
            for path, key in (("torchvision", "nms_torchvision"), ("all-candidates", "nms_old"))[:2 if old else 1]:
                other, t[key] = _best(lambda: _nms(preds, path, **VAL_NMS), repeat, t[key])
                assert all(torch.equal(a, b) for a, b in zip(dets, other)), f"{path} NMS differs from the compiled one"
            seen += len(im)
            n_cand += int(((preds[..., 5:] * preds[..., 4:5]) > VAL_NMS["conf_thres"]).sum())
            n_kept += sum(len(d) for d in dets)
            raw.extend(preds.split(1))
        r, t["metrics"] = _best(metrics.compute, repeat, t["metrics"])
        for p in raw:
            t["detect_nms"] = _best(lambda: _nms(p, **DETECT_NMS), repeat, t["detect_nms"])[1]
    ms = {k: v / max(seen, 1) * 1e3 for k, v in t.items()}
    ms.update(images=seen, candidates=n_cand / max(seen, 1), kept=n_kept / max(seen, 1), map50=r["map50"])
    return ms


def report(ms: dict, imgsz: int, old: bool) -> str:
    share = 100 * (ms["nms"] + ms["metrics"]) / ms["inference"]
    lines = [f"{ms['images']} images at {imgsz}, torch threads {torch.get_num_threads()}; "
             f"{ms['candidates']:.0f} candidates and {ms['kept']:.0f} kept per image at conf 0.001 "
             f"(mAP50 {ms['map50']:.3f})",
             f"per image: pre-process {ms['pre']:.2f} ms, inference {ms['inference']:.2f} ms, "
             f"NMS {ms['nms']:.2f} ms, metrics {ms['metrics']:.2f} ms -> NMS + metrics = {share:.1f}% of inference",
             f"detect-time NMS (conf 0.25, one image per call): {ms['detect_nms']:.3f} ms per image"]
    tv = f"the torchvision path on the same outputs: {ms['nms_torchvision']:.2f} ms per image"
    if old:
        tv += f", all candidates in one call: {ms['nms_old']:.2f} ms"
    lines.insert(2, tv + " (identical boxes)")
    return "\n".join(lines)


def run_crowded(repeat: int = 3, bs: int = 16, n: int = 6300, nc: int = 3) -> dict:
    """Milliseconds per image of the three paths on tests/test_nms.py's crowded() predictions (many boxes per
    object, ~15,000 candidates per image at conf 0.001); the all-candidates one runs once (it is slow)."""
    from tests.test_nms import crowded
    p = crowded(bs=bs, n=n, nc=nc, seed=0)
    ms = {"candidates": float(((p[..., 5:] * p[..., 4:5]) > VAL_NMS["conf_thres"]).sum()) / bs}
    ref = None
    for path in PATHS:
        out, t = _best(lambda: _nms(p, path, **VAL_NMS), 1 if path == "all-candidates" else repeat, 0.0)
        assert ref is None or all(torch.equal(a, b) for a, b in zip(ref, out)), f"{path} NMS differs"
        ref, ms[path] = out, t / bs * 1e3
    return ms


def parse_opt(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="trained .pt checkpoint (or an export)")
    ap.add_argument("--data", help="dataset yaml; its val split is used")
    ap.add_argument("--crowded", action="store_true", help="instead: the NMS paths on crowded synthetic predictions")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="time each phase as the fastest of this many runs")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-old", action="store_true", help="skip timing the all-candidates NMS")
    opt = ap.parse_args(argv)
    if not opt.crowded and not (opt.weights and opt.data):
        ap.error("--weights and --data are required (or --crowded)")
    return opt


def main(opt) -> None:
    if opt.threads:
        torch.set_num_threads(opt.threads)
    if opt.crowded:
        ms = run_crowded(opt.repeat)
        print(f"crowded predictions, {ms['candidates']:.0f} candidates per image, torch threads "
              f"{torch.get_num_threads()}: " + ", ".join(f"{k} {ms[k]:.2f} ms" for k in PATHS) + " per image "
              "(identical boxes)")
        return
    print(report(run(opt.weights, opt.data, opt.imgsz, opt.batch, opt.workers, not opt.no_old, opt.repeat), opt.imgsz,
                 not opt.no_old))


if __name__ == "__main__":
    main(parse_opt())
