"""Deterministic synthetic detection dataset ("shapes"): coloured shapes on textured, noisy backgrounds.

It is the project's default dataset, generated locally in seconds so training and tests need no download.
Each image is drawn from its own seeded generator, so the output depends only on (seed, split, index) and
generation can run in parallel. Layout is YOLO's: root/images/{train,val}/*.jpg and root/labels/{train,val}/*.txt.

CLI: python -m utils.synthetic --root datasets/shapes_v2 --n-train 1000 --n-val 200 --imgsz 256 --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from utils.general import LOGGER

CLASSES = ("circle", "square", "triangle", "star", "cross")
GENERATOR_VERSION = 2  # bump when the output changes: older datasets are regenerated
BACKGROUND_FRACTION = 0.05  # images with no objects
MAX_OBJECTS = 5
SIZE_RANGE = (0.12, 0.38)  # object box side as a fraction of the image side
SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_029}


def _unit_polygon(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Outline of a class's shape as (k, 2) points in [-1, 1] before scaling and rotation."""
    if cls == 0:  # circle (64-gon)
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack((np.cos(t), np.sin(t)), 1)
    if cls == 1:  # square
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if cls == 2:  # triangle with jittered apex
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]) + rng.uniform(-12, 12, 3))
        return np.stack((np.cos(t), np.sin(t)), 1)
    if cls == 3:  # 5-pointed star
        inner = rng.uniform(0.38, 0.5)
        t = np.deg2rad(np.arange(10) * 36.0 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack((r * np.cos(t), r * np.sin(t)), 1)
    a = rng.uniform(0.28, 0.4)  # cross (plus sign) arm half-width
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                     [-1, -a], [-a, -a]], dtype=np.float64)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Textured background: gradient, smooth noise or stripes, plus distractor strokes."""
    kind = rng.integers(0, 3)
    if kind == 0:  # two-colour linear gradient
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:s, 0:s] / s
        t = (np.cos(ang) * xx + np.sin(ang) * yy)
        t = (t - t.min()) / (t.max() - t.min() + 1e-9)
        im = c0 + t[..., None] * (c1 - c0)
    elif kind == 1:  # low-frequency colour noise
        k = int(rng.integers(3, 9))
        base = rng.uniform(40, 215, 3)
        im = base + rng.uniform(0.2, 0.5) * cv2.resize(rng.uniform(-128, 128, (k, k, 3)), (s, s),
                                                       interpolation=cv2.INTER_CUBIC)
    else:  # stripes / checker texture
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        period = rng.uniform(6, 40)
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:s, 0:s]
        t = 0.5 + 0.5 * np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 2 * np.pi / period)
        im = c0 + t[..., None] * (c1 - c0) * rng.uniform(0.15, 0.4)
    im = np.clip(im, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 3))):  # distractor curves that belong to no class
        pts = np.cumsum(rng.normal(0, s / 10, (int(rng.integers(3, 8)), 2)), 0) + rng.uniform(0, s, 2)
        color = tuple(int(c) for c in rng.uniform(0, 255, 3))
        cv2.polylines(im, [pts.astype(np.int32)], False, color, int(rng.integers(1, 3)), cv2.LINE_AA)
    return im


def _ioa(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each of boxes (m, 4) covered by box (4,), all xyxy."""
    if not len(boxes):
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    return inter / ((boxes[:, 2:] - boxes[:, :2]).prod(1) + 1e-9)


def render_image(seed: int, s: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One BGR image and its labels (n, 5) [cls, cx, cy, w, h] normalised, fully determined by seed."""
    rng = np.random.default_rng(seed)
    im = _background(rng, s)
    n = 0 if rng.random() < BACKGROUND_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    boxes, classes = np.zeros((0, 4)), []
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(CLASSES)))
            size = rng.uniform(*SIZE_RANGE) * s / 2  # half-extent in pixels
            aspect = rng.uniform(0.85, 1.18)
            poly = _unit_polygon(cls, rng) * [size * aspect, size / aspect]
            ang = rng.uniform(0, 2 * np.pi) if cls else 0.0
            rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            centre = rng.uniform(-0.05, 1.05, 2) * s  # some objects are cut by the border
            pts = poly @ rot.T + centre
            full = np.concatenate((pts.min(0), pts.max(0)))
            box = np.clip(full, 0, s)
            area = np.prod(box[2:] - box[:2])
            if area < 0.75 * np.prod(full[2:] - full[:2]) or (box[2:] - box[:2]).min() < 8:
                continue  # mostly outside the image
            if len(boxes) and _ioa(box, boxes).max() > 0.35:
                continue  # would hide too much of an earlier object
            region = im[int(box[1]):int(box[3]) + 1, int(box[0]):int(box[2]) + 1].reshape(-1, 3).mean(0)
            for _c in range(10):  # colour far enough from the local background to be visible
                color = rng.uniform(0, 255, 3)
                if np.linalg.norm(color - region) > 110:
                    break
            cv2.fillPoly(im, [np.round(pts * 16).astype(np.int32)], tuple(float(c) for c in color),
                         cv2.LINE_AA, shift=4)
            if rng.random() < 0.3:  # darker outline on some shapes
                cv2.polylines(im, [np.round(pts * 16).astype(np.int32)], True,
                              tuple(float(c) * 0.5 for c in color), 1, cv2.LINE_AA, shift=4)
            boxes = np.concatenate((boxes, box[None]), 0)
            classes.append(cls)
            break
    noise = rng.normal(0, rng.uniform(2, 8), im.shape)
    im = np.clip(im.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        im = cv2.GaussianBlur(im, (3, 3), 0)
    if not classes:
        return im, np.zeros((0, 5), np.float32)
    xywh = np.concatenate(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1) / s
    return im, np.concatenate((np.asarray(classes, np.float32)[:, None], xywh.astype(np.float32)), 1)


def _write_split(root: Path, split: str, n: int, imgsz: int, seed: int, workers: int) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        im, lb = render_image(seed * 7919 + SPLIT_SEEDS[split] + i, imgsz)
        stem = f"{split}_{i:05d}"
        cv2.imwrite(str(root / "images" / split / f"{stem}.jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, 92])
        with open(root / "labels" / split / f"{stem}.txt", "w") as f:
            f.writelines(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in lb)

    with ThreadPoolExecutor(max(workers, 1)) as ex:
        list(ex.map(one, range(n)))


STAMP = ".generator.json"  # what produced a dataset folder, to tell a current one from a stale one


def _is_current(root: Path, stamp: dict) -> bool | None:
    """True: generated with these settings; False: generated, but stale; None: not a generated dataset."""
    f = root / STAMP
    if f.is_file():
        try:
            return json.loads(f.read_text()) == stamp
        except (OSError, ValueError):
            return False
    readme = root / "README.txt"
    if readme.is_file() and readme.read_text(errors="ignore").startswith("Synthetic shapes dataset"):
        return False  # version 1 wrote a README but no stamp: stale
    return None


def generate_shapes_dataset(root: str | Path = "datasets/shapes_v2", n_train: int = 1000, n_val: int = 200,
                            imgsz: int = 256, seed: int = 0, n_test: int = 0, workers: int | None = None) -> Path:
    """Write the shapes dataset under root and return root; up to date already: nothing to do.

    Built beside root and renamed into place, so readers never see half a dataset; a folder from another
    generator version or other arguments is replaced, a folder this generator did not write is left alone.
    """
    root = Path(root).resolve()
    stamp = {"generator": "shapes", "version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val,
             "n_test": n_test, "imgsz": imgsz, "seed": seed}
    current = _is_current(root, stamp) if root.exists() else None
    if current or (current is None and (root / "images").is_dir()):
        return root
    LOGGER.info(f"{'Regenerating stale' if current is False else 'Generating'} shapes dataset at {root} "
                f"({n_train} train, {n_val} val images at {imgsz} px) ...")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    workers = workers or min(8, os.cpu_count() or 1)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n:
            _write_split(tmp, split, n, imgsz, seed, workers)
    (tmp / "README.txt").write_text(
        f"Synthetic shapes dataset from utils/synthetic.py: classes {list(CLASSES)}, imgsz {imgsz}, seed {seed}, "
        f"{n_train} train / {n_val} val / {n_test} test images. Safe to delete; regenerated on first use.\n")
    (tmp / STAMP).write_text(json.dumps(stamp))
    old = None
    if current is False:  # stale: move it aside first (a directory cannot be renamed over a full one)
        old = root.parent / f".{root.name}.old{os.getpid()}"
        try:
            os.replace(root, old)
        except OSError:
            old = None
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return root


GENERATORS = {"shapes": generate_shapes_dataset}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Generate the synthetic shapes detection dataset.")
    p.add_argument("--root", default="datasets/shapes_v2")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=0)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = generate_shapes_dataset(a.root, a.n_train, a.n_val, a.imgsz, a.seed, n_test=a.n_test)
    print(f"shapes dataset at {root}")
    return root


if __name__ == "__main__":
    main()
