"""Checkpoint I/O.

Our checkpoints are plain dicts of tensors and primitives (model yaml, state_dicts, metadata) that also load with
``torch.load(..., weights_only=True)``. YOLOv5's own checkpoints pickle whole model objects. Every file is read with
``utils.safe_unpickle`` (never ``torch.load``): it materialises only an allow-list (tensors checked against their
storages, containers, numpy numbers) and turns every module class into an inert record, so no code from the file
runs and no object outside the load changes. The yaml and weights recovered from the records rebuild the model
with our builder.
"""
from __future__ import annotations

import datetime
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from utils.general import LOGGER, first_line
from utils.safe_unpickle import Record, read_torch_zip

FORMAT = "yolov5-lite-checkpoint/1"


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message says which file and why."""


def to_plain(v):
    """Make argparse/pathlib/numpy values plain Python: safe for weights_only loading and yaml.safe_dump."""
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if v is None or isinstance(v, (str, int, float, bool, torch.Tensor)):
        return v
    return str(v)


def make_checkpoint(model, ema=None, optimizer=None, epoch: int = -1, best_fitness: float | None = None,
                    opt=None, updates: int = 0, extra: dict | None = None, hyp: dict | None = None) -> dict:
    """Everything needed to rebuild, evaluate and resume, in weights_only-loadable form. hyp defaults to
    model.hyp (YOLOv5 keeps it there); train.py passes the hyperparameters as given."""
    from utils.torch_utils import de_parallel
    m = de_parallel(model)
    ckpt = {
        "format": FORMAT,
        "yaml": to_plain(m.yaml),
        "names": {int(k): str(v) for k, v in
                  dict(enumerate(m.names) if isinstance(m.names, (list, tuple)) else m.names).items()},
        "stride": [float(s) for s in m.stride],
        "epoch": int(epoch),
        "best_fitness": None if best_fitness is None else float(best_fitness),
        # contiguous: CPU training keeps weights channels_last, files keep YOLOv5's plain NCHW layout
        "model": {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in m.state_dict().items()},
        "ema": {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in ema.ema.state_dict().items()}
        if ema is not None else None,
        "updates": int(ema.updates if ema is not None else updates),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "opt": to_plain(vars(opt) if hasattr(opt, "__dict__") and not isinstance(opt, dict) else (opt or {})),
        "hyp": to_plain(getattr(m, "hyp", None) if hyp is None else hyp),
        "date": datetime.datetime.now().isoformat(),
    }
    if extra:
        ckpt.update(to_plain(extra))
    return ckpt


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- reading files from strangers
_MAX_MODULE_RECORDS = 200_000  # YOLOv5x: ~700 records, ~1,000 tensors; bounds records shared exponentially
_MAX_DEPTH = 100  # YOLOv5: DetectionModel > Sequential > Detect > ModuleList > Conv2d is 5
_GROUPS = ("_parameters", "_buffers", "_modules")


def _state(rec: Record) -> dict:
    st = rec.__dict__.get("_state", {})
    return st if isinstance(st, dict) else {}


def _record_state_dict(rec: Record, weights) -> dict:
    """Collect parameters and persistent buffers from a tree of module records, with state_dict key names.
    Iterative with an ancestor check: a cyclic or exploding record graph is a one-line error, not a RecursionError."""
    out, seen, todo = {}, 0, [(rec, "", frozenset())]
    while todo:
        r, prefix, ancestors = todo.pop()
        st = _state(r)
        groups = {g: st.get(g) if st.get(g) is not None else {} for g in _GROUPS}
        where = prefix[:-1] or "model"
        for g, d in groups.items():
            if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
                raise CheckpointError(f"'{weights}': module record '{where[:60]}' has a malformed {g}")
        # entries count too: one huge dict shared by many records costs as much as many records
        seen += 1 + sum(map(len, groups.values()))
        if seen > _MAX_MODULE_RECORDS:
            raise CheckpointError(f"'{weights}': more than {_MAX_MODULE_RECORDS} module records and entries")
        skip = st.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, (set, frozenset)) else set()
        for g in _GROUPS[:2]:
            for k, v in groups[g].items():
                if v is not None and not (g == "_buffers" and k in skip):
                    out[f"{prefix}{k}"] = v
        children = groups["_modules"]
        inner = ancestors | {id(r)}
        for k, child in reversed(list(children.items())):
            if isinstance(child, Record):
                if id(child) in inner:
                    raise CheckpointError(f"'{weights}': module records form a cycle (at '{(prefix + k)[:80]}')")
                if len(inner) >= _MAX_DEPTH:
                    raise CheckpointError(f"'{weights}': module records nested more than {_MAX_DEPTH} deep")
                todo.append((child, f"{prefix}{k}.", inner))
    return out


def _check_state_dict(sd, weights, what: str) -> dict:
    """A state_dict from a file must map str keys to tensors; say which entry is not."""
    if not isinstance(sd, dict):
        raise CheckpointError(f"'{weights}': its {what} is a {type(sd).__name__}, not a state_dict")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"'{weights}': {what} entry {str(k)[:60]!r} is a {type(v).__name__}, not a tensor")
    return sd


def _read(path: Path, weights) -> object:
    """Unpickle with the safe unpickler; every failure becomes a short CheckpointError naming the file."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x80\x02":  # torch's legacy (pre-1.6) stream of pickles, read via its 'module' persistent ids
            raise CheckpointError(f"'{weights}' uses the legacy (pre-1.6) PyTorch format, which is not read for "
                                  "safety; re-save it with torch.save in PyTorch >= 1.6")
        raise CheckpointError(f"'{weights}' is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              "no zip directory")
    try:
        return read_torch_zip(path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"'{weights}' cannot be loaded safely: {first_line(e)[:120]}") from None
    except RecursionError:
        raise CheckpointError(f"'{weights}' is nested too deeply to read") from None
    except Exception as e:  # zip CRC errors, EOF, garbage opcodes: never torch's advice, never a traceback
        raise CheckpointError(f"'{weights}' is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {first_line(e)[:60]}") from None


def _native(raw: dict, weights) -> dict:
    for key in ("yaml", "model"):
        if key not in raw:
            raise CheckpointError(f"'{weights}': checkpoint has no '{key}'")
    if not isinstance(raw["yaml"], dict):
        raise CheckpointError(f"'{weights}': its 'yaml' is a {type(raw['yaml']).__name__}, not a dict")
    use_ema = raw.get("ema") is not None
    sd = _check_state_dict(raw["ema"] if use_ema else raw["model"], weights, "'ema'" if use_ema else "'model'")
    return {"yaml": raw["yaml"], "state_dict": sd, "names": _names(raw.get("names"), weights),
            "stride": raw.get("stride"), "source": "native", "ckpt": raw}


def _names(names, weights) -> dict:
    if names is None:
        return {}
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not all(type(k) is int or (isinstance(k, str) and k.isdigit()) for k in names):
        raise CheckpointError(f"'{weights}': class names are a {type(names).__name__}, not a list or int-keyed dict")
    if not all(isinstance(v, (str, int, float)) for v in names.values()):
        raise CheckpointError(f"'{weights}': class names must be strings")
    return {int(k): str(v) for k, v in names.items()}


def _yolov5(raw: dict, weights) -> dict:
    obj = next((raw[k] for k in ("ema", "model") if isinstance(raw.get(k), Record)), None)
    if obj is None:
        kinds = {k: type(raw[k]).__name__ for k in ("ema", "model") if raw.get(k) is not None}
        raise CheckpointError(f"'{weights}': 'model' and 'ema' are not module records ({kinds or 'missing'})")
    st = _state(obj)
    if not isinstance(st.get("yaml"), dict):
        raise CheckpointError(f"'{weights}': YOLOv5 checkpoint has no model yaml to rebuild from")
    stride = st.get("stride")
    return {"yaml": dict(st["yaml"]), "state_dict": _check_state_dict(_record_state_dict(obj, weights), weights,
                                                                       "model"),
            "names": _names(st.get("names"), weights),
            "stride": stride.tolist() if isinstance(stride, torch.Tensor) else stride, "source": "yolov5", "ckpt": raw}


def _count_non_finite(t: torch.Tensor) -> int:
    """numpy's isfinite is ~20x faster than torch's on CPU fp16; bfloat16/float8 have no numpy type."""
    try:
        a = t.numpy()
    except TypeError:
        return int(t.numel() - torch.count_nonzero(torch.isfinite(t)))
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def warn_non_finite(sd: dict, weights) -> int:
    """Count NaN/Inf weight values and warn: such a model loads fine and then detects nothing."""
    bad = total = 0
    seen = set()
    for v in sd.values():  # per distinct storage: many views of one storage cost one pass, not one each
        if not (v.is_floating_point() or v.is_complex()):
            continue
        st = v.untyped_storage()
        if (st.data_ptr(), v.dtype) in seen:
            continue
        seen.add((st.data_ptr(), v.dtype))
        flat = torch.empty(0, dtype=v.dtype).set_(st) if v.numel() else v
        bad += _count_non_finite(flat)
        total += flat.numel()
    if bad:
        LOGGER.warning(f"WARNING: '{weights}' holds {bad} NaN/Inf weight values (of {total}); "
                       "its detections will be meaningless")
    return bad


def load_checkpoint(weights: str | Path) -> dict:
    """Read our checkpoint or YOLOv5's (train.py's last/best.pt, release files, the PyPI yolov5 package's) without
    running anything from the file. Returns a dict with at least yaml, state_dict (EMA if present), names, stride,
    source ('native' or 'yolov5') and the raw checkpoint under 'ckpt'. Errors are one-line CheckpointError or
    FileNotFoundError."""
    path = Path(weights)
    if path.is_dir():
        raise CheckpointError(f"weights '{weights}' is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{weights}' not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file '{weights}' is empty (0 bytes)")
    info = _interpret(_read(path, weights), weights)
    warn_non_finite(info["state_dict"], weights)
    return info


def _interpret(raw, weights) -> dict:
    """Find yaml, weights and names in whatever layout the file has (ours, YOLOv5's, a bare state_dict dict)."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{weights}' holds a {type(raw).__name__}, not a checkpoint dict")
    if raw.get("format") == FORMAT:
        return _native(raw, weights)
    if isinstance(raw.get("ema"), Record) or isinstance(raw.get("model"), Record):
        return _yolov5(raw, weights)
    if "model" in raw and "yaml" not in raw:  # YOLOv5-shaped but the model is no module record
        return _yolov5(raw, weights)
    if "state_dict" in raw and "yaml" in raw:  # a bare {'yaml', 'state_dict'} dict, e.g. written by a user script
        if not isinstance(raw["yaml"], dict):
            raise CheckpointError(f"'{weights}': its 'yaml' is a {type(raw['yaml']).__name__}, not a dict")
        return {"yaml": raw["yaml"], "state_dict": _check_state_dict(raw["state_dict"], weights, "'state_dict'"),
                "names": _names(raw.get("names"), weights), "stride": raw.get("stride"), "source": "native",
                "ckpt": raw}
    raise CheckpointError(f"'{weights}' is not a YOLOv5 or yolov5-lite checkpoint "
                          f"(keys: {sorted(k[:20] if isinstance(k, str) else type(k).__name__ for k in raw)[:8]})")


def strip_optimizer(path: str | Path) -> None:
    """Drop optimizer/training state from a finished run's checkpoint and store weights in fp16 (smaller files)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("ema") is not None:
        ckpt["model"] = ckpt["ema"]
    ckpt.update(ema=None, optimizer=None, updates=None, epoch=-1)
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(ckpt, path)
