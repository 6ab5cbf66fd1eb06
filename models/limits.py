"""Bounds on what a model yaml may ask for, checked before anything is allocated.

A model yaml is a file from a user (or a stranger): a few bytes can claim a terabyte (``ch: 100000000``,
``width_multiple: 1e6``, ``[-1, 1, nn.Upsample, [None, 100000]]``). The bounds below are far above every
YOLOv5 / YOLOv5-Lite yaml (yolov5x6: nc 80, width 1.25, 1280 channels, 140M parameters) and far below what
would exhaust a machine:

=====================  ==========================  ==================================================
key                    allowed                     why
=====================  ==========================  ==================================================
``nc``                 int, 1..10000               the Detect conv has na * (nc + 5) outputs
``ch``                 int, 1..64                  image channels (3; multispectral needs a few more)
``depth_multiple``     number in (0, 10]           YOLOv5 uses 0.33..1.33
``width_multiple``     number in (0, 10]           YOLOv5 uses 0.25..1.25
repeats ``n``          int, 1..100 after scaling   YOLOv5's largest is 12 (yolov5x C3 rows)
channels after width   1..8192                     YOLOv5's largest is 1280 (Row.scale_width)
rows                   at most 1000                YOLOv5's yamls have ~25
anchors                <= 10 levels x 20 anchors   YOLOv5 uses 3 x 3
parameters             <= 2**28 (1 GiB float32)    whole model, counted on the meta device per row
one row's output       <= 2**26 elements (256 MiB) on the 256x256 build probe, measured on meta first
=====================  ==========================  ==================================================

Parameter counts and probe output sizes are measured by building (and running) each row on PyTorch's ``meta``
device first, which records shapes and allocates nothing, so even a torch.nn class with arbitrary arguments
(``nn.Linear(10**6, 10**6)``) is refused before its weights exist.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from models.registry import MAX_CHANNELS, YamlError  # MAX_CHANNELS: listed with the other bounds

MAX_NC = 10_000
MAX_CH = 64
MAX_MULTIPLE = 10.0
MAX_REPEATS = 100
MAX_ROWS = 1000
MAX_ANCHOR_LEVELS, MAX_ANCHORS_PER_LEVEL = 10, 20
MAX_PARAMS = 2 ** 28
MAX_ROW_OUTPUT = 2 ** 26


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _show(x: Any) -> str:
    """A value for an error message: repr cut short (a crafted yaml can hold a megabyte string) with its type."""
    text = repr(x)
    return f"{text[:40] + '...' if len(text) > 40 else text} ({type(x).__name__})"


def check_int(key: str, value: Any, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= value <= hi:
        raise YamlError(f"'{key}' must be an int in {lo}..{hi}, got {_show(value)}")
    return value


def check_header(d: dict, ch: Any = 3) -> None:
    """Bounds and types of the yaml's top-level numbers (nc, ch, multiples, anchors, row count)."""
    check_int("nc", d.get("nc"), 1, MAX_NC)
    check_int("ch", ch, 1, MAX_CH)
    for key in ("depth_multiple", "width_multiple"):
        v = d.get(key, 1.0)
        if not _is_number(v) or not 0 < v <= MAX_MULTIPLE:
            raise YamlError(f"'{key}' must be a number in (0, {MAX_MULTIPLE:g}], got {_show(v)}")
    anchors = d.get("anchors")
    if anchors is not None:
        if _is_int(anchors):
            check_int("anchors", anchors, 1, MAX_ANCHORS_PER_LEVEL)
        elif (not isinstance(anchors, list) or not 1 <= len(anchors) <= MAX_ANCHOR_LEVELS
              or not all(isinstance(a, list) and 2 <= len(a) <= 2 * MAX_ANCHORS_PER_LEVEL and len(a) % 2 == 0
                         and all(_is_number(v) and v > 0 for v in a) for a in anchors)
              or len({len(a) for a in anchors}) != 1):
            raise YamlError(f"'anchors' must be an int or 1..{MAX_ANCHOR_LEVELS} equal-length lists of positive "
                            f"w, h pairs (at most {MAX_ANCHORS_PER_LEVEL} per level), got {_show(anchors)}")
    n_rows = sum(len(d[k]) for k in ("backbone", "head") if isinstance(d.get(k), list))
    if n_rows > MAX_ROWS:
        raise YamlError(f"{n_rows} rows is more than the {MAX_ROWS} a model yaml may have")


def _numel(m: nn.Module) -> int:
    return sum(t.numel() for t in (*m.parameters(), *m.buffers()))


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    return x


def _out_numel(y) -> int:
    if isinstance(y, torch.Tensor):
        return y.numel()
    if isinstance(y, (list, tuple)):
        return sum(_out_numel(v) for v in y)
    return 0


def preflight(make, params_so_far: int, inp=None) -> int:
    """Build a row with ``make()`` on the meta device (and run it on the shapes of ``inp``) to measure its
    parameters and output size before the real build; returns its parameter count. A block whose __init__ or
    forward cannot run on meta (data-dependent code) is left to the real build, whose rows are still bounded
    by the channel and repeat limits."""
    try:
        with torch.device("meta"):
            m = make()
    except YamlError:
        raise
    except Exception:  # meta-incompatible __init__: the real build reports real errors
        return 0
    n = _numel(m)
    if params_so_far + n > MAX_PARAMS:
        raise YamlError(f"this row brings the model to {params_so_far + n:,} parameters, more than the "
                        f"{MAX_PARAMS:,} allowed")
    if inp is not None:
        try:
            m.eval()
            with torch.no_grad():
                out = _out_numel(m(_to_meta(inp)))
        except Exception:  # forward not meta-compatible, or a real shape error reported later
            out = 0
        if out > MAX_ROW_OUTPUT:
            raise YamlError(f"its output on the build probe has {out:,} elements, more than the "
                            f"{MAX_ROW_OUTPUT:,} allowed")
    return n
