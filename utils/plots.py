"""Plots: box annotation (Annotator), labelled batch mosaics, label statistics and training curves.

Figures use matplotlib's Agg backend (no display needed); image drawing uses OpenCV.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from utils.boxes import xywh2xyxy


class Colors:
    """Fixed palette of distinct colours indexed by class id (cycled), built from evenly spaced hues."""

    def __init__(self, n: int = 20):
        hues = (np.arange(n) * 0.381966) % 1.0  # golden-angle steps keep neighbouring ids apart
        sats = np.where(np.arange(n) % 2 == 0, 0.85, 0.6)
        hsv = np.stack((hues * 179, sats * 255, np.full(n, 235)), 1).astype(np.uint8)[None]
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
        self.palette = [tuple(int(c) for c in x) for x in rgb]
        self.n = n

    def __call__(self, i: int, bgr: bool = False) -> tuple[int, int, int]:
        c = self.palette[int(i) % self.n]
        return (c[2], c[1], c[0]) if bgr else c


colors = Colors()


class Annotator:
    """Draw boxes and labels on an image (numpy HWC uint8, drawn in place; get it back with result())."""

    def __init__(self, im: np.ndarray, line_width: int | None = None, font_size: float | None = None,
                 pil: bool = False, example: str = "abc"):
        if not isinstance(im, np.ndarray):
            im = np.asarray(im)
        self.im = im if im.flags.writeable and im.flags.c_contiguous else np.ascontiguousarray(im).copy()
        self.lw = line_width or max(round(sum(self.im.shape[:2]) / 2 * 0.003), 2)
        self.font_scale = font_size or self.lw / 3
        self.tf = max(self.lw - 1, 1)  # text thickness

    def box_label(self, box, label: str = "", color=(128, 128, 128), txt_color=(255, 255, 255)) -> None:
        """Rectangle for an xyxy box with an optional filled label tag above it (inside when at the top edge)."""
        box = [float(x) for x in (box.tolist() if hasattr(box, "tolist") else box)]
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if label:
            w, h = cv2.getTextSize(label, 0, fontScale=self.font_scale, thickness=self.tf)[0]
            outside = p1[1] - h - 3 >= 0
            p2 = p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3
            cv2.rectangle(self.im, p1, p2, color, -1, cv2.LINE_AA)
            cv2.putText(self.im, label, (p1[0], p1[1] - 2 if outside else p1[1] + h + 2), 0, self.font_scale,
                        txt_color, thickness=self.tf, lineType=cv2.LINE_AA)

    def rectangle(self, xy, fill=None, outline=None, width: int = 1) -> None:
        """Plain rectangle; fill takes precedence over outline."""
        p1, p2 = (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3]))
        if fill is not None:
            cv2.rectangle(self.im, p1, p2, fill, -1)
        if outline is not None:
            cv2.rectangle(self.im, p1, p2, outline, width)

    def text(self, xy, text: str, txt_color=(255, 255, 255), anchor: str = "top") -> None:
        """Text with its top-left corner at xy (or its bottom-left with anchor='bottom')."""
        h = cv2.getTextSize(text, 0, fontScale=self.font_scale, thickness=self.tf)[0][1]
        org = int(xy[0]), int(xy[1]) + (h if anchor == "top" else 0)
        cv2.putText(self.im, text, org, 0, self.font_scale, (0, 0, 0), self.tf + 2, cv2.LINE_AA)  # readable on light
        cv2.putText(self.im, text, org, 0, self.font_scale, txt_color, self.tf, cv2.LINE_AA)

    def result(self) -> np.ndarray:
        return self.im


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_images(images, targets, paths=None, fname: str | Path = "images.jpg", names=None,
                max_size: int = 1920, max_subplots: int = 16, conf_thres: float = 0.25) -> np.ndarray:
    """Tile a batch (bs, 3, H, W RGB, 0-1 or 0-255) with its boxes into one image and save it to fname.

    targets rows: [img_idx, cls, cx, cy, w, h(, conf)], normalised or pixels; rows with conf are predictions
    (drawn when conf > conf_thres, with the score in the tag). Returns the mosaic (RGB).
    """
    ims = _to_numpy(images)
    t = _to_numpy(targets)
    t = t.reshape(-1, t.shape[-1]) if t.size else np.zeros((0, 6))
    if ims.ndim == 3:
        ims = ims[None]
    if ims.max(initial=0) <= 1:
        ims = ims * 255
    bs, _, h, w = ims.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)  # tiles per side
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i in range(bs):
        x, y = w * (i % ns), h * (i // ns)
        mosaic[y:y + h, x:x + w] = ims[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8)
    scale = max_size / ns / max(h, w)
    if scale < 1:
        h, w = math.ceil(scale * h), math.ceil(scale * w)
        mosaic = cv2.resize(mosaic, (ns * w, ns * h))
    else:
        scale = 1.0
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else (names or {})
    ann = Annotator(mosaic, line_width=max(1, round(min(h, w) / 160)), font_size=max(min(h, w) / 600, 0.3))
    for i in range(bs):
        x, y = w * (i % ns), h * (i // ns)
        ann.rectangle((x, y, x + w - 1, y + h - 1), outline=(255, 255, 255), width=2)
        if paths is not None and i < len(paths):
            ann.text((x + 4, y + 3), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        ti = t[t[:, 0] == i] if len(t) else t
        if not len(ti):
            continue
        boxes = xywh2xyxy(ti[:, 2:6].astype(np.float64))
        has_conf = ti.shape[1] > 6
        if has_conf:
            keep = ti[:, 6] > conf_thres
            ti, boxes = ti[keep], boxes[keep]
        if len(boxes) and boxes.max() <= 1.01:  # normalised coordinates
            boxes[:, [0, 2]] *= w
            boxes[:, [1, 3]] *= h
        elif scale < 1:
            boxes *= scale
        boxes[:, [0, 2]] += x
        boxes[:, [1, 3]] += y
        for row, box in zip(ti, boxes):
            c = int(row[1])
            label = str(names.get(c, c))
            if has_conf:
                label = f"{label} {row[6]:.1f}"
            ann.box_label(box, label, color=colors(c))
    out = ann.result()
    if fname:
        Path(fname).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(fname), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    return out


def plot_labels(labels, names=(), save_dir: str | Path = "") -> Path:
    """labels.jpg: instances per class, a sample of box outlines, and x-y / w-h 2D histograms."""
    lb = _to_numpy(labels).reshape(-1, 5) if np.size(labels) else np.zeros((0, 5))
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names or {})
    nc = max(int(lb[:, 0].max()) + 1 if len(lb) else 0, len(names))
    c, xywh = lb[:, 0].astype(int), lb[:, 1:]
    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = ax.ravel()
    counts = np.bincount(c, minlength=nc)
    ax[0].bar(range(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel("instances")
    if 0 < nc <= 30:
        ax[0].set_xticks(range(nc))
        ax[0].set_xticklabels([str(names.get(i, i)) for i in range(nc)], rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, dtype=np.uint8)  # box shapes centred, up to 1000 of them
    sample = np.random.default_rng(0).permutation(len(lb))[:1000]
    boxes = xywh2xyxy(np.concatenate((np.full((len(sample), 2), 0.5), xywh[sample, 2:]), 1)) * 1000
    for k, b in zip(c[sample], boxes):
        cv2.rectangle(canvas, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), colors(k), 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    ax[1].set_title("box sizes (centred)")
    for a, (i, j, xl, yl) in zip(ax[2:], ((0, 1, "x", "y"), (2, 3, "width", "height"))):
        a.hist2d(xywh[:, i], xywh[:, j], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        a.set_xlabel(xl)
        a.set_ylabel(yl)
    f = Path(save_dir) / "labels.jpg"
    f.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f, dpi=150)
    plt.close(fig)
    return f


def _smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter smoothing over a window of fraction f of the series (odd length)."""
    nf = round(len(y) * f * 2) // 2 + 1
    if nf < 3:
        return y
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def plot_results(file: str | Path = "results.csv", dir: str | Path = "") -> Path:
    """results.png beside results.csv: one panel per column against the first (epoch), raw and smoothed."""
    files = [Path(file)] if not dir else sorted(Path(dir).glob("results*.csv"))
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"results file not found: {files[0] if files else Path(dir) / 'results*.csv'}")
    with open(files[0], newline="") as fh:
        rows = [[x.strip() for x in r] for r in csv.reader(fh) if r]
    if len(rows) < 2:
        raise ValueError(f"{files[0]}: no data rows to plot")
    header = rows[0]
    data = np.array([[float(x) if x not in ("", "nan") else np.nan for x in r] for r in rows[1:]], dtype=float)
    n = len(header) - 1
    ncol = min(5, max(n, 1))
    nrow = math.ceil(n / ncol)
    fig, ax = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.8 * nrow), tight_layout=True, squeeze=False)
    ax = ax.ravel()
    x = data[:, 0]
    for i in range(n):
        y = data[:, i + 1]
        ax[i].plot(x, y, marker=".", linewidth=2, markersize=6, label="results")
        if len(y) > 3 and np.isfinite(y).all():
            ax[i].plot(x, _smooth(y), ":", label="smooth", linewidth=2)
        ax[i].set_title(header[i + 1], fontsize=10)
    for a in ax[n:]:
        a.axis("off")
    ax[0].legend(fontsize=7)
    out = files[0].with_name("results.png")
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
