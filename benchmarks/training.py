"""Training for the backbone table, with a cache: a finished run of the same recipe is reused, not retrained."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import yaml

from benchmarks.cells import Skip, as_float
from utils.general import LOGGER

ROOT = Path(__file__).resolve().parents[1]

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
                    hyp: str | None, optimizer: str, nbs: int, teacher: str | Path | None = None) -> dict:
    """Everything that decides a benchmark training run's result. The yaml's parsed content is hashed, not just its
    name, so an edited model is retrained while a comment edit is not. Hyp and data yamls are named, not hashed
    (edit them and use a new --name). A --teacher checkpoint is named by its absolute path (a retrained teacher lands
    in a new run folder); recipes without one keep the keys they always had, so older records still match."""
    recipe = dict(cfg=Path(cfg).name, model_sha1=model_hash(cfg), data=Path(str(data)).name,
                  epochs=epochs, imgsz=imgsz, seed=seed, batch_size=batch_size, hyp=str(hyp or ""),
                  optimizer=optimizer, nbs=nbs)
    if teacher:
        recipe["teacher"] = str(Path(teacher).resolve())
    return recipe


def model_hash(cfg: str | Path) -> str:
    """sha1 of the model yaml's content (keys sorted, comments and layout ignored); of its text if it does not parse."""
    text = Path(cfg).read_text() if Path(cfg).is_file() else str(cfg)
    try:
        text = json.dumps(yaml.safe_load(text), sort_keys=True, default=str)
    except yaml.YAMLError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()


def finished_run(projects: str | Path | list, name: str, recipe: dict) -> dict | None:
    """The newest finished training run of this recipe under <project>/name* for any of the project folders, or
    None: a rerun of an interrupted or repeated benchmark reuses it instead of training again (latencies are
    measured anew every time)."""
    projects = [projects] if isinstance(projects, (str, Path)) else projects
    records = [f for project in projects for f in Path(project).glob(f"{name}*/{RECORD}")  # name, name2, name3 ...
               if f.parent.name == name or f.parent.name[len(name):].isdigit()]  # (train.py's numbering)
    for record in sorted(set(records), key=lambda f: f.stat().st_mtime, reverse=True):
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
                   nbs: int = 64, reuse: bool = True, reuse_from: tuple | list = (),
                   teacher: str | Path | None = None) -> dict:
    """Train cfg from scratch for `epochs` with train.run and the shared recipe; returns weights (best.pt), mAP50,
    mAP50-95 (the best epoch's validation, which best.pt holds) and the wall time in seconds. With reuse, a
    finished run of the same recipe under project/name* (or under reuse_from/name*: the training folders of earlier
    benchmark runs) is returned instead (its 'reused' key is True). teacher: train with train.py --teacher."""
    recipe = training_recipe(cfg, data, epochs, imgsz, seed, batch_size, hyp, optimizer, nbs, teacher)
    if reuse and (done := finished_run([project, *reuse_from], name, recipe)):
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
    if teacher:
        kw["teacher"] = str(teacher)
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


# What decides a published row's mAP besides the yaml (the CSV's columns): a row is reused only when all of them agree
ACCURACY_RECIPE = ("epochs", "train_imgsz", "batch_size", "optimizer", "nbs", "hyp", "seed", "data")
MAX_CSV_BYTES = 16 << 20  # a backbones.csv is a few kB; anything far larger is not one


def read_published(csv_file: str | Path) -> list[dict]:
    """The rows of a backbones.csv written by an earlier run (e.g. benchmarks/results/backbones.csv)."""
    f = Path(csv_file)
    if not f.is_file():
        raise FileNotFoundError(f"--accuracy-from {f}: no such file")
    if f.stat().st_size > MAX_CSV_BYTES:
        raise ValueError(f"--accuracy-from {f}: {f.stat().st_size} bytes, not a backbones.csv")
    with open(f, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"model", "map50", "map50_95", *ACCURACY_RECIPE} <= set(rows[0]):
        raise ValueError(f"--accuracy-from {f}: not a backbones.csv (needs model, map50, map50_95 and the recipe "
                         f"columns {', '.join(ACCURACY_RECIPE)})")
    return rows


def published_accuracy(rows: list[dict], model: str, recipe: dict, source: str = "the CSV") -> dict:
    """{'map50', 'map50_95', 'train_s'} of the published row of `model` trained with `recipe` (ACCURACY_RECIPE
    keys, compared as the CSV writes them); a Skip saying which recipe value differs when there is none."""
    same = [r for r in rows if r.get("model") == model]
    if not same:
        raise Skip(f"no {model} row in {source}")
    diffs = []
    for r in same:
        diff = [f"{k} {r.get(k)} there, {recipe.get(k)} here" for k in ACCURACY_RECIPE
                if str(r.get(k)) != str(recipe.get(k))]
        if not diff and as_float(r.get("map50_95")) is not None and as_float(r.get("map50")) is not None:
            out = {"map50": as_float(r["map50"]), "map50_95": as_float(r["map50_95"])}
            if as_float(r.get("train_s")) is not None:
                out["train_s"] = as_float(r["train_s"])  # the training time of the run that scored it
            return out
        diffs.append(", ".join(diff) or "no mAP in that row")
    raise Skip(f"{source}'s {model} row is of another recipe ({diffs[0]})")
