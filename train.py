"""Train a YOLOv5-compatible detector on a YOLO-format dataset.

Usage:
    python train.py --data shapes.yaml --cfg yolov5n_MobileNetv2.yaml --imgsz 256 --epochs 30 --batch-size 32
    python train.py --data shapes.yaml --weights runs/train/exp/weights/best.pt     # fine-tune from a checkpoint
    python train.py --cfg yolov5n.yaml --teacher runs/train/exp/weights/best.pt    # distil (utils/training/distill)
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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import val as validate
from models.yolo import Model
from utils.backends import inference_copy
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    strip_optimizer,
    to_plain,
)
from utils.data.augmentations import multi_scale
from utils.data.dataloaders import check_dataset, create_dataloader
from utils.general import LOGGER, TQDM_BAR_FORMAT, check_img_size, check_yaml, colorstr, increment_path
from utils.metrics import fitness
from utils.torch_utils import (
    LOCAL_RANK,
    RANK,
    WORLD_SIZE,
    ModelEMA,
    de_parallel,
    select_device,
    torch_distributed_zero_first,
)
from utils.training import (
    REQUIRED_HYP,
    RESULT_KEYS,
    EarlyStopping,
    PhaseClock,
    ResultsCSV,
    any_rank,
    deferred_interrupts,
    freeze_layers,
    init_ddp,
    init_seeds,
    labels_to_class_weights,
    labels_to_image_weights,
    load_hyp,
    rank0_value,
    rng_state,
    set_cpu_threads,
    set_rng_state,
    sigterm_as_interrupt,
    sync_batchnorm,
    training_memory_format,
    transfer_weights,
    wrap_ddp,
)
from utils.training.autoanchor import check_anchors
from utils.training.callbacks import Callbacks
from utils.training.distill import DistillLoss, build_distill, load_teacher
from utils.training.evolve import EVOLVE_META, evolve, mutate_hyp  # EVOLVE_META, mutate_hyp: train.X
from utils.training.imagenet import imagenet_weights, transfer_imagenet
from utils.training.loss import ComputeLoss
from utils.training.optim import OPTIMIZERS, lr_lambda, smart_optimizer, warmup_iterations, warmup_step

TQDM_FORMAT = TQDM_BAR_FORMAT  # the one bar format of every script (utils.general)
GRAD_CLIP_NORM = 10.0

# run outcomes, in opt.status after train()
COMPLETED, EARLY_STOPPED, INTERRUPTED, NON_FINITE = "completed", "early stopped", "interrupted", "non-finite loss"


@dataclass
class Run:
    """What the phases of one training run share: setup() and build_*() fill it, restore() rewinds it to a
    checkpoint, train_one_epoch() and end_epoch() advance it, finalize() reports it."""

    opt: argparse.Namespace
    hyp: dict  # as the user gave it, plus --label-smoothing; never changed (ComputeLoss scales its own gains)
    device: torch.device
    callbacks: Callbacks
    save_dir: Path
    data: dict = field(default_factory=dict)
    nc: int = 0
    names: dict = field(default_factory=dict)
    model: Any = None  # wrapped in DistributedDataParallel under torchrun
    ema: ModelEMA | None = None
    optimizer: Any = None
    scheduler: Any = None
    lf: Any = None  # epoch -> lr factor
    scaler: Any = None
    accumulate: int = 1  # batches per optimizer step (nominal batch size / batch size)
    compute_loss: ComputeLoss | None = None
    distill: DistillLoss | None = None  # --teacher
    dloss: float = 0.0  # the epoch's mean distillation loss so far
    train_loader: Any = None
    dataset: Any = None
    val_loader: Any = None
    imgsz: int = 0
    gs: int = 32
    class_weights: torch.Tensor | None = None
    stopper: EarlyStopping | None = None  # also holds the best fitness and its epoch
    csv: ResultsCSV | None = None
    clock: PhaseClock = field(default_factory=PhaseClock)
    start_epoch: int = 0
    epoch: int = 0
    last_opt_step: int = -1
    saved_epoch: int = -1  # the epoch last.pt holds
    maps: np.ndarray | None = None
    results: tuple = (0, 0, 0, 0, 0, 0, 0)  # P, R, mAP50, mAP50-95, val box, obj, cls
    status: str = COMPLETED
    bad: list | None = None  # the loss items that were not finite
    rng: dict | None = None  # RNG state to restore once everything is built
    t0: float = field(default_factory=time.time)

    def __post_init__(self):
        self.main = RANK in {-1, 0}  # rank 0 (or no DDP) validates, logs and saves
        self.amp = self.device.type == "cuda"  # mixed precision only where it pays and is supported
        self.memory_format = training_memory_format(self.device)
        self.plots = not self.opt.evolve and not self.opt.noplots
        self.last, self.best = self.save_dir / "weights" / "last.pt", self.save_dir / "weights" / "best.pt"


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def train(hyp, opt, device: torch.device, callbacks: Callbacks | None = None):
    """Train per opt; returns the final (P, R, mAP50, mAP50-95, box, obj, cls) and sets opt.status."""
    callbacks = callbacks or Callbacks()
    callbacks.run("on_pretrain_routine_start")
    r = setup(hyp, opt, device, callbacks)
    info = build_model(r)
    teacher = load_teacher(opt.teacher, r.nc, device, r.names) if opt.teacher else None  # errors before the data
    build_optimizer(r)
    if opt.resume:
        restore(r, info)
    del info
    build_data(r)
    r.distill = build_distill(opt.teacher, r.model, teacher, r.hyp, r.imgsz)  # after AutoAnchor, as the loss
    start(r)
    try:
        with sigterm_as_interrupt():
            for epoch in range(r.start_epoch, opt.epochs):
                r.epoch = epoch
                mloss = train_one_epoch(r, epoch)
                if mloss is None or end_epoch(r, epoch, mloss):
                    break
    except KeyboardInterrupt:
        r.status = INTERRUPTED
    return finalize(r)


def setup(hyp, opt, device: torch.device, callbacks: Callbacks) -> Run:
    """Run folder, hyp.yaml/opt.yaml, seeds, dataset."""
    save_dir = Path(opt.save_dir)
    (save_dir if opt.evolve else save_dir / "weights").mkdir(parents=True, exist_ok=True)
    hyp = load_hyp(hyp)
    LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in hyp.items()))
    opt.hyp = hyp.copy()  # as given, for opt.yaml and resuming
    r = Run(opt, {**hyp, "label_smoothing": opt.label_smoothing}, device, callbacks, save_dir)
    if not opt.evolve and r.main:
        (save_dir / "hyp.yaml").write_text(yaml.safe_dump(to_plain(hyp), sort_keys=False))
        (save_dir / "opt.yaml").write_text(yaml.safe_dump(to_plain(vars(opt)), sort_keys=False))
    init_seeds(opt.seed + 1 + RANK, deterministic=True)
    with torch_distributed_zero_first(LOCAL_RANK):  # rank 0 may generate the dataset first
        r.data = check_dataset(opt.data)
    r.nc = 1 if opt.single_cls else int(r.data["nc"])
    r.names = {0: "item"} if opt.single_cls and len(r.data["names"]) != 1 else dict(r.data["names"])
    return r


def build_model(r: Run) -> dict | None:
    """The model from --cfg, or from --weights' own yaml; fine-tuning copies the matching weights. Returns the
    loaded --weights (load_checkpoint's dict) for restore(), or None."""
    opt, hyp = r.opt, r.hyp
    info = None
    imagenet = imagenet_weights(opt.weights, opt.cfg)  # an ImageNet backbone file (or 'imagenet'): mapped below
    if opt.weights and imagenet is None:
        if not Path(opt.weights).is_file():
            raise FileNotFoundError(f"weights '{opt.weights}' not found (nothing is downloaded: pass a local .pt, "
                                    f"or --weights '' with --cfg to train from scratch)")
        info = load_checkpoint(opt.weights)
    elif not opt.cfg:
        raise ValueError("pass --cfg model.yaml to train from scratch or --weights file.pt to fine-tune")
    model = Model(opt.cfg or info["yaml"], ch=3, nc=r.nc, anchors=hyp.get("anchors"), verbose=r.main)
    model = model.to(r.device, memory_format=r.memory_format)
    if imagenet is not None:
        transfer_imagenet(model, imagenet, opt.weights)
    elif info is not None and not opt.resume:
        exclude = ("anchors",) if (opt.cfg or hyp.get("anchors")) else ()
        transfer_weights(model, info["state_dict"], exclude, source=str(opt.weights))
    model.float()
    model.names = r.names  # the dataset's class names travel with the model into its checkpoints
    freeze_layers(model, opt.freeze)
    r.gs = max(int(model.stride.max()), 32)
    r.imgsz = check_img_size(opt.imgsz, r.gs, floor=r.gs * 2)
    r.model = model
    return info


def build_optimizer(r: Run) -> None:
    """Optimizer (nominal batch via accumulation, decay scaled to it), LR schedule, EMA, AMP scaler."""
    opt, hyp, bs = r.opt, r.hyp, r.opt.batch_size
    if bs < 1:
        raise ValueError(f"--batch-size {bs}: automatic batch sizing is not supported; pass a positive size")
    if bs % WORLD_SIZE:
        raise ValueError(f"--batch-size {bs} must be a multiple of the {WORLD_SIZE} DDP processes")
    r.accumulate = max(round(opt.nbs / bs), 1)
    decay = hyp["weight_decay"] * (bs * r.accumulate / opt.nbs)
    r.optimizer = smart_optimizer(r.model, opt.optimizer, hyp["lr0"], hyp["momentum"], decay)
    r.lf = lr_lambda(opt.epochs, hyp["lrf"], opt.cos_lr)
    r.scheduler = torch.optim.lr_scheduler.LambdaLR(r.optimizer, lr_lambda=r.lf)
    r.ema = ModelEMA(r.model) if r.main else None
    r.scaler = torch.amp.GradScaler("cuda", enabled=r.amp)
    r.stopper = EarlyStopping(patience=opt.patience)


def restore(r: Run, info: dict | None) -> None:
    """--resume: model, EMA, optimizer, schedule, best fitness, accumulation counter and RNG from the checkpoint."""
    weights, epochs = r.opt.weights, r.opt.epochs
    if info is None:
        raise ValueError("resuming needs the checkpoint: pass --resume path/to/last.pt")
    if info["source"] != "native":
        raise ValueError(f"{weights} is a YOLOv5 checkpoint: only runs of this train.py can be resumed; "
                         f"fine-tune from it with --weights {weights} instead")
    ckpt = info["ckpt"]
    if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
        raise ValueError(f"{weights} holds no training state to resume (a finished run's stripped "
                         f"checkpoint?); start a new run with --weights {weights}")
    r.start_epoch = int(ckpt["epoch"]) + 1
    if r.start_epoch >= epochs:
        raise ValueError(f"{weights}: training to {epochs} epochs is finished, nothing to resume; start a new "
                         f"run with --weights {weights}")
    r.model.load_state_dict(ckpt["model"], strict=True)
    LOGGER.info(f"Resuming model and optimizer state from {weights}")
    r.optimizer.load_state_dict(ckpt["optimizer"])
    r.scheduler.last_epoch = r.start_epoch  # the restored lr is already this epoch's
    r.stopper.best_fitness = float(ckpt.get("best_fitness") or 0.0)
    r.stopper.best_epoch = int(ckpt.get("best_epoch", 0))
    r.last_opt_step = int(ckpt.get("last_opt_step", -1))
    r.saved_epoch = r.start_epoch - 1
    if r.ema:
        r.ema.ema.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
        r.ema.updates = int(ckpt.get("updates", 0)) if ckpt.get("ema") is not None else 0
    r.rng = ckpt.get("rng") if r.main else None  # other DDP ranks keep their own seeded streams
    LOGGER.info(f"Resuming training from {weights} at epoch {r.start_epoch} of {epochs}")


def find_latest_run(search_dir: str | Path = ".") -> Path:
    """Newest last*.pt under search_dir (what a bare --resume continues)."""
    runs = glob.glob(f"{search_dir}/**/last*.pt", recursive=True)
    if not runs:
        raise FileNotFoundError(f"--resume: no last.pt found under {Path(search_dir).resolve()}; "
                                f"pass the checkpoint, e.g. --resume runs/train/exp/weights/last.pt")
    return Path(max(runs, key=os.path.getmtime))


def resume_opt(resume, project) -> argparse.Namespace:
    """--resume (True: the newest last.pt under project; or a path) -> the options of the run the checkpoint belongs
    to, pointed at that checkpoint. The run folder is where the file lies (<run>/weights/last.pt, else the file's
    folder), never a path stored inside it: a checkpoint from someone else must not choose where this run writes.
    train() -> restore() then rewinds the training state to it."""
    last = find_latest_run(project if Path(project).is_dir() else ".") if resume is True else Path(resume)
    if not last.is_file():
        raise FileNotFoundError(f"--resume checkpoint '{last}' not found")
    info = load_checkpoint(last)  # one-line CheckpointError for empty, corrupt or foreign files
    if info["source"] != "native":
        raise CheckpointError(f"--resume: '{last}' is a YOLOv5 checkpoint: only runs of this train.py can be "
                              f"resumed; fine-tune from it with --weights {last} instead")
    last = last.resolve()
    run_dir = last.parent.parent if last.parent.name == "weights" else last.parent
    saved = info["ckpt"].get("opt")
    if not saved and (run_dir / "opt.yaml").is_file():
        saved = yaml.safe_load((run_dir / "opt.yaml").read_text())
    if not saved or not isinstance(saved, dict):
        raise CheckpointError(f"--resume: '{last}' carries no training options to resume with")
    defaults = vars(parse_opt(argv=[]))
    opt = argparse.Namespace(**{**defaults, **{k: v for k, v in saved.items() if k in defaults}})  # flags only
    opt.cfg, opt.weights, opt.resume, opt.evolve = "", str(last), True, None
    opt.save_dir = str(run_dir)
    return opt


def build_data(r: Run) -> None:
    """SyncBN and DDP wrapping, dataloaders, label plot, AutoAnchor, class weights and the loss."""
    opt, hyp, device, bs = r.opt, r.hyp, r.device, r.opt.batch_size // WORLD_SIZE
    if opt.sync_bn and RANK != -1:
        r.model = sync_batchnorm(r.model, device)
    r.train_loader, r.dataset = create_dataloader(
        r.data["train"], r.imgsz, bs, r.gs, opt.single_cls, hyp=hyp, augment=True,
        cache=None if opt.cache == "val" else opt.cache, rect=opt.rect, rank=RANK, workers=opt.workers,
        image_weights=opt.image_weights, quad=opt.quad, prefix=colorstr("train: "), shuffle=True, seed=opt.seed,
        nc=r.nc)
    labels = np.concatenate(r.dataset.labels, 0) if len(r.dataset.labels) else np.zeros((0, 5))
    set_cpu_threads(device, r.train_loader.num_workers)
    if r.main:
        r.val_loader = create_dataloader(r.data["val"], r.imgsz, bs * 2, r.gs, opt.single_cls, hyp=hyp,
                                         cache=None if opt.noval else opt.cache, rect=True, rank=-1,
                                         workers=opt.workers * 2, pad=0.5, prefix=colorstr("val: "), nc=r.nc)[0]
        if not opt.resume:
            if r.plots:
                from utils.plots import plot_labels
                plot_labels(labels, r.names, r.save_dir)
            if not opt.noautoanchor:
                check_anchors(r.dataset, model=r.model, thr=hyp["anchor_t"], imgsz=r.imgsz)
            r.model.half().float()  # pre-reduce anchor precision, as the saved fp16 models will have it
        r.callbacks.run("on_pretrain_routine_end", labels, r.names)
    if RANK != -1:  # DDP broadcasts rank 0's weights and buffers (AutoAnchor result included) on wrapping
        r.model = wrap_ddp(r.model, device)
    r.class_weights = labels_to_class_weights(r.dataset.labels, r.nc).to(device) * r.nc
    r.compute_loss = ComputeLoss(de_parallel(r.model), hyp=hyp, imgsz=r.imgsz)


def start(r: Run) -> None:
    """results.csv, the start log line and the RNG streams, last: everything before may have drawn from them."""
    r.maps = np.zeros(r.nc)
    keys = (*RESULT_KEYS, "train/distill_loss") if r.distill else RESULT_KEYS
    r.csv = ResultsCSV(r.save_dir / "results.csv", r.start_epoch, keys) if r.main else None
    r.callbacks.run("on_train_start")
    LOGGER.info(f"Image sizes {r.imgsz} train, {r.imgsz} val\n"
                f"Using {r.train_loader.num_workers * WORLD_SIZE} dataloader workers\n"
                f"Logging results to {colorstr('bold', str(r.save_dir))}\n"
                f"Starting training for {r.opt.epochs} epochs...")
    if r.rng is not None:
        set_rng_state(r.rng, r.train_loader)
    elif r.opt.resume:
        init_seeds(r.opt.seed + 1 + RANK + r.start_epoch)
    r.epoch, r.t0 = r.start_epoch, time.time()


def train_one_epoch(r: Run, epoch: int) -> torch.Tensor | None:
    """One pass over the training data; returns the mean [box, obj, cls] losses, or None on a non-finite loss."""
    opt, model, device, optimizer, clock = r.opt, r.model, r.device, r.optimizer, r.clock
    r.callbacks.run("on_train_epoch_start")
    model.train()
    if opt.image_weights:
        cw = r.class_weights.cpu().numpy() * (1 - r.maps) ** 2 / r.nc
        iw = labels_to_image_weights(r.dataset.labels, r.nc, cw)
        if iw.sum() > 0:
            r.dataset.indices = np.array(random.choices(range(r.dataset.n), weights=iw, k=r.dataset.n))
    if hasattr(r.train_loader.sampler, "set_epoch"):  # the epoch decides the order and every augmentation
        r.train_loader.sampler.set_epoch(epoch)
    nb = len(r.train_loader)
    nw = warmup_iterations(r.hyp["warmup_epochs"], nb)
    mloss = torch.zeros(3, device=device)
    pbar = enumerate(r.train_loader)
    if r.main:
        LOGGER.info(("\n" + "%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances",
                                           "Size"))
        pbar = tqdm(pbar, total=nb, bar_format=TQDM_FORMAT)
    optimizer.zero_grad()
    clock.reset()
    try:
        for i, (imgs, targets, paths, _) in pbar:
            clock.lap("data")
            r.callbacks.run("on_train_batch_start")
            ni = i + nb * epoch  # iterations since the start of training
            imgs = imgs.to(device, non_blocking=True).contiguous(memory_format=r.memory_format).float() / 255
            if ni <= nw:
                r.accumulate = warmup_step(optimizer, ni, nw, r.lf, epoch, r.hyp, opt.nbs, opt.batch_size)
            if opt.multi_scale:
                imgs = multi_scale(imgs, r.imgsz, r.gs)

            will_step = ni - r.last_opt_step >= r.accumulate
            sync = model.no_sync() if (RANK != -1 and not will_step) else contextlib.nullcontext()
            with sync:
                with torch.autocast(device.type, enabled=r.amp):
                    pred = model(imgs)
                    clock.lap("forward")
                    if r.distill:
                        teacher_raw = r.distill.teacher_outputs(imgs)  # the same preprocessed batch
                        clock.lap("teacher")
                    loss, loss_items = r.compute_loss(pred, targets.to(device))
                    if r.distill:
                        dloss, ditem = r.distill(pred, teacher_raw)
                        loss = loss + dloss
                        r.dloss = (r.dloss * i + float(ditem)) / (i + 1)
                    if RANK != -1:
                        loss = loss * WORLD_SIZE  # DDP averages gradients; keep the total-batch scale
                    if opt.quad:
                        loss = loss * 4.0
                if any_rank(not bool(torch.isfinite(loss).all()), device):
                    r.status, r.bad = NON_FINITE, loss_items.tolist()
                    return None
                clock.lap("loss")
                r.scaler.scale(loss).backward()
                clock.lap("backward")
            if will_step:
                if not optimizer_step(r):
                    r.status, r.bad = NON_FINITE, loss_items.tolist()
                    return None
                r.last_opt_step = ni

            if r.main:
                mloss = (mloss * i + loss_items) / (i + 1)
                mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
                pbar.set_description(("%11s" * 2 + "%11.4g" * 5) % (f"{epoch}/{opt.epochs - 1}", mem, *mloss,
                                                                    targets.shape[0], imgs.shape[-1]))
                r.callbacks.run("on_train_batch_end", model, ni, imgs, targets, paths, list(mloss))
                if r.plots and ni < 3:
                    from utils.plots import plot_images
                    plot_images(imgs, targets, paths, r.save_dir / f"train_batch{ni}.jpg", r.names)
            clock.lap("log")
    finally:
        if r.main:
            pbar.close()
    return mloss


def optimizer_step(r: Run) -> bool:
    """Clip, step, zero and update the EMA; False (nothing stepped) if the gradient norm is not finite."""
    r.scaler.unscale_(r.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(r.model.parameters(), max_norm=GRAD_CLIP_NORM)
    if not r.amp and not torch.isfinite(norm):  # AMP's scaler skips inf steps by design
        return False
    r.scaler.step(r.optimizer)
    r.scaler.update()
    r.optimizer.zero_grad()
    r.clock.lap("optimizer")
    if r.ema:
        r.ema.update(r.model)
    r.clock.lap("ema")
    return True


def end_epoch(r: Run, epoch: int, mloss: torch.Tensor) -> bool:
    """Step the schedule; rank 0 validates, logs and saves. Returns whether training stops now (on every rank)."""
    lr = [x["lr"] for x in r.optimizer.param_groups]
    r.scheduler.step()
    stop = False
    if r.main:
        r.callbacks.run("on_train_epoch_end", epoch=epoch)
        r.ema.update_attr(r.model, include=["yaml", "names", "stride"])
        final_epoch = (epoch + 1 == r.opt.epochs) or r.stopper.possible_stop
        r.clock.lap("log")
        if not r.opt.noval or final_epoch:
            r.results, r.maps, _ = validate_with(r, inference_copy(r.ema.ema), half=r.amp, plots=False)
        r.clock.lap("val")
        fi = float(fitness(np.array(r.results).reshape(1, -1))[0])
        stop = r.stopper(epoch=epoch, fitness=fi) or r.callbacks.stop_training
        log_vals = [*mloss.tolist(), *r.results, *lr] + ([r.dloss] if r.distill else [])
        r.csv.write(epoch, log_vals)
        r.callbacks.run("on_fit_epoch_end", log_vals, epoch, r.stopper.best_fitness, fi)
        if not r.opt.nosave or (final_epoch and not r.opt.evolve) or stop:
            save_epoch(r, epoch, fi)
            r.callbacks.run("on_model_save", r.last, epoch, final_epoch, r.stopper.best_fitness, fi)
        r.clock.lap("checkpoint")
        LOGGER.info(f"Time per phase, {r.clock.summary()}")
    if rank0_value(stop):
        r.status = EARLY_STOPPED
        return True
    return False


def validate_with(r: Run, model: nn.Module, **kw):
    """val.run on this run's validation loader and loss: (P, R, mAP50, mAP50-95, box, obj, cls), maps, times."""
    return validate.run(r.data, batch_size=r.opt.batch_size // WORLD_SIZE * 2, imgsz=r.imgsz, model=model,
                        single_cls=r.opt.single_cls, dataloader=r.val_loader, save_dir=r.save_dir,
                        callbacks=r.callbacks, compute_loss=r.compute_loss, **kw)


def save_epoch(r: Run, epoch: int, fi: float) -> None:
    """last.pt (and best.pt when fi is the best so far, epoch{N}.pt every --save-period), written whole."""
    ckpt = make_checkpoint(r.model, r.ema, r.optimizer, epoch, r.stopper.best_fitness, r.opt, hyp=r.hyp,
                           extra={"best_epoch": r.stopper.best_epoch, "last_opt_step": r.last_opt_step,
                                  "rng": rng_state(r.train_loader)})
    with deferred_interrupts():
        save_checkpoint(ckpt, r.last)
        r.saved_epoch = epoch
        if r.stopper.best_fitness == fi:
            save_checkpoint(ckpt, r.best)
        if r.opt.save_period > 0 and epoch % r.opt.save_period == 0:
            save_checkpoint(ckpt, r.last.parent / f"epoch{epoch}.pt")


def finalize(r: Run):
    """Report how the run ended; a finished run strips its checkpoints and validates best.pt. Returns the results."""
    opt, last, best = r.opt, r.last, r.best
    opt.status = r.status
    if r.main:
        resumable = last.is_file() and r.saved_epoch >= 0
        if r.status == INTERRUPTED:
            where = (f"{last} holds epoch {r.saved_epoch}; continue with: python train.py --resume {last}"
                     if resumable else "no epoch had completed, so there is nothing to resume")
            LOGGER.warning(f"\nTraining interrupted during epoch {r.epoch}: {where}")
        elif r.status == NON_FINITE:
            where = (f"the last good checkpoint is {last} (epoch {r.saved_epoch})" if resumable
                     else "no checkpoint had been saved yet")
            LOGGER.error(f"\nERROR ❌ non-finite loss at epoch {r.epoch} (box, obj, cls = "
                         f"{', '.join(f'{x:.4g}' for x in r.bad)}): training stopped; {where}. Lower --hyp lr0, "
                         f"check the labels, or resume from the checkpoint.")
        else:
            LOGGER.info(f"\n{r.epoch - r.start_epoch + 1} epochs completed in {(time.time() - r.t0) / 3600:.3f} "
                        f"hours.")
            for f in (last, best):
                if f.exists():
                    strip_optimizer(f)  # finished: weights only, in fp16
            if best.exists() and not opt.evolve:
                from models.experimental import attempt_load
                LOGGER.info(f"\nValidating {best}...")
                r.results, _, _ = validate_with(r, attempt_load(best, r.device), iou_thres=0.6, verbose=r.nc < 50,
                                                plots=r.plots)
            r.callbacks.run("on_train_end", last, best, r.epoch, r.results)
            LOGGER.info(f"Results saved to {colorstr('bold', str(r.save_dir))}")
        if r.plots and (r.save_dir / "results.csv").exists():  # also after an interruption: the epochs so far
            from utils.plots import plot_results
            plot_results(r.save_dir / "results.csv")
    r.callbacks.run("teardown")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return r.results


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def parse_opt(known: bool = False, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a YOLOv5-compatible detector")
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' trains from --cfg)")
    p.add_argument("--cfg", type=str, default="", help="model.yaml path (bare names are found under models/)")
    p.add_argument("--teacher", type=str, default="", help="trained checkpoint to distil from (same classes)")
    p.add_argument("--data", type=str, default="shapes.yaml", help="dataset.yaml path (bare names under data/)")
    p.add_argument("--hyp", type=str, default="hyp.scratch-low.yaml",
                   help="hyperparameters (bare names under data/hyps/)")
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
    p.add_argument("--cache", type=str, nargs="?", const="ram", default="auto",
                   help="image --cache ram/disk/off (default auto: ram when the resized images fit in 1 GiB and "
                        "10%% of free memory)")
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
    if opt.teacher and not Path(opt.teacher).is_file():  # before the dataset is read or generated
        raise FileNotFoundError(f"--teacher '{opt.teacher}' not found")
    if not opt.cfg and not opt.weights:
        raise ValueError("either --cfg (train from scratch) or --weights (fine-tune) must be specified")
    if opt.evolve and opt.resume:
        raise ValueError("--evolve and --resume cannot be combined")
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
        device = init_ddp(device)
        opt.save_dir = rank0_value(getattr(opt, "save_dir", None))  # every rank writes into rank 0's run folder

    threads = torch.get_num_threads()
    try:
        if opt.evolve:
            evolve(opt, device, callbacks, train)
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
    A `callbacks` keyword (utils.training.callbacks.Callbacks) subscribes to training events. Returns the final opt."""
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
