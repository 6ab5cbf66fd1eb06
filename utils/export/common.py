"""Shared pieces of the exporters: the error type, the head lookup, atomic writes, quiet tracing."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from models.blocks.heads import Detect


class ExportError(ValueError):
    """A bad export request; the message says which option and what to do instead."""


def head_of(model: nn.Module) -> Detect:
    """The Detect (or Segment) layer ending the model; anything else is an ExportError."""
    m = model.model[-1]
    if not isinstance(m, Detect):
        raise ExportError(f"the model's last layer is {type(m).__name__}, not a Detect head")
    return m


def atomic_path(file: Path) -> Path:
    """A fresh temporary file next to file: written there, then moved over file with os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=file.name + ".", suffix=".tmp", dir=file.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def staged_folder(folder: Path):
    """Yield a fresh folder beside `folder`; when the block succeeds it replaces `folder` whole, so a failed
    conversion never leaves a half-written model behind. The staging folder is removed either way."""
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_logger(name: str | None, level: int):
    """Raise a logger's level for the block (None: the root logger), restoring it after: converters and
    quantisers log per-op advice that buries the export's own output."""
    log = logging.getLogger(name)
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


@contextlib.contextmanager
def quiet_warnings():
    """Silence warnings while tracing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-derived Python ints are expected here
        yield


def load_model(weights, device: torch.device, half: bool = False) -> nn.Module:
    """A checkpoint path (ours or YOLOv5's) or a model object -> fused eval-mode model on device."""
    if isinstance(weights, nn.Module):
        model = weights
    else:
        from models.experimental import attempt_load
        w = Path(str(weights[0] if isinstance(weights, (list, tuple)) else weights))
        if w.is_dir():
            raise ExportError(f"weights '{w}' is a directory, not a file")
        if not w.is_file():
            raise FileNotFoundError(f"weights file '{w}' not found")
        if w.suffix not in (".pt", ".pth"):
            raise ExportError(f"'{w}': export reads PyTorch checkpoints (.pt); got '{w.suffix}'")
        model = attempt_load(w, device=device, inplace=True, fuse=False)
    model = model.to(device).float().eval()
    model.fuse(verbose=False)  # folds BN and re-parameterises RepVGG; a no-op on an already fused model
    for p in model.parameters():
        p.requires_grad_(False)
    return model.half() if half else model

