"""Checkpoint I/O.

Our checkpoints are plain dicts of tensors and primitives (model yaml, state_dicts, metadata) that load with
``torch.load(..., weights_only=True)``. YOLOv5's own checkpoints pickle whole model objects; those are read with a
restricted unpickler that materialises only an allow-list (tensor rebuild helpers, containers, numpy scalars) and
turns every module class into an inert record, so no code from the file ever runs. The yaml and weights recovered
from the records rebuild the model with our builder.
"""
from __future__ import annotations

import collections
import datetime
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch

from utils.general import first_line

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
                    opt=None, updates: int = 0, extra: dict | None = None) -> dict:
    """Everything needed to rebuild, evaluate and resume, in weights_only-loadable form."""
    from utils.torch_utils import de_parallel
    m = de_parallel(model)
    ckpt = {
        "format": FORMAT,
        "yaml": to_plain(m.yaml),
        "names": {int(k): str(v) for k, v in dict(enumerate(m.names) if isinstance(m.names, (list, tuple)) else m.names).items()},
        "stride": [float(s) for s in m.stride],
        "epoch": int(epoch),
        "best_fitness": None if best_fitness is None else float(best_fitness),
        "model": {k: v.detach().clone() for k, v in m.state_dict().items()},
        "ema": {k: v.detach().clone() for k, v in ema.ema.state_dict().items()} if ema is not None else None,
        "updates": int(ema.updates if ema is not None else updates),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "opt": to_plain(vars(opt) if hasattr(opt, "__dict__") and not isinstance(opt, dict) else (opt or {})),
        "hyp": to_plain(getattr(m, "hyp", None)),
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


# ---------------------------------------------------------------- YOLOv5 pickles, read without running them
class _Record:
    """Stand-in for a pickled class instance: keeps its state and class name, does nothing else."""
    qualname = "?"

    def __setstate__(self, state):
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_raw": state}

    def __getattr__(self, item):
        try:
            return self.__dict__["_state"][item]
        except KeyError:
            raise AttributeError(item) from None


_RECORD_MODULES = ("models.", "torch.nn.modules.", "utils.")  # class instances we rebuild ourselves
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "dict"): dict,
    ("builtins", "list"): list, ("builtins", "tuple"): tuple, ("builtins", "slice"): slice,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar if hasattr(np, "core") else None,
    ("numpy._core.multiarray", "scalar"): getattr(getattr(np, "_core", None), "multiarray", None) and np._core.multiarray.scalar,
    ("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct if hasattr(np, "core") else None,
    ("numpy._core.multiarray", "_reconstruct"): getattr(getattr(np, "_core", None), "multiarray", None) and np._core.multiarray._reconstruct,
    ("pathlib", "PosixPath"): Path, ("pathlib", "WindowsPath"): Path, ("pathlib", "Path"): Path,
}
_record_classes: dict[str, type] = {}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol-2 spellings
        if (module, name) in _ALLOWED and _ALLOWED[(module, name)] is not None:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_RECORD_MODULES) and name.isidentifier():
            key = f"{module}.{name}"
            if key not in _record_classes:
                _record_classes[key] = type(name, (_Record,), {"qualname": key})
            return _record_classes[key]
        raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}' (not on the allow-list)")


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "restricted_pickle"


def _record_state_dict(rec: _Record) -> dict:
    """Collect parameters and persistent buffers from a tree of module records, with state_dict key names."""
    out = {}

    def walk(r, prefix):
        st = r.__dict__.get("_state", {})
        skip = st.get("_non_persistent_buffers_set", set()) or set()
        for k, v in (st.get("_parameters") or {}).items():
            if v is not None:
                out[prefix + k] = v.detach() if isinstance(v, torch.Tensor) else v
        for k, v in (st.get("_buffers") or {}).items():
            if v is not None and k not in skip:
                out[prefix + k] = v
        for k, child in (st.get("_modules") or {}).items():
            if isinstance(child, _Record):
                walk(child, f"{prefix}{k}.")

    walk(rec, "")
    return out


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "native"
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Unsupported" not in str(e) and "global" not in str(e).lower():
            raise
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule), "yolov5"


def load_checkpoint(weights: str | Path) -> dict:
    """Read our checkpoint or YOLOv5's. Returns a dict with at least yaml, state_dict (EMA if present), names,
    stride, source ('native' or 'yolov5') and the raw checkpoint under 'ckpt'. Errors are one-line CheckpointError
    or FileNotFoundError."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{weights}' not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file '{weights}' is empty (0 bytes)")
    try:
        raw, source = _read(path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"'{weights}' cannot be loaded safely: {first_line(e)}") from None
    except Exception as e:  # zip errors, EOF, garbage bytes
        raise CheckpointError(f"'{weights}' is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{first_line(e)}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{weights}' holds a {type(raw).__name__}, not a checkpoint dict")
    if source == "native" and raw.get("format") == FORMAT:
        sd = raw["ema"] if raw.get("ema") is not None else raw["model"]
        return {"yaml": raw["yaml"], "state_dict": sd, "names": raw.get("names") or {},
                "stride": raw.get("stride"), "source": "native", "ckpt": raw}
    obj = raw.get("ema") or raw.get("model")
    if isinstance(obj, _Record):
        yaml_dict = obj.__dict__["_state"].get("yaml")
        if not isinstance(yaml_dict, dict):
            raise CheckpointError(f"'{weights}': YOLOv5 checkpoint has no model yaml to rebuild from")
        names = obj.__dict__["_state"].get("names") or {}
        names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
        stride = obj.__dict__["_state"].get("stride")
        return {"yaml": dict(yaml_dict), "state_dict": _record_state_dict(obj), "names": names,
                "stride": stride.tolist() if isinstance(stride, torch.Tensor) else stride, "source": "yolov5", "ckpt": raw}
    if "state_dict" in raw and "yaml" in raw:  # a bare {'yaml', 'state_dict'} dict, e.g. written by a user script
        return {"yaml": raw["yaml"], "state_dict": raw["state_dict"], "names": raw.get("names") or {},
                "stride": raw.get("stride"), "source": "native", "ckpt": raw}
    raise CheckpointError(f"'{weights}' is not a YOLOv5 or yolov5-lite checkpoint (keys: {sorted(map(str, raw))[:8]})")


def strip_optimizer(path: str | Path) -> None:
    """Drop optimizer/training state from a finished run's checkpoint and store weights in fp16 (smaller files)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("ema") is not None:
        ckpt["model"] = ckpt["ema"]
    ckpt.update(ema=None, optimizer=None, updates=None, epoch=-1)
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(ckpt, path)
