"""Hyperparameter evolution (train.py --evolve): mutate the best hyps so far, train, keep a table of outcomes."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from utils.general import LOGGER, colorstr
from utils.metrics import fitness
from utils.training import load_hyp

# key: (mutation gain, lower limit, upper limit); gain 0 keeps the value fixed
EVOLVE_META = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98), "weight_decay": (1, 0.0, 0.001),
    "warmup_epochs": (1, 0.0, 5.0), "warmup_momentum": (1, 0.0, 0.95), "warmup_bias_lr": (1, 0.0, 0.2),
    "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0), "obj": (1, 0.2, 4.0),
    "obj_pw": (1, 0.5, 2.0), "iou_t": (0, 0.1, 0.7), "anchor_t": (1, 2.0, 8.0), "fl_gamma": (0, 0.0, 2.0),
    "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9), "degrees": (1, 0.0, 45.0),
    "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9), "shear": (1, 0.0, 10.0), "perspective": (0, 0.0, 0.001),
    "flipud": (1, 0.0, 1.0), "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0), "mixup": (1, 0.0, 1.0),
    "copy_paste": (1, 0.0, 1.0)}
RESULT_COLUMNS = ("fitness", "P", "R", "mAP50", "mAP50-95", "val/box_loss", "val/obj_loss", "val/cls_loss")


def mutate_hyp(hyp: dict, history: np.ndarray, keys: list[str], rng: np.random.Generator, sigma: float = 0.2,
               mp: float = 0.8) -> dict:
    """A child of the fittest past runs (fitness-weighted mean of the top 5, else hyp) with multiplicative noise."""
    h = dict(hyp)
    if len(history):
        top = history[np.argsort(-history[:, 0])][:5]
        wts = top[:, 0] - top[:, 0].min() + 1e-6
        parent = (top[:, 1:] * wts[:, None]).sum(0) / wts.sum()
        h.update({k: float(v) for k, v in zip(keys, parent)})
    gains = np.array([EVOLVE_META.get(k, (0, 0, 0))[0] for k in keys], dtype=np.float64)
    v = np.ones(len(keys))
    for _ in range(100):  # retry until something mutates
        v = (gains * (rng.random(len(keys)) < mp) * rng.standard_normal(len(keys)) * rng.random() * sigma + 1)
        v = v.clip(0.3, 3.0)
        if (v != 1).any() or not sigma:
            break
    for k, x in zip(keys, v):
        lo, hi = EVOLVE_META.get(k, (0, -np.inf, np.inf))[1:]
        h[k] = float(np.clip(h[k] * x, lo, hi))
    return h


def evolve(opt, device, callbacks, train_fn: Callable) -> Path:
    """Run opt.evolve generations of short trainings with train_fn(hyp, opt, device, callbacks) (train.train);
    evolve.csv and hyp_evolve.yaml land in opt.save_dir."""
    base = load_hyp(opt.hyp)
    keys = [k for k in base if isinstance(base[k], (int, float)) and k in EVOLVE_META]
    opt.noval, opt.nosave = True, True
    save_dir = Path(opt.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    table = save_dir / "evolve.csv"
    first = len(RESULT_COLUMNS)  # the hyp columns follow the results
    rng = np.random.default_rng(opt.seed)
    for gen in range(opt.evolve):
        history = np.loadtxt(table, delimiter=",", skiprows=1, ndmin=2) if table.exists() else np.zeros((0, 1))
        hyp = mutate_hyp(base, history[:, [0] + list(range(first, first + len(keys)))] if len(history) else history,
                         keys, rng)
        LOGGER.info(colorstr("evolve: ") + f"generation {gen + 1}/{opt.evolve}")
        r = train_fn(hyp.copy(), opt, device, callbacks)
        fi = float(fitness(np.array(r).reshape(1, -1))[0])
        row = [fi, *r, *[hyp[k] for k in keys]]
        head = "" if table.exists() else ",".join([*RESULT_COLUMNS, *keys]) + "\n"
        with open(table, "a") as f:
            f.write(head + ",".join(f"{x:.6g}" for x in row) + "\n")
    history = np.loadtxt(table, delimiter=",", skiprows=1, ndmin=2)
    bestrow = history[history[:, 0].argmax()]
    best = {**base, **{k: float(v) for k, v in zip(keys, bestrow[first:])}}
    out = save_dir / "hyp_evolve.yaml"
    out.write_text(f"# best of {len(history)} generations, fitness {bestrow[0]:.5f}\n" +
                   yaml.safe_dump(best, sort_keys=False))
    LOGGER.info(f"Hyperparameter evolution finished: {len(history)} generations, best fitness {bestrow[0]:.5f}; "
                f"use with --hyp {out}")
    return out
