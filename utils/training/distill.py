"""Knowledge distillation (Hinton et al., 2015) for YOLOv5 heads: train.py --teacher best.pt.

A trained teacher (a checkpoint of this project or a YOLOv5 one, same classes) runs fused, in eval mode and under
torch.inference_mode on the batch the student sees. The student's raw Detect outputs are pulled toward the
teacher's on every output level the two share, on top of the unchanged YOLOv5 loss (utils.training.loss):

- objectness: binary KL between the tempered sigmoids sigmoid(t/T) and sigmoid(s/T), times T^2 (YOLO heads are
  multi-label sigmoids, so each logit is its own two-class distribution), on every cell weighted by the teacher's
  confidence sigmoid(t_obj): a cell the teacher calls background adds about nothing (the labels' loss covers it).
- classes: the same tempered KL, averaged over the classes, on the cells where the teacher's confidence is at least
  distill_conf, weighted by that confidence (single-class models have none, as in the YOLOv5 loss).
- boxes: 1 - DIoU between the student's and the teacher's decoded boxes on those same cells. Each side decodes with
  its own anchors (in grid units of the level), so the term holds when AutoAnchor gave them different anchors.

Levels are matched by stride and anchor count: only a level with the same stride and number of anchors in both
models is distilled (the cells then coincide); others are skipped with a log line, and a teacher that shares no
level with the student is an error. yolov5s -> yolov5n and the lightweight nano yamls share strides 8/16/32 with
3 anchors each, so all three levels are used.

The terms are scaled like their YOLOv5 counterparts (utils.training.loss.scaled_gains: box, obj with the per-level
balance, cls) so that hyp `distill` (default 1.0) weighs the teacher against the labels on an equal footing.
Hyp keys (all optional; old hyp files load unchanged): distill (weight, 0 turns the loss off), distill_t
(temperature, default 2.0), distill_conf (the teacher confidence from which class and box terms count, 0.25,
detect.py's default confidence threshold).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.boxes import bbox_iou
from utils.checkpoint import CheckpointError
from utils.general import LOGGER
from utils.torch_utils import de_parallel
from utils.training.loss import _BALANCE, _BALANCE_DEFAULT, scaled_gains

DEFAULTS = {"distill": 1.0, "distill_t": 2.0, "distill_conf": 0.25}


def distill_hyp(hyp: dict) -> tuple[float, float, float]:
    """(weight, temperature, confidence threshold) from hyp, with DEFAULTS for absent keys; bad values are an error."""
    try:
        w, t, c = (float(hyp.get(k, v)) for k, v in DEFAULTS.items())
    except (TypeError, ValueError):
        raise ValueError(f"hyp distill/distill_t/distill_conf must be numbers, got "
                         f"{[hyp.get(k) for k in DEFAULTS]}") from None
    if not (0 <= w < math.inf and 0 < t < math.inf and 0 <= c < 1):  # NaN fails every comparison
        raise ValueError(f"hyp distill={w} distill_t={t} distill_conf={c}: need distill >= 0, distill_t > 0 and "
                         f"0 <= distill_conf < 1")
    return w, t, c


def load_teacher(weights: str | Path, nc: int, device: torch.device, names: dict | None = None) -> nn.Module:
    """The teacher as a fused, eval-mode, gradient-free float32 model on device, read by the safe checkpoint loader.
    A missing file, an unreadable one, a segmentation model or a class count other than nc is a one-line error."""
    from models.blocks.heads import Segment
    from models.experimental import attempt_load
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--teacher '{weights}' not found (pass a trained checkpoint, e.g. "
                                f"runs/train/exp/weights/best.pt)")
    try:
        model = attempt_load(weights, device)  # safe unpickling, rebuilt from its yaml, fused, eval
    except CheckpointError as e:
        raise CheckpointError(f"--teacher: {e}") from None
    head = model.model[-1]
    if isinstance(head, Segment):
        raise ValueError(f"--teacher '{weights}' is a segmentation model; distillation needs a detection model")
    if head.nc != nc:
        raise ValueError(f"--teacher '{weights}' predicts {head.nc} classes but the data has {nc}: the teacher "
                         f"must be trained on the same classes")
    tnames = getattr(model, "names", None)
    if names and tnames and {int(k): str(v) for k, v in dict(tnames).items()} != dict(names):
        LOGGER.warning(f"WARNING ⚠️ --teacher '{weights}': class names differ from the data's "
                       f"({list(dict(tnames).values())[:5]} vs {list(dict(names).values())[:5]}); distilling by index")
    model.requires_grad_(False)
    head.raw_export = True  # the raw levels are all distillation reads: skip the box decoding
    if device.type == "cpu":  # the student's batches are channels_last on CPU: the teacher runs the fast kernels too
        model = model.to(memory_format=torch.channels_last)
    return model.eval()  # again: the convs fusing made are new modules, in training mode


def match_levels(student_head: nn.Module, teacher_head: nn.Module) -> list[tuple[int, int]]:
    """(student level, teacher level) pairs with equal stride and anchor count, in student level order."""
    t_levels = {float(s): j for j, s in enumerate(teacher_head.stride)}
    pairs = []
    for i, s in enumerate(student_head.stride):
        j = t_levels.get(float(s))
        if j is not None and teacher_head.na == student_head.na:
            pairs.append((i, j))
    return pairs


def tempered_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Element-wise KL(sigmoid(t/T) || sigmoid(s/T)) * T^2 of logits: zero where s == t, positive elsewhere.
    As BCE(s/T, target) - BCE(t/T, target) with target = sigmoid(t/T) it has BCE's gradient, T * (sigmoid(s/T) -
    target), which tends to (s - t) / 4 for large T: the T^2 keeps the gradient's size across temperatures."""
    target = torch.sigmoid(t / temperature)
    kl = (F.binary_cross_entropy_with_logits(s / temperature, target, reduction="none")
          - F.binary_cross_entropy_with_logits(t / temperature, target, reduction="none"))
    return kl * temperature ** 2


def decode_cells(xywh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Raw (n, 4) box outputs -> xywh in grid units relative to their cell, with the YOLOv5 bounded decode (as in
    the loss): both models' boxes of one cell share the cell offset, which IoU does not see."""
    y = xywh.sigmoid() * 2
    return torch.cat((y[:, :2] - 0.5, (y[:, 2:] ** 2 * anchors).clamp(min=1e-6)), 1)


def distill_terms(student: list[torch.Tensor], teacher: list[torch.Tensor], anchors_s: list[torch.Tensor],
                  anchors_t: list[torch.Tensor], temperature: float, conf: float,
                  balance: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unweighted (box, obj, cls) distillation terms summed over matched levels of raw outputs (bs, na, ny, nx,
    5 + nc); anchors per level (na, 2) in grid units; balance: per-level objectness weights (default 1)."""
    dev = student[0].device
    lbox, lobj, lcls = (torch.zeros((), device=dev) for _ in range(3))
    for k, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise ValueError(f"distillation: student level {k} output {tuple(s.shape)} does not match the "
                             f"teacher's {tuple(t.shape)}")
        s, t = s.float(), t.float()
        w = t[..., 4].sigmoid()  # the teacher's confidence per cell
        lobj = lobj + (w * tempered_kl(s[..., 4], t[..., 4], temperature)).mean() * (balance[k] if balance else 1.0)
        m = w >= conf
        if not m.any():
            continue
        wm = w[m]
        norm = wm.sum().clamp(min=1.0)  # a weighted mean, except that a few faint cells are not blown up to one
        bs, na, ny, nx = m.shape
        a_s = anchors_s[k].to(dev).view(1, na, 1, 1, 2).expand(bs, na, ny, nx, 2)[m]
        a_t = anchors_t[k].to(dev).view(1, na, 1, 1, 2).expand(bs, na, ny, nx, 2)[m]
        sm, tm = s[m], t[m]
        # DIoU, not the labels' CIoU: for identical boxes (a student as good as its teacher) CIoU's aspect weight is
        # 0 / 0 in float32. eps 0: decode_cells keeps every side > 0, and an eps would dominate tiny boxes' IoU.
        iou = bbox_iou(decode_cells(sm[:, :4], a_s), decode_cells(tm[:, :4], a_t), DIoU=True, eps=0).squeeze(-1)
        lbox = lbox + (wm * (1.0 - iou)).sum() / norm
        if s.shape[-1] > 6:  # more than one class: a single class is all objectness
            lcls = lcls + (wm * tempered_kl(sm[:, 5:], tm[:, 5:], temperature).mean(-1)).sum() / norm
    return lbox, lobj, lcls


class DistillLoss:
    """distill(student_raw_outputs, teacher_outputs) -> (loss * batch size with shape (1,), detached loss (1,)),
    to add to ComputeLoss's; teacher_outputs(imgs) runs the teacher. See the module docstring for the terms."""

    def __init__(self, student: nn.Module, teacher: nn.Module, hyp: dict, imgsz: int, source: str = "teacher"):
        sh, th = de_parallel(student).model[-1], teacher.model[-1]
        self.weight, self.temperature, self.conf = distill_hyp(hyp)
        self.pairs = match_levels(sh, th)
        if not self.pairs:
            raise ValueError(f"--teacher {source}: no output level shares stride and anchor count with the student "
                             f"(student strides {sh.stride.tolist()} x {sh.na} anchors, teacher "
                             f"{th.stride.tolist()} x {th.na})")
        skipped = sorted(set(range(sh.nl)) - {i for i, _ in self.pairs})
        if skipped:
            LOGGER.info(f"distillation: student levels {skipped} have no teacher level of the same stride and "
                        f"anchor count; they learn from the labels only")
        self.teacher = teacher
        self.anchors_s = [sh.anchors[i].detach().clone() for i, _ in self.pairs]  # after AutoAnchor
        self.anchors_t = [th.anchors[j].detach().clone() for _, j in self.pairs]
        balance = _BALANCE.get(sh.nl, _BALANCE_DEFAULT)
        self.balance = [balance[i] for i, _ in self.pairs]
        self.gains = scaled_gains(hyp, sh.nc, sh.nl, imgsz)
        n_t = sum(p.numel() for p in teacher.parameters())
        LOGGER.info(f"distillation: teacher {source} ({n_t / 1e6:.2f}M params, fused, eval), levels "
                    f"{[float(sh.stride[i]) for i, _ in self.pairs]}, distill={self.weight} "
                    f"distill_t={self.temperature} distill_conf={self.conf}")

    def teacher_outputs(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's raw outputs on the matched levels, as ordinary tensors (inference-mode tensors cannot be
        saved for the student's backward pass, so they are cloned outside it)."""
        with torch.inference_mode():
            out = self.teacher(imgs)  # a list of levels (load_teacher sets raw_export), else (decoded, levels)
            raw = out if isinstance(out, list) else out[1]
            raw = [raw[j] for _, j in self.pairs]
        return [r.clone() for r in raw]

    def __call__(self, preds: list[torch.Tensor], teacher_raw: list[torch.Tensor]) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
        student = [preds[i] for i, _ in self.pairs]
        lbox, lobj, lcls = distill_terms(student, teacher_raw, self.anchors_s, self.anchors_t, self.temperature,
                                         self.conf, self.balance)
        g = self.gains
        total = self.weight * (g["box"] * lbox + g["obj"] * lobj + g["cls"] * lcls)
        return (total * preds[0].shape[0]).view(1), total.detach().view(1)


def build_distill(weights: str | Path, student: nn.Module, teacher: nn.Module | None, hyp: dict,
                  imgsz: int) -> DistillLoss | None:
    """DistillLoss for train.py, or None without a teacher or with hyp distill: 0."""
    if teacher is None or distill_hyp(hyp)[0] == 0:
        return None
    return DistillLoss(student, teacher, hyp, imgsz, source=str(weights))
