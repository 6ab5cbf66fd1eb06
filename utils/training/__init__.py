"""Pieces of the training loop that train.py composes: hyperparameter loading, seeds and RNG state, freezing and
weight transfer, early stopping, class/image weights, results.csv, per-phase timing, signal handling, CPU threads."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from utils.general import LOGGER, check_yaml, load_yaml
from utils.torch_utils import LOCAL_RANK, RANK, WORLD_SIZE, load_matching

REQUIRED_HYP = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
                "box", "cls", "cls_pw", "obj", "obj_pw", "anchor_t")
RESULT_KEYS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
               "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
               "x/lr0", "x/lr1", "x/lr2")


def load_hyp(hyp) -> dict:
    """A hyp dict (copied), or a yaml path/bare name under data/hyps/; missing optimiser/loss keys are an error."""
    if isinstance(hyp, dict):
        h, where = dict(hyp), "hyp dict"
    else:
        f = check_yaml(hyp)
        where = str(f)
        h = load_yaml(f, "a mapping of hyperparameters", empty_ok=True)
    missing = [k for k in REQUIRED_HYP if k not in h]
    if missing:
        raise ValueError(f"{where}: missing hyperparameters {', '.join(missing)} (see data/hyps/hyp.scratch-low.yaml)")
    return h


# ---------------------------------------------------------------------------------------------------------------
# seeds and RNG state (exact resume)
# ---------------------------------------------------------------------------------------------------------------
def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; deterministic also pins cuDNN to reproducible kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def rng_state(loader=None) -> dict:
    """Every random stream training draws from, in weights_only-loadable form (tensors and lists)."""
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(loader, "generator", None)
    if gen is not None:
        s["loader"] = gen.get_state()  # the shuffle order and worker seeds of the next epochs
    return s


def set_rng_state(s: dict, loader=None) -> None:
    """Inverse of rng_state (after make_checkpoint turned tuples into lists)."""
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    n = s["numpy"]
    np.random.set_state((str(n[0]), np.asarray(n[1], dtype=np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and s.get("cuda"):
        torch.cuda.set_rng_state_all(s["cuda"])
    gen = getattr(loader, "generator", None)
    if gen is not None and s.get("loader") is not None:
        gen.set_state(s["loader"])


# ---------------------------------------------------------------------------------------------------------------
# model preparation
# ---------------------------------------------------------------------------------------------------------------
def transfer_weights(model: nn.Module, state_dict: dict, exclude: tuple[str, ...] = (), source: str = "") -> int:
    """Copy tensors whose name and shape match into model (e.g. all but the Detect convs when nc differs).

    Logs 'Transferred X/Y tensors from source' and returns X.
    """
    n, total = load_matching(model, state_dict, exclude=exclude)
    LOGGER.info(f"Transferred {n}/{total} tensors from {source or 'state_dict'}")
    return n


def freeze_layers(model: nn.Module, freeze: int | list[int]) -> list[str]:
    """--freeze N freezes layers 0..N-1, --freeze 2 5 freezes layers 2 and 5; returns the frozen names."""
    freeze = list(freeze) if isinstance(freeze, (list, tuple)) else [freeze]
    prefixes = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(freeze[0] if freeze else 0))]
    frozen = []
    for name, p in model.named_parameters():
        p.requires_grad = True
        if any(name.startswith(x) for x in prefixes):
            p.requires_grad = False
            frozen.append(name)
    if frozen:
        LOGGER.info(f"freezing {len(frozen)} tensors in layers {sorted({int(n.split('.')[1]) for n in frozen})}")
    return frozen


# ---------------------------------------------------------------------------------------------------------------
# early stopping and sampling weights
# ---------------------------------------------------------------------------------------------------------------
class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs (0 disables); also the run's best fitness."""

    def __init__(self, patience: int = 30):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience or float("inf")
        self.possible_stop = False  # the next epoch could be the last: validate it even under --noval

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:  # >= so a run stuck at 0 early on is not stopped for it
            self.best_epoch, self.best_fitness = epoch, fitness
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= (self.patience - 1)
        stop = delta >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                        f"Best results observed at epoch {self.best_epoch}, best model saved as best.pt.\n"
                        f"To update EarlyStopping(patience={self.patience}) pass a new patience value, "
                        f"i.e. `python train.py --patience 300` or use `--patience 0` to disable EarlyStopping.")
        return stop


def labels_to_class_weights(labels: list[np.ndarray], nc: int) -> torch.Tensor:
    """Inverse class frequency, normalised to sum 1 (classes never seen count as seen once)."""
    rows = [lb[:, 0] for lb in labels if len(lb)]
    classes = np.concatenate(rows).astype(int) if rows else np.zeros(0, int)
    counts = np.bincount(classes, minlength=nc)[:nc].astype(np.float64)
    counts[counts == 0] = 1
    w = 1 / counts
    return torch.from_numpy(w / w.sum()).float()


def labels_to_image_weights(labels: list[np.ndarray], nc: int, class_weights: np.ndarray) -> np.ndarray:
    """Per image: the sum of its objects' class weights (rare or badly-detected classes are drawn more)."""
    counts = np.stack([np.bincount(lb[:, 0].astype(int), minlength=nc)[:nc] for lb in labels])
    return counts @ np.asarray(class_weights, dtype=np.float64).reshape(nc)


# ---------------------------------------------------------------------------------------------------------------
# logging: results.csv and per-phase timing
# ---------------------------------------------------------------------------------------------------------------
class ResultsCSV:
    """results.csv: one row per epoch, YOLOv5's columns; a resumed run first drops rows from epochs it redoes."""

    def __init__(self, path: Path, start_epoch: int = 0, keys: tuple[str, ...] = RESULT_KEYS):
        self.path, self.keys = path, tuple(keys)  # extra keys (train/distill_loss) follow YOLOv5's columns
        if start_epoch and path.exists():
            lines = path.read_text().splitlines()
            keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and float(ln.split(",")[0]) < start_epoch]
            path.write_text("\n".join(keep) + "\n")

    def write(self, epoch: int, values: list[float]) -> None:
        n = len(self.keys) + 1
        head = "" if self.path.exists() else ("%20s," * n % ("epoch", *self.keys)).rstrip(",") + "\n"
        with open(self.path, "a") as f:
            f.write(head + ("%20.5g," * n % (epoch, *values)).rstrip(",") + "\n")


class PhaseClock:
    """Wall seconds per training phase within an epoch, logged at its end. CPU kernels run synchronously, so the
    deltas are the phases' own cost; on CUDA they measure launch time (nothing is synchronised, to stay free)."""

    PHASES = ("data", "forward", "teacher", "loss", "backward", "optimizer", "ema", "log", "val", "checkpoint")
    OPTIONAL = ("teacher",)  # listed only when it took time: a run without --teacher logs the line it always did

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to phase."""
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now

    def summary(self) -> str:
        total = sum(self.seconds.values())
        return f"epoch {total:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()
                                                   if v or k not in self.OPTIONAL)


# ---------------------------------------------------------------------------------------------------------------
# signals, threads, DDP agreement
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def sigterm_as_interrupt():
    """Let `kill` (SIGTERM) stop training the way Ctrl-C does: last completed epoch kept, clean message."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C/kill until the block ends (a checkpoint write), then raise it: no half-written save path."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if caught:
        raise KeyboardInterrupt(f"signal {caught[0]}")


def set_cpu_threads(device: torch.device, workers: int) -> int:
    """On CPU, one torch thread per core of this process (cores / DDP processes), as YOLOv5 trains; only ever
    lowers the count (a caller that set fewer keeps them). Returns the count. On an idle 2-core machine 2
    threads beside 2 workers train yolov5n 1.1-1.4x faster than 1 (README, bench_train --grid). On a machine busy
    with other jobs OpenMP threads can spin at barriers (measured 2-5x slower there): set OMP_NUM_THREADS=1 then;
    OMP_NUM_THREADS always wins. ``workers`` is only reported: the loader costs ~5% of a core at this step rate."""
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = min(max(1, (os.cpu_count() or 1) // max(WORLD_SIZE, 1)), torch.get_num_threads())
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    LOGGER.info(f"Using {n} torch CPU thread{'s' * (n > 1)} beside {workers} dataloader worker"
                f"{'s' * (workers != 1)} (set OMP_NUM_THREADS to override)")
    return n


def training_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU: oneDNN's blocked convolution kernels, forward and backward, train yolov5n ~1.5x
    faster than NCHW at one thread (README, bench_train --grid); CUDA keeps NCHW (AMP kernels differ)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if flag is set on any DDP rank (every rank must leave the loop together or collectives hang)."""
    if RANK == -1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank0_value(value):
    """Rank 0's value on every DDP rank (rank 0 alone validates, so it alone knows whether to stop)."""
    if RANK == -1:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, 0)
    return shared[0]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """--sync-bn under DDP: SyncBatchNorm on CUDA; PyTorch has no CPU kernel for it, so CPU keeps BatchNorm."""
    if device.type == "cuda":
        LOGGER.info("Using SyncBatchNorm()")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    LOGGER.warning("WARNING ⚠️ --sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                   "using per-process BatchNorm")
    return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel on this rank's device (which broadcasts rank 0's weights and buffers)."""
    cuda = device.type == "cuda"
    return nn.parallel.DistributedDataParallel(model, device_ids=[LOCAL_RANK] if cuda else None,
                                               output_device=LOCAL_RANK if cuda else None)


def init_ddp(device: torch.device) -> torch.device:
    """Join the torchrun process group (NCCL on CUDA, else gloo); returns this rank's device."""
    if device.type == "cuda":
        torch.cuda.set_device(LOCAL_RANK)
        device = torch.device("cuda", LOCAL_RANK)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(hours=3))
    if RANK == 0:
        LOGGER.info(f"DDP: {dist.get_backend()} backend, {WORLD_SIZE} processes")
    return device
