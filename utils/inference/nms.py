"""Non-maximum suppression over decoded YOLO predictions.

On CPU (float32/float64, the val.py and detect.py case) one compiled pass per batch does everything:
utils/inference/nms_kernel.py, with torchvision's arithmetic, so the same boxes. Elsewhere (CUDA, fp16,
auto-labelling, no numba) each image takes greedy NMS through torchvision on a growing window of its
top-scoring candidates only.

Why the window is exact: greedy NMS visits candidates in score order and a candidate's fate depends only on the
survivors before it, so the first `max_det` survivors of any prefix of that order are the first `max_det`
survivors of the whole list. A prefix that already yields `max_det` survivors ends the search; otherwise the
next prefix only has to be checked against the survivors so far (suppressed boxes never suppress anything).
The order is score-descending with ties kept in candidate order (a stable sort), and every window includes all
candidates tied with its last score, so a window is always a prefix of that one order.
"""
from __future__ import annotations

import functools
import logging

import torch
import torchvision

from utils.boxes import xywh2xyxy

LOGGER = logging.getLogger(__name__)

MAX_WH = 7680  # class offset in pixels: boxes of different classes never overlap after the shift
WINDOW = 2  # first window = WINDOW * max_det candidates (measured best at conf 0.001, benchmarks/bench_nms.py)
COMPILED = True  # use the compiled kernel where it applies (tests switch it off to check the torchvision path)


def _check_thresholds(conf_thres: float, iou_thres: float) -> None:
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} must be in [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} must be in [0, 1]")


def _candidates(prediction: torch.Tensor, conf_thres: float, labels, nc: int, nm: int):
    """Rows above the objectness prefilter for the whole batch, (image index, rows), grouped by image in anchor
    order; ground-truth rows for auto-labelling go after their image's predictions."""
    bi, ai = (prediction[..., 4] > conf_thres).nonzero(as_tuple=True)
    x = prediction[bi, ai]
    if labels and any(len(lb) for lb in labels):
        extra_i, extra_x = [bi], [x]
        for xi, lb in enumerate(labels):
            if len(lb):
                v = torch.zeros((len(lb), nc + nm + 5), device=x.device, dtype=x.dtype)
                v[:, :4] = lb[:, 1:5]
                v[:, 4] = 1.0
                v[torch.arange(len(lb)), lb[:, 0].long() + 5] = 1.0
                extra_i.append(torch.full((len(lb),), xi, device=x.device, dtype=bi.dtype))
                extra_x.append(v)
        bi, x = torch.cat(extra_i), torch.cat(extra_x)
        order = bi.sort(stable=True)[1]  # stable: each image keeps predictions first, then its labels
        bi, x = bi[order], x[order]
    return bi, x


def _detections(bi: torch.Tensor, x: torch.Tensor, conf_thres: float, nc: int, multi_label: bool, classes):
    """Every (box, class) above conf_thres as index vectors (image, row of x, score, class id as a float); the
    rows themselves are gathered only for the few candidates NMS looks at."""
    scores = x[:, 5:5 + nc] * x[:, 4:5]
    if multi_label:
        row, j = (scores > conf_thres).nonzero(as_tuple=True)
        score = scores[row, j]
    else:
        conf, j = scores.max(1)
        row = (conf > conf_thres).nonzero(as_tuple=True)[0]
        score, j = conf[row], j[row]
    cls = j.to(torch.promote_types(x.dtype, torch.float32))  # as before: fp16 input gets float32 class ids
    if classes is not None:
        keep = (cls[:, None] == torch.tensor(classes, device=x.device)).any(1)
        row, score, cls = row[keep], score[keep], cls[keep]
    return bi[row], row, score, cls


class _Shifted:
    """boxes[idx] -> xyxy boxes of those candidates plus their class offset, computed on demand (the same float
    ops as shifting every candidate up front, so the same values)."""

    def __init__(self, xyxy: torch.Tensor, row: torch.Tensor, offset: torch.Tensor):
        self.xyxy, self.row, self.offset = xyxy, row, offset

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, idx) -> torch.Tensor:
        return self.xyxy[self.row[idx]] + self.offset[idx, None]


def _ranked_nms(boxes: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """torchvision NMS on boxes already in visiting order (strictly decreasing dummy scores fix the order)."""
    ranks = torch.arange(len(boxes), 0, -1, device=boxes.device, dtype=boxes.dtype)  # exact below 2**24
    return torchvision.ops.nms(boxes, ranks, iou_thres)


def _grouped_nms(boxes: torch.Tensor, groups: torch.Tensor | None, iou_thres: float) -> torch.Tensor:
    """_ranked_nms, one call per group (class): torchvision compares every survivor with every later box, so
    splitting g classes cuts that work ~g times. Exact only when boxes of different groups cannot overlap, which
    the caller guarantees (non_max_suppression checks the class offset separates them)."""
    n = len(boxes)
    if groups is None or n < 256:  # small: the per-call overhead (~20 us) outweighs the saving
        return _ranked_nms(boxes, iou_thres)
    g, perm = groups.sort(stable=True)  # class-major, visiting order kept within a class
    _, counts = torch.unique_consecutive(g, return_counts=True)
    if len(counts) == 1 or n * n < 16000 * len(counts):
        return _ranked_nms(boxes, iou_thres)
    keep, start = [], 0
    for c in counts.tolist():
        part = perm[start:start + c]
        keep.append(part[_ranked_nms(boxes[part], iou_thres)])
        start += c
    return torch.cat(keep).sort()[0]  # back to visiting order


GROWTH = (0.25, 1.0)  # each later window adds between these multiples of the current one (see _window_growth)


def _window_growth(k, n_new, gained, missing):
    """How many more candidates the next window takes: as many as the last window's survival rate predicts for
    the missing survivors, but no more than the window so far (torchvision's cost grows with the square of a call,
    and lower-scored candidates survive more often, so a prediction overshoots) and no less than half of it."""
    rate = gained.double().clamp(min=1) / n_new.double().clamp(min=1)
    want = (missing.double().clamp(min=1) / rate).ceil().long()
    return torch.minimum(torch.maximum(want, (k * GROWTH[0]).long()), (k * GROWTH[1]).long()).clamp(min=1)


def greedy_nms_topk(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_det: int,
                    max_nms: int = 30000, window: int | None = None,
                    groups: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the first max_det survivors of greedy NMS over the top max_nms of (boxes, scores) in stable
    score-descending order, the same as torchvision.ops.nms on that sorted list, cut to max_det; work grows with
    the window needed to find max_det survivors instead of with the number of candidates. groups (class ids),
    when given, lets each window run per class: only valid if boxes of different groups cannot overlap."""
    n = len(scores)
    cap = min(n, max_nms)
    k = max(window or WINDOW * max_det, 1)
    if cap <= 2 * k:  # small: one sort and one call
        order = scores.sort(descending=True, stable=True)[1][:cap]
        g = None if groups is None else groups[order]
        return order[_grouped_nms(boxes[order], g, iou_thres)[:max_det]]
    kept = torch.zeros(0, dtype=torch.long, device=scores.device)
    upper = None  # scores >= upper are already processed
    done = before = 0  # candidates processed, survivors after the previous window
    while True:
        final = k >= cap
        if not final:
            t = scores.topk(k, sorted=False).values.min()  # k-th largest score; ties with it join the window
            sel = scores >= t if upper is None else (scores >= t) & (scores < upper)
        else:
            sel = torch.ones_like(scores, dtype=torch.bool) if upper is None else scores < upper
        idx = sel.nonzero(as_tuple=True)[0]
        final = final or done + len(idx) >= cap
        idx = idx[scores[idx].sort(descending=True, stable=True)[1]]
        if final:
            idx = idx[:cap - done]
        cand = torch.cat((kept, idx))
        kept = cand[_grouped_nms(boxes[cand], None if groups is None else groups[cand], iou_thres)]
        if final or len(kept) >= max_det:
            return kept[:max_det]
        done += len(idx)
        upper = t
        gained, before = len(kept) - before, len(kept)
        k += int(_window_growth(torch.tensor(k), torch.tensor(len(idx)), torch.tensor(gained),
                                torch.tensor(max_det - len(kept))))


def non_max_suppression(prediction, conf_thres: float = 0.25, iou_thres: float = 0.45, classes=None,
                        agnostic: bool = False, multi_label: bool = False, labels=(), max_det: int = 300,
                        nm: int = 0, max_nms: int = 30000) -> list[torch.Tensor]:
    """Filter (bs, N, 5+nc+nm) predictions (xywh, obj, cls scores, masks) to per-image (k, 6+nm) tensors
    x1, y1, x2, y2, conf, cls(, masks), sorted by conf. conf = obj * cls score. No time limit: every image is
    processed. Of the candidates above conf_thres, the top max_nms by score enter greedy NMS (IoU > iou_thres
    suppresses, per class unless agnostic) and the first max_det survivors are returned."""
    _check_thresholds(conf_thres, iou_thres)
    if isinstance(prediction, (list, tuple)):  # (decoded, raw) from an eval forward
        prediction = prediction[0]
    bs = prediction.shape[0]
    nc = prediction.shape[2] - nm - 5
    multi_label &= nc > 1
    if _use_kernel(prediction, labels, max_det):
        return _kernel_nms(prediction, nc, nm, conf_thres, iou_thres, classes, agnostic, multi_label, max_det,
                           max_nms)
    bi, x = _candidates(prediction, conf_thres, labels, nc, nm)
    bi, row, score, cls = _detections(bi, x, conf_thres, nc, multi_label, classes)
    out = [torch.zeros((0, 6 + nm), device=prediction.device)] * bs
    if not len(score):
        return out
    xyxy, mask = xywh2xyxy(x[:, :4]), x[:, 5 + nc:]
    offset = cls * (0 if agnostic else MAX_WH)
    # per-class NMS gives the same survivors as one call on shifted boxes when the shift keeps classes apart:
    # every box within a band narrower than MAX_WH (1 px margin for the float rounding of the shift)
    lo, hi = xyxy.min(), xyxy.max()
    groups = None if agnostic or not bool(hi - lo < MAX_WH - 1) else cls.long()
    keep_per_image = _per_image_nms(bi, _Shifted(xyxy, row, offset), score, groups, bs, iou_thres, max_det, max_nms)
    kept = torch.cat(keep_per_image)
    r = row[kept]
    dets = torch.cat((xyxy[r], score[kept, None], cls[kept, None], mask[r]), 1)
    return list(dets.split([len(k) for k in keep_per_image]))


@functools.cache
def _kernel():
    """utils/inference/nms_kernel.py, or None without numba."""
    try:
        from utils.inference import nms_kernel
    except ImportError as e:  # numba is in requirements.txt; without it NMS stays exact, only slower
        LOGGER.info(f"NMS: compiled kernel unavailable ({e}); using torchvision's")
        return None
    return nms_kernel


def warmup() -> None:
    """Load the compiled NMS code before timing starts (Backend.warmup calls this on CPU)."""
    if COMPILED and _kernel() is not None:
        _kernel().warmup()


def _use_kernel(prediction: torch.Tensor, labels, max_det: int) -> bool:
    return (COMPILED and prediction.device.type == "cpu" and prediction.dtype in (torch.float32, torch.float64)
            and not (labels and any(len(lb) for lb in labels)) and max_det > 0 and _kernel() is not None)


def _kernel_nms(prediction, nc, nm, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, max_nms):
    """non_max_suppression through nms_kernel.batch_nms: it returns the survivors' (anchor, class, score); the
    rows are then built with the same torch ops as the torchvision path, so the same values."""
    bs, n_anchors = prediction.shape[:2]
    p = prediction.detach()
    cls_dtype = torch.promote_types(p.dtype, torch.float32)
    ids = torch.arange(nc, dtype=cls_dtype)
    class_ok = torch.ones(nc, dtype=torch.bool) if classes is None else (ids[:, None] == torch.tensor(classes)).any(1)
    arr = p.contiguous().numpy()
    dt = arr.dtype.type  # thresholds in the prediction's dtype, as torch compares a tensor with a Python float
    max_det = min(max_det, max(max_nms, 0), n_anchors * (nc if multi_label else 1))
    anchor, cls, score, counts = _kernel().run(
        arr, nc, dt(conf_thres), float(iou_thres), max(max_det, 1), max(max_nms, 0),
        multi_label, class_ok.numpy(), agnostic, (ids * (0 if agnostic else MAX_WH)).to(p.dtype).numpy(),
        dt(MAX_WH - 1))
    if not len(anchor):
        return [torch.zeros((0, 6 + nm), device=prediction.device)] * bs
    counts = counts.tolist()
    rows = prediction[torch.repeat_interleave(torch.arange(bs), torch.tensor(counts)), torch.from_numpy(anchor)]
    dets = torch.cat((xywh2xyxy(rows[:, :4]), torch.from_numpy(score)[:, None],
                      torch.from_numpy(cls).to(cls_dtype)[:, None], rows[:, 5 + nc:]), 1)
    return list(dets.split(counts))


def _per_image_nms(bi, boxes, score, groups, bs, iou_thres, max_det, max_nms) -> list[torch.Tensor]:
    """greedy_nms_topk on each image's detections; indices into the detection vectors."""
    bounds = [0] + torch.cumsum(torch.bincount(bi, minlength=bs), 0).tolist()
    out = []
    for xi in range(bs):
        start, end = bounds[xi], bounds[xi + 1]
        if end == start:
            out.append(torch.zeros(0, dtype=torch.long, device=score.device))
            continue
        seg = torch.arange(start, end, device=score.device)
        keep = greedy_nms_topk(_Subset(boxes, seg), score[seg], iou_thres, max_det, max_nms,
                               groups=None if groups is None else groups[seg])
        out.append(seg[keep])
    return out


class _Subset:
    """boxes[seg][idx] without materialising boxes[seg]."""

    def __init__(self, boxes, seg: torch.Tensor):
        self.boxes, self.seg = boxes, seg

    def __len__(self) -> int:
        return len(self.seg)

    def __getitem__(self, idx) -> torch.Tensor:
        return self.boxes[self.seg[idx]]
