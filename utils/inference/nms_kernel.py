"""Greedy NMS for a CPU batch as one compiled pass (numba): candidates, their score order and the greedy loop per
image, with no per-box Python and no IoU pair it does not need.

Why compiled: at conf 0.001 a trained model leaves thousands of candidates per image, and the exact greedy loop is
sequential. torchvision's kernel compares every survivor with every later box of the call and costs ~20 us per
call, so even windowed it spent ~1 ms per image there, plus ~40 tensor ops per window round. Here each
candidate, in score order, is checked only against the earlier survivors of its class whose centre is near enough
for an IoU above the threshold (a grid of survivor centres finds them), and the image stops at max_det survivors.

Exactly torchvision's arithmetic, so the same boxes as the torchvision implementation in utils/inference/nms.py:
the same class-shifted boxes (x + cls * MAX_WH in the prediction's dtype), areas from the shifted coordinates,
`inter / (area_i + area_j - inter) > iou_thres` with the threshold in float64, every step rounded to the
prediction's dtype; scores `cls * obj` in that dtype compared with conf_thres cast to it, as torch compares a
tensor with a Python float.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

PARALLEL_MIN = 8192  # images x anchors below which one thread beats a parallel launch
RADIX_BITS = 11  # 3 passes over 32-bit keys, 2,048 buckets each
_CACHE = True  # compiled code is stored in __pycache__ (or numba's user cache when that is read-only)


@numba.njit(cache=_CACHE, nogil=True)
def _descending_order(score: np.ndarray, n: int) -> np.ndarray:
    """Indices of score[:n] by score descending, ties in index order: a stable LSD radix sort on the float32
    rounding of each (positive) score, whose bit patterns order like the values, then an insertion sort inside
    each run of equal float32 keys by the exact score (float64 inputs only: a stable merge sort for long runs)."""
    key = np.empty(n, np.float32)
    for i in range(n):
        key[i] = score[i]
    bits = np.uint32(0xFFFFFFFF) - key.view(np.uint32)  # ascending bits = descending score
    order = np.arange(n)
    tmp = np.empty(n, np.int64)
    buckets = 1 << RADIX_BITS
    mask = np.uint32(buckets - 1)
    count = np.zeros(buckets + 1, np.int64)
    for shift in range(0, 32, RADIX_BITS):
        count[:] = 0
        for i in range(n):
            count[((bits[i] >> shift) & mask) + 1] += 1
        for d in range(buckets):
            count[d + 1] += count[d]
        for r in range(n):
            i = order[r]
            d = (bits[i] >> shift) & mask
            tmp[count[d]] = i
            count[d] += 1
        order, tmp = tmp, order
    start = 0
    for r in range(1, n + 1):
        if r == n or bits[order[r]] != bits[order[start]]:
            if r - start > 32:
                run = order[start:r].copy()
                order[start:r] = run[np.argsort(-score[run], kind="mergesort")]
            for q in range(start + 1, r):  # stable: only strictly larger scores move ahead (a no-op after the sort)
                i = order[q]
                p = q - 1
                while p >= start and score[order[p]] < score[i]:
                    order[p + 1] = order[p]
                    p -= 1
                order[p + 1] = i
            start = r
    return order


def run(pred: np.ndarray, *args) -> tuple:
    """batch_nms(pred, *args), its images spread over torch's thread count when there are several of both (the
    same results: images are independent). numba's thread count is set for the calling thread only."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, pred.shape[0])
    if threads < 2 or pred.shape[0] * pred.shape[1] < PARALLEL_MIN:
        return batch_nms(pred, *args)
    numba.set_num_threads(threads)
    return batch_nms_parallel(pred, *args)


def warmup() -> None:
    """Load both entry points' float32 code now (a fraction of a second from numba's cache, a few seconds the first
    time), so the first timed batch does not pay for it."""
    p = np.zeros((2, 1, 6), np.float32)
    args = (1, np.float32(0.5), 0.5, 1, 1, True, np.ones(1, np.bool_), False, np.zeros(1, np.float32),
            np.float32(0))
    batch_nms(p, *args)
    batch_nms_parallel(p, *args)


BATCH_DOC = """pred (bs, N, 5 + nc + nm): cx, cy, w, h, obj, class scores. Per image: the candidates (anchor, class,
    score = cls * obj > conf; every class above conf if multi_label, else the best one), the top max_nms of them
    in stable score order, greedy NMS over their xyxy boxes shifted by offsets[class], the first max_det survivors.
    Unless agnostic, classes are kept apart as in torchvision by the shift alone; when an image's boxes span less
    than separable_below the shift cannot make two classes overlap, so a candidate meets only its class's
    survivors. Returns (anchor, class, score) of the survivors, image after image in visiting order, and the
    count per image. conf, offsets and separable_below come in pred's dtype."""


@numba.njit(cache=_CACHE, nogil=True)
def batch_nms(pred: np.ndarray, nc: int, conf: float, iou_thres: float, max_det: int, max_nms: int,
              multi_label: bool, class_ok: np.ndarray, agnostic: bool, offsets: np.ndarray, separable_below: float):
    bs = pred.shape[0]
    out_a, out_c, out_s = _outputs(bs, max_det, pred.dtype)
    counts = np.zeros(bs, np.int64)
    for b in range(bs):
        counts[b] = _image_nms(pred[b], nc, conf, iou_thres, max_det, max_nms, multi_label, class_ok, agnostic,
                               offsets, separable_below, out_a[b], out_c[b], out_s[b])
    return _packed(out_a, out_c, out_s, counts)


@numba.njit(cache=_CACHE, nogil=True, parallel=True)
def batch_nms_parallel(pred: np.ndarray, nc: int, conf: float, iou_thres: float, max_det: int, max_nms: int,
                       multi_label: bool, class_ok: np.ndarray, agnostic: bool, offsets: np.ndarray,
                       separable_below: float):
    bs = pred.shape[0]
    out_a, out_c, out_s = _outputs(bs, max_det, pred.dtype)
    counts = np.zeros(bs, np.int64)
    for b in numba.prange(bs):  # images are independent; numba.set_num_threads decides how many run at once
        counts[b] = _image_nms(pred[b], nc, conf, iou_thres, max_det, max_nms, multi_label, class_ok, agnostic,
                               offsets, separable_below, out_a[b], out_c[b], out_s[b])
    return _packed(out_a, out_c, out_s, counts)


batch_nms.__doc__ = batch_nms_parallel.__doc__ = BATCH_DOC


@numba.njit(cache=_CACHE, nogil=True)
def _outputs(bs: int, max_det: int, dtype):
    return np.empty((bs, max_det), np.int64), np.empty((bs, max_det), np.int64), np.empty((bs, max_det), dtype)


@numba.njit(cache=_CACHE, nogil=True)
def _packed(out_a, out_c, out_s, counts):
    """Each image's first counts[b] rows, one image after another."""
    total = counts.sum()
    a, c, s = np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, out_s.dtype)
    w = 0
    for b in range(len(counts)):
        for k in range(counts[b]):
            a[w], c[w], s[w] = out_a[b, k], out_c[b, k], out_s[b, k]
            w += 1
    return a, c, s, counts


@numba.njit(cache=_CACHE, nogil=True)
def _image_nms(p, nc, conf, iou_thres, max_det, max_nms, multi_label, class_ok, agnostic, offsets, separable_below,
               out_a, out_c, out_s) -> int:
    """One image of batch_nms: its survivors' (anchor, class, score) into out_*, their count returned."""
    # room for every (anchor, class); np.empty only maps the pages written. A growing buffer would be smaller,
    # but reassigning arrays inside the loop made it 20x slower
    cand = np.empty(p.shape[0] * (nc if multi_label else 1), np.int64)  # anchor * nc + class
    cand_s = np.empty(len(cand), p.dtype)
    n, lo, hi, size = _gather(p, nc, conf, multi_label, class_ok, cand, cand_s)
    if n == 0:
        return 0
    order = _descending_order(cand_s, n)
    per_class = not agnostic and hi - lo < separable_below
    kept = _greedy(p, nc, cand, order[:min(n, max_nms)], iou_thres, max_det, offsets, per_class,
                   per_class or agnostic, lo, hi, size, out_a)
    for k in range(kept):
        out_c[k] = out_a[k] % nc
        out_s[k] = cand_s[out_a[k] // nc]
        out_a[k] = cand[out_a[k] // nc] // nc
    return kept


@numba.njit(cache=_CACHE, nogil=True)
def _gather(p: np.ndarray, nc: int, conf: float, multi_label: bool, class_ok: np.ndarray, cand: np.ndarray,
            cand_s: np.ndarray):
    """One image's candidates into cand (anchor * nc + class) and cand_s (score), in anchor then class order, as
    torch's nonzero lists them. Returns their count, the min and max of every coordinate of the rows above conf
    (the span that decides whether the class shift separates classes), and the rows' mean size max(w, h)."""
    half = p.dtype.type(0.5)
    zero = p.dtype.type(0)
    n, rows, size = 0, 0, 0.0
    lo, hi = np.inf, -np.inf
    for a in range(p.shape[0]):
        obj = p[a, 4]
        if not obj > conf:
            continue
        cx, cy, w, h = p[a, 0], p[a, 1], p[a, 2], p[a, 3]
        lo = min(lo, cx - w * half, cy - h * half, cx + w * half, cy + h * half)
        hi = max(hi, cx - w * half, cy - h * half, cx + w * half, cy + h * half)
        side = max(abs(np.float64(w)), abs(np.float64(h)))
        if side < np.inf:
            size += side
            rows += 1
        best_c, best_s, nan = -1, zero, False
        for c in range(nc):
            s = p[a, 5 + c] * obj
            if multi_label:
                if s > conf and class_ok[c]:
                    cand[n] = a * nc + c
                    cand_s[n] = s
                    n += 1
            elif s != s:
                nan = True  # torch's max propagates NaN, and NaN never passes conf
            elif best_c < 0 or s > best_s:  # the first maximum wins, as torch.max(dim) returns
                best_c, best_s = c, s
        if not multi_label and not nan and best_s > conf and class_ok[best_c]:
            cand[n] = a * nc + best_c
            cand_s[n] = best_s
            n += 1
    return n, lo, hi, size / max(rows, 1)


MAX_CELLS = 1 << 16  # grid heads per image, over all classes


@numba.njit(cache=_CACHE, nogil=True)
def _greedy(p: np.ndarray, nc: int, cand: np.ndarray, order: np.ndarray, iou_thres: float, max_det: int,
            offsets: np.ndarray, per_class: bool, grid: bool, lo: float, hi: float, size: float,
            out: np.ndarray) -> int:
    """Greedy NMS over one image's candidates cand[order] (visiting order); writes the survivors' indices into
    cand (times nc, plus their class) to out and returns how many. A candidate is compared only with earlier
    survivors that can overlap it by more than iou_thres: those of its class when per_class (the class shift
    keeps the others apart) whose centre lies within its reach (_reach), found through a grid of centres when
    grid (per class, or agnostic with no shift; otherwise every survivor is met and only the reach filters).
    Boxes with a non-finite coordinate never suppress and are never suppressed (their IoU is 0 or NaN), as in
    torchvision."""
    half = p.dtype.type(0.5)
    zero = p.dtype.type(0)
    reach = _reach(iou_thres)
    n_groups = nc if per_class else 1
    span = hi - lo
    cell = reach * size
    gx = 1
    if grid and cell > 0 and cell < np.inf and span < np.inf:
        cell = max(cell, span / 255)
        gx = int(span / cell) + 1
        while n_groups * gx * gx > MAX_CELLS:
            cell *= 2
            gx = int(span / cell) + 1
    heads = np.full(n_groups * gx * gx, -1, np.int64)  # last survivor in each (class, cell)
    k_next = np.empty(max_det, np.int64)  # the survivor before it in the same (class, cell)
    k_box = np.empty((max_det, 5), p.dtype)  # shifted x1, y1, x2, y2, area
    k_mx = np.empty(max_det, np.float64)  # shifted centre
    k_my = np.empty(max_det, np.float64)
    kept = 0
    for r in range(len(order)):
        i = order[r]
        a, c = cand[i] // nc, cand[i] % nc
        cx, cy, w, h = p[a, 0], p[a, 1], p[a, 2], p[a, 3]
        off = offsets[c]
        x1, y1 = (cx - w * half) + off, (cy - h * half) + off
        x2, y2 = (cx + w * half) + off, (cy + h * half) + off
        area = (x2 - x1) * (y2 - y1)
        # centres of the shifted boxes (the ones compared, so a shift that makes classes overlap is seen); the
        # grid cell comes from the unshifted centre, as a grid only ever holds one class or unshifted boxes
        mx = 0.5 * (np.float64(x1) + np.float64(x2))
        my = 0.5 * (np.float64(y1) + np.float64(y2))
        finite = abs(np.float64(x1)) + abs(np.float64(y1)) + abs(np.float64(x2)) + abs(np.float64(y2)) < np.inf
        if finite:
            # slack for the float rounding of the shifted corners (relative 6e-8 in float32) on the centres
            eps = 1e-6 * (abs(mx) + abs(my))
            rx = reach * abs(np.float64(x2) - np.float64(x1)) + eps
            ry = reach * abs(np.float64(y2) - np.float64(y1)) + eps
            ux, uy = mx - off, my - off
            x0c, x1c = _cell(ux - rx, lo, cell, gx), _cell(ux + rx, lo, cell, gx)
            y0c, y1c = _cell(uy - ry, lo, cell, gx), _cell(uy + ry, lo, cell, gx)
            if not (rx < np.inf and ry < np.inf):
                x0c, x1c, y0c, y1c = 0, gx - 1, 0, gx - 1
            base = (c if per_class else 0) * gx * gx
            box = (x1, y1, x2, y2, area)
            suppressed = False
            for yc in range(y0c, y1c + 1):
                for xc in range(x0c, x1c + 1):
                    k = heads[base + yc * gx + xc]
                    while k >= 0:
                        if (abs(k_mx[k] - mx) <= rx and abs(k_my[k] - my) <= ry
                                and _overlaps(k_box[k], box, zero, iou_thres)):
                            suppressed = True
                            break
                        k = k_next[k]
                    if suppressed:
                        break
                if suppressed:
                    break
            if suppressed:
                continue
            k_box[kept, 0], k_box[kept, 1], k_box[kept, 2], k_box[kept, 3], k_box[kept, 4] = box
            k_mx[kept], k_my[kept] = mx, my
            h_idx = base + _cell(uy, lo, cell, gx) * gx + _cell(ux, lo, cell, gx)
            k_next[kept] = heads[h_idx]
            heads[h_idx] = kept
        out[kept] = i * nc + c
        kept += 1
        if kept == max_det:
            break
    return kept


@numba.njit(cache=_CACHE, nogil=True)
def _cell(v: float, lo: float, cell: float, gx: int) -> int:
    """Grid column (row) of coordinate v, clamped to the grid: a clamped survivor is still met by every query
    whose range reaches past the same edge."""
    return int(min(max((v - lo) / cell, 0.0), gx - 1.0))


@numba.njit(cache=_CACHE, nogil=True)
def _reach(iou_thres: float) -> float:
    """How far, in widths (heights) of a box, the centre of another box can be when their IoU exceeds iou_thres.
    IoU > t needs inter > t / (1 + t) * (area_i + area_j), and inter <= x-overlap * the lower height, so the
    x-overlap exceeds t / (1 + t) * (w_i + w_j); it is at most (w_i + w_j) / 2 - |dx|, hence
    |dx| < (1 - t) / (2 (1 + t)) * (w_i + w_j). IoU > t also needs w_j > t * w_i (the overlap exceeds t times the
    wider width and is at most the narrower one), so |dx| < (1 - t) / (2 t) * w_i. t is lowered by 1e-4 relative
    for the float rounding of the computed IoU; t <= 0 has no bound."""
    t = iou_thres * (1 - 1e-4)
    return (1 - t) / (2 * t) if t > 0 else np.inf


@numba.njit(cache=_CACHE, nogil=True)
def _overlaps(k, box, zero, iou_thres: float) -> bool:
    """torchvision's test for an earlier survivor k (x1, y1, x2, y2, area) and a later box, in their dtype."""
    iw = min(k[2], box[2]) - max(k[0], box[0])
    ih = min(k[3], box[3]) - max(k[1], box[1])
    if iw > zero and ih > zero:  # otherwise inter = 0, and 0 > iou_thres >= 0 cannot hold
        inter = iw * ih
        return inter / (k[4] + box[4] - inter) > iou_thres
    return False
