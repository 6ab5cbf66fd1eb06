"""Train a YOLOv5-compatible detector on a YOLO-format dataset.

Usage:
    python train.py --data shapes.yaml --cfg yolov5n_MobileNetv2.yaml --imgsz 256 --epochs 30 --batch-size 32
    python train.py --data shapes.yaml --weights runs/train/exp/weights/best.pt     # fine-tune from a checkpoint
    python train.py --resume                                                        # continue the latest run
    python train.py --resume runs/train/exp3/weights/last.pt                        # continue a given run
    torchrun --nproc_per_node 2 train.py --data shapes.yaml --cfg yolov5n.yaml --batch-size 32 --device cpu

Bare file names resolve like YOLOv5's: --cfg under models/, --data under data/, --hyp under data/hyps/.
Outputs go to runs/train/exp{,2,3,...}: weights/last.pt and best.pt, results.csv/png, labels.jpg,
train_batch*.jpg, hyp.yaml, opt.yaml (and the final validation's plots).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import random
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import val as validate  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.augmentations import multi_scale  # noqa: E402
from utils.autoanchor import check_anchors  # noqa: E402
from utils.callbacks import Callbacks  # noqa: E402
from utils.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint  # noqa: E402
from utils.checkpoint import strip_optimizer, to_plain  # noqa: E402
from utils.dataloaders import check_dataset, create_dataloader  # noqa: E402
from utils.general import LOGGER, TQDM_BAR_FORMAT, check_img_size, check_yaml, colorstr, increment_path  # noqa: E402
from utils.general import load_yaml  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.metrics import fitness  # noqa: E402
from utils.optim import OPTIMIZERS, lr_lambda, smart_optimizer, warmup_iterations, warmup_step  # noqa: E402
from utils.torch_utils import LOCAL_RANK, RANK, WORLD_SIZE, ModelEMA, de_parallel, select_device  # noqa: E402
from utils.torch_utils import load_matching, torch_distributed_zero_first  # noqa: E402

TQDM_FORMAT = TQDM_BAR_FORMAT  # the one bar format of every script (utils.general)
REQUIRED_HYP = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
                "box", "cls", "cls_pw", "obj", "obj_pw", "anchor_t")
RESULT_KEYS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
               "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
               "x/lr0", "x/lr1", "x/lr2")
GRAD_CLIP_NORM = 10.0

# run outcomes, in opt.status after train()
COMPLETED, EARLY_STOPPED, INTERRUPTED, NON_FINITE = "completed", "early stopped", "interrupted", "non-finite loss"


# ---------------------------------------------------------------------------------------------------------------
# small helpers
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


def transfer_weights(model: nn.Module, state_dict: dict, exclude: tuple[str, ...] = (), source: str = "") -> int:
    """Copy tensors whose name and shape match into model (e.g. all but the Detect convs when nc differs).

    Logs 'Transferred X/Y tensors from source' and returns X.
    """
    n, total = load_matching(model, state_dict, exclude=exclude)
    LOGGER.info(f"Transferred {n}/{total} tensors from {source or 'state_dict'}")
    return n


def freeze_layers(model: nn.Module, freeze: list[int]) -> list[str]:
    """--freeze N freezes layers 0..N-1, --freeze 2 5 freezes layers 2 and 5; returns the frozen names."""
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


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs (0 disables)."""

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


def load_hyp(hyp) -> dict:
    """A hyp dict, or a yaml path/bare name under data/hyps/; missing optimiser/loss keys are an error."""
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


class ResultsCSV:
    """results.csv: one row per epoch, YOLOv5's columns; a resumed run first drops rows from epochs it redoes."""

    def __init__(self, path: Path, start_epoch: int = 0):
        self.path = path
        if start_epoch and path.exists():
            lines = path.read_text().splitlines()
            keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and float(ln.split(",")[0]) < start_epoch]
            path.write_text("\n".join(keep) + "\n")

    def write(self, epoch: int, values: list[float]) -> None:
        n = len(RESULT_KEYS) + 1
        head = "" if self.path.exists() else ("%20s," * n % ("epoch", *RESULT_KEYS)).rstrip(",") + "\n"
        with open(self.path, "a") as f:
            f.write(head + ("%20.5g," * n % (epoch, *values)).rstrip(",") + "\n")


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


class PhaseClock:
    """Wall seconds per training phase within an epoch, logged at its end. CPU kernels run synchronously, so the
    deltas are the phases' own cost; on CUDA they measure launch time (nothing is synchronised, to stay free)."""

    PHASES = ("data", "forward", "loss", "backward", "optimizer", "ema", "log", "val", "checkpoint")

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
        return f"epoch {total:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())


def set_cpu_threads(device: torch.device, workers: int) -> None:
    """On CPU, leave one core per dataloader worker (only ever lowering the count): OpenMP threads that share cores
    with workers or other DDP processes spin at barriers, measured 10x slower on 2 cores. OMP_NUM_THREADS wins."""
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return
    n = min(max(1, (os.cpu_count() or 1) // max(WORLD_SIZE, 1) - workers), torch.get_num_threads())
    if n != torch.get_num_threads():
        LOGGER.info(f"Using {n} torch CPU thread{'s' * (n > 1)} beside {workers} dataloader worker"
                    f"{'s' * (workers != 1)} (set OMP_NUM_THREADS to override)")
        torch.set_num_threads(n)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if flag is set on any DDP rank (every rank must leave the loop together or collectives hang)."""
    if RANK == -1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def train(hyp, opt, device: torch.device, callbacks: Callbacks | None = None):
    """Train per opt; returns the final (P, R, mAP50, mAP50-95, box, obj, cls) and sets opt.status."""
    callbacks = callbacks or Callbacks()
    save_dir = Path(opt.save_dir)
    epochs, batch_size, weights, single_cls = opt.epochs, opt.batch_size, opt.weights, opt.single_cls
    evolve, data, cfg, resume, noval, nosave, workers = (opt.evolve, opt.data, opt.cfg, opt.resume, opt.noval,
                                                         opt.nosave, opt.workers)
    freeze = opt.freeze if isinstance(opt.freeze, (list, tuple)) else [opt.freeze]
    callbacks.run("on_pretrain_routine_start")
    main_rank = RANK in {-1, 0}

    w = save_dir / "weights"
    (w.parent if evolve else w).mkdir(parents=True, exist_ok=True)
    last, best = w / "last.pt", w / "best.pt"

    hyp = load_hyp(hyp)
    LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in hyp.items()))
    opt.hyp = hyp.copy()  # unscaled, for opt.yaml and resuming
    if not evolve and main_rank:
        (save_dir / "hyp.yaml").write_text(yaml.safe_dump(to_plain(hyp), sort_keys=False))
        (save_dir / "opt.yaml").write_text(yaml.safe_dump(to_plain(vars(opt)), sort_keys=False))

    plots = not evolve and not opt.noplots
    amp = device.type == "cuda"  # mixed precision only where it pays and is supported
    init_seeds(opt.seed + 1 + RANK, deterministic=True)
    with torch_distributed_zero_first(LOCAL_RANK):  # rank 0 may generate the dataset first
        data_dict = check_dataset(data)
    train_path, val_path = data_dict["train"], data_dict["val"]
    nc = 1 if single_cls else int(data_dict["nc"])
    names = {0: "item"} if single_cls and len(data_dict["names"]) != 1 else dict(data_dict["names"])

    # model: resume > transfer from a checkpoint > from scratch
    ckpt = None
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights '{weights}' not found (nothing is downloaded: pass a local .pt, or "
                                    f"--weights '' with --cfg to train from scratch)")
        info = load_checkpoint(weights)
        ckpt = info["ckpt"]
        if resume and info["source"] != "native":
            raise ValueError(f"{weights} is a YOLOv5 checkpoint: only runs of this train.py can be resumed; "
                             f"fine-tune from it with --weights {weights} instead")
        model = Model(cfg or info["yaml"], ch=3, nc=nc, anchors=hyp.get("anchors"), verbose=main_rank).to(device)
        if resume:
            model.load_state_dict(ckpt["model"], strict=True)
            LOGGER.info(f"Resuming model and optimizer state from {weights}")
        else:
            exclude = ("anchors",) if (cfg or hyp.get("anchors")) else ()
            transfer_weights(model, info["state_dict"], exclude, source=str(weights))
    else:
        if not cfg:
            raise ValueError("pass --cfg model.yaml to train from scratch or --weights file.pt to fine-tune")
        model = Model(cfg, ch=3, nc=nc, anchors=hyp.get("anchors"), verbose=main_rank).to(device)
    model.float()
    freeze_layers(model, freeze)

    gs = max(int(model.stride.max()), 32)
    imgsz = check_img_size(opt.imgsz, gs, floor=gs * 2)
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: automatic batch sizing is not supported; pass a positive size")
    if batch_size % WORLD_SIZE:
        raise ValueError(f"--batch-size {batch_size} must be a multiple of the {WORLD_SIZE} DDP processes")

    # optimiser: nominal batch via accumulation, decay scaled to it
    nbs = opt.nbs
    accumulate = max(round(nbs / batch_size), 1)
    hyp["weight_decay"] *= batch_size * accumulate / nbs
    optimizer = smart_optimizer(model, opt.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    lf = lr_lambda(epochs, hyp["lrf"], opt.cos_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model) if main_rank else None

    start_epoch, best_fitness, best_epoch, last_opt_step, rng = 0, 0.0, 0, -1, None
    if resume:
        if not ckpt or ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
            raise ValueError(f"{weights} holds no training state to resume (a finished run's stripped "
                             f"checkpoint?); start a new run with --weights {weights}")
        start_epoch = int(ckpt["epoch"]) + 1
        if start_epoch >= epochs:
            raise ValueError(f"{weights}: training to {epochs} epochs is finished, nothing to resume; start a new "
                             f"run with --weights {weights}")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.last_epoch = start_epoch  # the restored lr is already this epoch's
        best_fitness = float(ckpt.get("best_fitness") or 0.0)
        best_epoch = int(ckpt.get("best_epoch", 0))
        last_opt_step = int(ckpt.get("last_opt_step", -1))
        if ema and ckpt.get("ema") is not None:
            ema.ema.load_state_dict(ckpt["ema"])
            ema.updates = int(ckpt.get("updates", 0))
        rng = ckpt.get("rng") if RANK in {-1, 0} else None  # other DDP ranks keep their own seeded streams
        LOGGER.info(f"Resuming training from {weights} at epoch {start_epoch} of {epochs}")
    del ckpt

    if opt.sync_bn and RANK != -1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
            LOGGER.info("Using SyncBatchNorm()")
        else:
            LOGGER.warning("WARNING ⚠️ --sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                           "using per-process BatchNorm")

    train_loader, dataset = create_dataloader(train_path, imgsz, batch_size // WORLD_SIZE, gs, single_cls, hyp=hyp,
                                              augment=True, cache=None if opt.cache == "val" else opt.cache,
                                              rect=opt.rect, rank=RANK, workers=workers,
                                              image_weights=opt.image_weights, quad=opt.quad,
                                              prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=nc)
    labels = np.concatenate(dataset.labels, 0) if len(dataset.labels) else np.zeros((0, 5))
    nb = len(train_loader)
    set_cpu_threads(device, train_loader.num_workers)
    val_loader = None
    if main_rank:
        val_loader = create_dataloader(val_path, imgsz, batch_size // WORLD_SIZE * 2, gs, single_cls, hyp=hyp,
                                       cache=None if noval else opt.cache, rect=True, rank=-1, workers=workers * 2,
                                       pad=0.5, prefix=colorstr("val: "), nc=nc)[0]
        if not resume:
            if plots:
                from utils.plots import plot_labels
                plot_labels(labels, names, save_dir)
            if not opt.noautoanchor:
                check_anchors(dataset, model=model, thr=hyp["anchor_t"], imgsz=imgsz)
            model.half().float()  # pre-reduce anchor precision, as the saved fp16 models will have it
        callbacks.run("on_pretrain_routine_end", labels, names)

    if RANK != -1:  # DDP broadcasts rank 0's weights and buffers (AutoAnchor result included) on wrapping
        model = nn.parallel.DistributedDataParallel(model, device_ids=[LOCAL_RANK] if device.type == "cuda" else None,
                                                    output_device=LOCAL_RANK if device.type == "cuda" else None)

    # loss gains scale with the number of levels, classes and image size (spec: Loss)
    m = de_parallel(model)
    nl = m.model[-1].nl
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = opt.label_smoothing
    m.nc, m.hyp, m.names = nc, hyp, names
    m.class_weights = labels_to_class_weights(dataset.labels, nc).to(device) * nc

    t0 = time.time()
    nw = warmup_iterations(hyp["warmup_epochs"], nb)
    maps = np.zeros(nc)
    results = (0, 0, 0, 0, 0, 0, 0)  # P, R, mAP50, mAP50-95, val box, obj, cls
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    stopper = EarlyStopping(patience=opt.patience)
    stopper.best_fitness, stopper.best_epoch = best_fitness, best_epoch
    compute_loss = ComputeLoss(m)
    csv = ResultsCSV(save_dir / "results.csv", start_epoch) if main_rank else None
    clock = PhaseClock()
    callbacks.run("on_train_start")
    LOGGER.info(f"Image sizes {imgsz} train, {imgsz} val\n"
                f"Using {train_loader.num_workers * WORLD_SIZE} dataloader workers\n"
                f"Logging results to {colorstr('bold', str(save_dir))}\n"
                f"Starting training for {epochs} epochs...")
    if rng is not None:
        set_rng_state(rng, train_loader)  # last: everything above may have drawn random numbers
    elif resume:
        init_seeds(opt.seed + 1 + RANK + start_epoch)

    status, epoch, saved_epoch, pbar = COMPLETED, start_epoch, start_epoch - 1, None
    try:
        with sigterm_as_interrupt():
            for epoch in range(start_epoch, epochs):
                callbacks.run("on_train_epoch_start")
                model.train()
                if opt.image_weights:
                    cw = m.class_weights.cpu().numpy() * (1 - maps) ** 2 / nc
                    iw = labels_to_image_weights(dataset.labels, nc, cw)
                    if iw.sum() > 0:
                        dataset.indices = np.array(random.choices(range(dataset.n), weights=iw, k=dataset.n))
                if RANK != -1:
                    train_loader.sampler.set_epoch(epoch)
                mloss = torch.zeros(3, device=device)
                pbar = enumerate(train_loader)
                if main_rank:
                    LOGGER.info(("\n" + "%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss",
                                                       "Instances", "Size"))
                    pbar = tqdm(pbar, total=nb, bar_format=TQDM_FORMAT)
                optimizer.zero_grad()
                clock.reset()
                for i, (imgs, targets, paths, _) in pbar:
                    clock.lap("data")
                    callbacks.run("on_train_batch_start")
                    ni = i + nb * epoch  # iterations since the start of training
                    imgs = imgs.to(device, non_blocking=True).float() / 255

                    if ni <= nw:
                        accumulate = warmup_step(optimizer, ni, nw, lf, epoch, hyp, nbs, batch_size)

                    if opt.multi_scale:
                        imgs = multi_scale(imgs, imgsz, gs)

                    will_step = ni - last_opt_step >= accumulate
                    sync = model.no_sync() if (RANK != -1 and not will_step) else contextlib.nullcontext()
                    with sync:
                        with torch.autocast(device.type, enabled=amp):
                            pred = model(imgs)
                            clock.lap("forward")
                            loss, loss_items = compute_loss(pred, targets.to(device))
                            if RANK != -1:
                                loss = loss * WORLD_SIZE  # DDP averages gradients; keep the total-batch scale
                            if opt.quad:
                                loss = loss * 4.0
                        if _any_rank(not bool(torch.isfinite(loss).all()), device):
                            status = NON_FINITE
                            bad = loss_items.tolist()
                            break
                        clock.lap("loss")
                        scaler.scale(loss).backward()
                        clock.lap("backward")

                    if will_step:
                        scaler.unscale_(optimizer)
                        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=GRAD_CLIP_NORM)
                        if not amp and not torch.isfinite(norm):  # AMP's scaler skips inf steps by design
                            status, bad = NON_FINITE, loss_items.tolist()
                            break
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad()
                        clock.lap("optimizer")
                        if ema:
                            ema.update(model)
                        clock.lap("ema")
                        last_opt_step = ni

                    if main_rank:
                        mloss = (mloss * i + loss_items) / (i + 1)
                        mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
                        pbar.set_description(("%11s" * 2 + "%11.4g" * 5) % (f"{epoch}/{epochs - 1}", mem, *mloss,
                                                                            targets.shape[0], imgs.shape[-1]))
                        callbacks.run("on_train_batch_end", model, ni, imgs, targets, paths, list(mloss))
                        if plots and ni < 3:
                            from utils.plots import plot_images
                            plot_images(imgs, targets, paths, save_dir / f"train_batch{ni}.jpg", names)
                    clock.lap("log")
                if status == NON_FINITE:
                    break

                lr = [x["lr"] for x in optimizer.param_groups]
                scheduler.step()
                stop = False
                if main_rank:
                    pbar.close()
                    callbacks.run("on_train_epoch_end", epoch=epoch)
                    ema.update_attr(model, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])
                    final_epoch = (epoch + 1 == epochs) or stopper.possible_stop
                    clock.lap("log")
                    if not noval or final_epoch:
                        results, maps, _ = validate.run(data_dict, batch_size=batch_size // WORLD_SIZE * 2,
                                                        imgsz=imgsz, half=amp, model=ema.ema, single_cls=single_cls,
                                                        dataloader=val_loader, save_dir=save_dir, plots=False,
                                                        callbacks=callbacks, compute_loss=compute_loss)
                    clock.lap("val")
                    fi = float(fitness(np.array(results).reshape(1, -1))[0])
                    stop = stopper(epoch=epoch, fitness=fi) or callbacks.stop_training
                    if fi > best_fitness:
                        best_fitness = fi
                    log_vals = [*mloss.tolist(), *results, *lr]
                    csv.write(epoch, log_vals)
                    callbacks.run("on_fit_epoch_end", log_vals, epoch, best_fitness, fi)

                    if not nosave or (final_epoch and not evolve) or stop:
                        ckpt = make_checkpoint(model, ema, optimizer, epoch, best_fitness, opt,
                                               extra={"best_epoch": stopper.best_epoch, "last_opt_step": last_opt_step,
                                                      "rng": rng_state(train_loader)})
                        with deferred_interrupts():
                            save_checkpoint(ckpt, last)
                            saved_epoch = epoch
                            if best_fitness == fi:
                                save_checkpoint(ckpt, best)
                            if opt.save_period > 0 and epoch % opt.save_period == 0:
                                save_checkpoint(ckpt, w / f"epoch{epoch}.pt")
                        del ckpt
                        callbacks.run("on_model_save", last, epoch, final_epoch, best_fitness, fi)
                    clock.lap("checkpoint")
                    LOGGER.info(f"Time per phase, {clock.summary()}")
                if RANK != -1:  # every rank must stop together
                    flag = [stop]
                    dist.broadcast_object_list(flag, 0)
                    stop = flag[0]
                if stop:
                    status = EARLY_STOPPED
                    break
    except KeyboardInterrupt:
        status = INTERRUPTED
        if pbar is not None and hasattr(pbar, "close"):
            pbar.close()

    opt.status = status
    if main_rank:
        resumable = last.is_file() and saved_epoch >= 0
        if status == INTERRUPTED:
            where = (f"{last} holds epoch {saved_epoch}; continue with: python train.py --resume {last}"
                     if resumable else "no epoch had completed, so there is nothing to resume")
            LOGGER.warning(f"\nTraining interrupted during epoch {epoch}: {where}")
        elif status == NON_FINITE:
            where = (f"the last good checkpoint is {last} (epoch {saved_epoch})" if resumable
                     else "no checkpoint had been saved yet")
            LOGGER.error(f"\nERROR ❌ non-finite loss at epoch {epoch} (box, obj, cls = "
                         f"{', '.join(f'{x:.4g}' for x in bad)}): training stopped; {where}. Lower --hyp lr0, "
                         f"check the labels, or resume from the checkpoint.")
        else:
            LOGGER.info(f"\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
            for f in (last, best):
                if f.exists():
                    strip_optimizer(f)  # finished: weights only, in fp16
            if best.exists() and not evolve:
                from models.experimental import attempt_load
                LOGGER.info(f"\nValidating {best}...")
                results, _, _ = validate.run(data_dict, batch_size=batch_size // WORLD_SIZE * 2, imgsz=imgsz,
                                             model=attempt_load(best, device), iou_thres=0.6, single_cls=single_cls,
                                             dataloader=val_loader, save_dir=save_dir, verbose=nc < 50, plots=plots,
                                             callbacks=callbacks, compute_loss=compute_loss)
            callbacks.run("on_train_end", last, best, epoch, results)
            LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}")
        if plots and (save_dir / "results.csv").exists():  # also after an interruption: the epochs so far
            from utils.plots import plot_results
            plot_results(save_dir / "results.csv")
    callbacks.run("teardown")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------------------------------------
# hyperparameter evolution (--evolve): mutate the best hyps so far, train, keep a table of outcomes
# ---------------------------------------------------------------------------------------------------------------
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


def evolve(opt, device: torch.device, callbacks: Callbacks) -> Path:
    """Run opt.evolve generations of short trainings; evolve.csv and hyp_evolve.yaml land in save_dir."""
    base = load_hyp(opt.hyp)
    keys = [k for k in base if isinstance(base[k], (int, float)) and k in EVOLVE_META]
    opt.noval, opt.nosave = True, True
    save_dir = Path(opt.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    table = save_dir / "evolve.csv"
    rng = np.random.default_rng(opt.seed)
    for gen in range(opt.evolve):
        history = np.loadtxt(table, delimiter=",", skiprows=1, ndmin=2) if table.exists() else np.zeros((0, 1))
        hyp = mutate_hyp(base, history[:, [0] + list(range(8, 8 + len(keys)))] if len(history) else history,
                         keys, rng)
        LOGGER.info(colorstr("evolve: ") + f"generation {gen + 1}/{opt.evolve}")
        r = train(hyp.copy(), opt, device, callbacks)
        fi = float(fitness(np.array(r).reshape(1, -1))[0])
        row = [fi, *r, *[hyp[k] for k in keys]]
        head = "" if table.exists() else ",".join(["fitness", "P", "R", "mAP50", "mAP50-95", "val/box_loss",
                                                   "val/obj_loss", "val/cls_loss", *keys]) + "\n"
        with open(table, "a") as f:
            f.write(head + ",".join(f"{x:.6g}" for x in row) + "\n")
    history = np.loadtxt(table, delimiter=",", skiprows=1, ndmin=2)
    bestrow = history[history[:, 0].argmax()]
    best = {**base, **{k: float(v) for k, v in zip(keys, bestrow[8:])}}
    out = save_dir / "hyp_evolve.yaml"
    out.write_text(f"# best of {len(history)} generations, fitness {bestrow[0]:.5f}\n" +
                   yaml.safe_dump(best, sort_keys=False))
    LOGGER.info(f"Hyperparameter evolution finished: {len(history)} generations, best fitness {bestrow[0]:.5f}; "
                f"use with --hyp {out}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def parse_opt(known: bool = False, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a YOLOv5-compatible detector")
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' trains from --cfg)")
    p.add_argument("--cfg", type=str, default="", help="model.yaml path (bare names are found under models/)")
    p.add_argument("--data", type=str, default="shapes.yaml", help="dataset.yaml path (bare names under data/)")
    p.add_argument("--hyp", type=str, default="hyp.scratch-low.yaml", help="hyperparameters (bare names under data/hyps/)")
    p.add_argument("--epochs", type=int, default=100, help="total training epochs")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all processes")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="evolve hyperparameters for x generations")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="image --cache ram/disk")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=list(OPTIMIZERS), default="SGD", help="optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode on CUDA")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per RANK in DDP mode)")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--quad", action="store_true", help="quad dataloader")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="Label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="Freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="Save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="Global training seed")
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size: gradients accumulate up to it")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="DDP argument of torch.distributed.launch; unused")
    return p.parse_known_args(argv)[0] if known else p.parse_args(argv)


def find_latest_run(search_dir: str | Path = ".") -> Path:
    """Newest last*.pt under search_dir (what a bare --resume continues)."""
    runs = glob.glob(f"{search_dir}/**/last*.pt", recursive=True)
    if not runs:
        raise FileNotFoundError(f"--resume: no last.pt found under {Path(search_dir).resolve()}; "
                                f"pass the checkpoint, e.g. --resume runs/train/exp/weights/last.pt")
    return Path(max(runs, key=os.path.getmtime))


def resume_opt(resume, project) -> argparse.Namespace:
    """The options of the run a checkpoint belongs to, pointed at that checkpoint and its run folder."""
    last = find_latest_run(project if Path(project).is_dir() else ".") if resume is True else Path(resume)
    if not last.is_file():
        raise FileNotFoundError(f"--resume checkpoint '{last}' not found")
    info = load_checkpoint(last)  # one-line CheckpointError for empty, corrupt or foreign files
    if info["source"] != "native":
        raise CheckpointError(f"--resume: '{last}' is a YOLOv5 checkpoint: only runs of this train.py can be "
                              f"resumed; fine-tune from it with --weights {last} instead")
    saved = info["ckpt"].get("opt")
    opt_yaml = last.parent.parent / "opt.yaml"
    if not saved and opt_yaml.is_file():
        saved = yaml.safe_load(opt_yaml.read_text())
    if not saved:
        raise CheckpointError(f"--resume: '{last}' carries no training options to resume with")
    defaults = vars(parse_opt(argv=[]))
    opt = argparse.Namespace(**{**defaults, **saved})
    opt.cfg, opt.weights, opt.resume = "", str(last), True
    opt.save_dir = str(last.resolve().parent.parent)
    opt.evolve = None
    return opt


def resolve_opt(opt: argparse.Namespace) -> argparse.Namespace:
    """Resolve file flags the YOLOv5 way (bare names under models/, data/, data/hyps/); a miss lists where it looked."""
    if opt.cfg:
        opt.cfg = str(check_yaml(opt.cfg))
    if isinstance(opt.data, (str, Path)):
        opt.data = str(check_yaml(opt.data))
    if isinstance(opt.hyp, (str, Path)):
        opt.hyp = str(check_yaml(opt.hyp))
    if opt.weights:
        opt.weights = str(opt.weights)
    if not opt.cfg and not opt.weights:
        raise ValueError("either --cfg (train from scratch) or --weights (fine-tune) must be specified")
    if opt.evolve and opt.resume:
        raise ValueError("--evolve and --resume cannot be combined")
    opt.freeze = opt.freeze if isinstance(opt.freeze, (list, tuple)) else [opt.freeze]
    return opt


def main(opt: argparse.Namespace, callbacks: Callbacks | None = None) -> argparse.Namespace:
    """Resolve options, set up DDP if launched by torchrun, train (or evolve). Returns opt with status/results."""
    callbacks = callbacks or Callbacks()
    if RANK not in {-1, 0}:
        LOGGER.setLevel(logging.WARNING)  # one copy of the log: rank 0's
    if opt.resume and not opt.evolve:
        opt = resume_opt(opt.resume, opt.project)
    else:
        opt = resolve_opt(opt)
        project = Path(opt.project)
        if opt.evolve:
            project = project.parent / "evolve" if project.name == "train" else project
            opt.exist_ok = opt.exist_ok or opt.resume
        if RANK in {-1, 0}:
            opt.save_dir = str(increment_path(project / opt.name, exist_ok=opt.exist_ok))
    if RANK in {-1, 0}:
        LOGGER.info(colorstr("train: ") + ", ".join(f"{k}={v}" for k, v in vars(opt).items() if k != "hyp"))

    device = select_device(opt.device, batch_size=opt.batch_size)
    if LOCAL_RANK != -1:
        if opt.image_weights:
            raise ValueError("--image-weights is not compatible with DDP training")
        if opt.evolve:
            raise ValueError("--evolve is not compatible with DDP training")
        if device.type == "cuda":
            torch.cuda.set_device(LOCAL_RANK)
            device = torch.device("cuda", LOCAL_RANK)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
            dist.init_process_group(backend=backend, timeout=timedelta(hours=3))
        if RANK == 0:
            LOGGER.info(f"DDP: {dist.get_backend()} backend, {WORLD_SIZE} processes")
        shared = [getattr(opt, "save_dir", None)]  # every rank writes into rank 0's run folder
        dist.broadcast_object_list(shared, 0)
        opt.save_dir = shared[0]

    threads = torch.get_num_threads()
    try:
        if opt.evolve:
            evolve(opt, device, callbacks)
            opt.status = COMPLETED
        else:
            opt.results = train(opt.hyp, opt, device, callbacks)
    finally:
        torch.set_num_threads(threads)  # train() sizes threads to its dataloader; callers get theirs back
        if LOCAL_RANK != -1 and dist.is_initialized():
            dist.destroy_process_group()
    return opt


def run(**kwargs) -> argparse.Namespace:
    """Train from Python with flag-named keywords, e.g. run(data='shapes.yaml', cfg='yolov5n.yaml', imgsz=128).
    A `callbacks` keyword (utils.callbacks.Callbacks) subscribes to training events. Returns the final opt."""
    callbacks = kwargs.pop("callbacks", None)
    opt = parse_opt(True, argv=[])
    for k, v in kwargs.items():
        if not hasattr(opt, k):
            raise ValueError(f"run(): unknown option '{k}'")
        setattr(opt, k, v)
    return main(opt, callbacks)


if __name__ == "__main__":
    try:
        result = main(parse_opt())
    except (ValueError, FileNotFoundError) as e:
        LOGGER.error(f"ERROR ❌ {e}")
        sys.exit(2)
    sys.exit({INTERRUPTED: 130, NON_FINITE: 1}.get(getattr(result, "status", COMPLETED), 0))
