"""One comparison of detection sets between backends (PyTorch, ONNX, TorchScript, INT8, NMS graph vs Python NMS).

NMS is discontinuous: two backends whose raw outputs differ by a float error e can keep different rows wherever a
decision is within e of its boundary. So rows may differ only where a decision is a near-tie, and every other row
must match:
- a score within `score_tol` of `conf_thres` (the row may fall either side of the threshold);
- a class score tied with another class (same box and score, other class);
- two overlapping boxes whose scores are within 2 * `score_tol` (NMS may keep either one);
- in per-class NMS, a row under an overlapping higher box of another class (its class scores may tie, and the
  other class's box then suppresses it);
- an IoU within float error of `iou_thres` (the lower-scored box may or may not be suppressed);
- a full set (`max_det` rows) whose last score is within `score_tol` of a left-out row's;
- a row suppressed or freed by an overlapping row that is itself one of the above (a cascade).
`score_tol` and `box_tol` must bound the difference of the compared rows (callers say why in a comment).
Outputs alone cannot tell a tie from some changes (a box replaced by an overlapping one of a tied score, a class
flipped on a tied score), so callers also check that most rows matched, which a systematic bug breaks.
"""
from __future__ import annotations

import numpy as np

# Raw outputs of one fp32 model run by PyTorch, ONNX Runtime or TorchScript agree within 1e-4 in every obj/class
# score and within 1e-4 of the box scale (test_export's assert_same_predictions checks it for every yaml): fp32
# rounding (6e-8) summed over fan-ins of ~10^3 through ~30 layers stays below that. conf = obj * cls then differs
# by <= 2e-4.
FP32_SCORE_TOL = 2e-4
FP32_BOX_REL = 1e-4


def _rows(d) -> np.ndarray:
    """(n, 6) float64 x1, y1, x2, y2, conf, cls from a tensor, an array or a predictor Detections."""
    d = getattr(d, "boxes", d)
    d = d.detach().cpu().numpy() if hasattr(d, "detach") else np.asarray(d)
    return d.astype(np.float64).reshape(-1, 6)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: np.clip(x[:, 2:4] - x[:, :2], 0, None).prod(1)
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def _iou_tol(a: np.ndarray, b: np.ndarray, box_tol: float) -> np.ndarray:
    """First-order bound of how far IoU moves when every coordinate moves by <= box_tol: each side moves by
    <= 2 box_tol, so an area w * h moves by <= 2 box_tol (w + h); the union moves by at most the sum of the two
    areas' and the intersection's moves, and IoU = I / U by <= (dI + IoU dU) / U."""
    wh = lambda x: np.clip(x[:, 2:4] - x[:, :2], 0, None)
    wa, wb = wh(a), wh(b)
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wi = np.clip(rb - lt, 0, None)  # (na, nb, 2)
    inter = wi.prod(2)
    union = np.maximum(wa.prod(1)[:, None] + wb.prod(1)[None] - inter, 1e-12)
    d_inter = 2 * box_tol * wi.sum(2)
    d_union = 2 * box_tol * (wa.sum(1)[:, None] + wb.sum(1)[None]) + d_inter
    return (d_inter + inter / union * d_union) / union


def _match(g: np.ndarray, r: np.ndarray, score_tol: float, box_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs of rows with the same class, box within box_tol and score within score_tol; -1 if none."""
    mg, mr = np.full(len(g), -1), np.full(len(r), -1)
    if not len(g) or not len(r):
        return mg, mr
    db = np.abs(g[:, None, :4] - r[None, :, :4]).max(2) / box_tol
    ds = np.abs(g[:, None, 4] - r[None, :, 4]) / score_tol
    cost = np.maximum(db, ds) + (g[:, None, 5] != r[None, :, 5]) * 1e9
    for k in np.argsort(cost, axis=None, kind="stable"):  # greedy on the smallest cost: rows are far apart
        i, j = divmod(int(k), len(r))
        if cost[i, j] > 1.0:
            break
        if mg[i] < 0 and mr[j] < 0:
            mg[i], mr[j] = j, i
    return mg, mr


def _excused(a: np.ndarray, unmatched: np.ndarray, other: np.ndarray, other_loose: np.ndarray, score_tol: float,
             box_tol: float, conf_thres: float, iou_thres: float, agnostic: bool, max_det: int | None) -> np.ndarray:
    """Which unmatched rows of `a` a near-tie explains, given `other` (the other backend's rows) and which of those
    are themselves excused (`other_loose`)."""
    ok = np.abs(a[:, 4] - conf_thres) <= score_tol  # could sit either side of the threshold
    if max_det is not None and len(other) >= max_det:  # the other set was cut at max_det: near its last score
        ok |= a[:, 4] <= other[:, 4].min() + score_tol
    if len(other):
        same_box = np.abs(a[:, None, :4] - other[None, :, :4]).max(2) <= box_tol
        near = np.abs(a[:, None, 4] - other[None, :, 4]) <= score_tol
        ok |= (same_box & near & (a[:, None, 5] != other[None, :, 5])).any(1)  # tied class scores
        # in per-class NMS a row whose class scores tie may join another class's group and be suppressed there by
        # a higher box of that class
        iou, tol = _iou(a[:, :4], other[:, :4]), _iou_tol(a[:, :4], other[:, :4], box_tol)
        overlap = iou > iou_thres - tol
        cross = np.zeros_like(overlap) if agnostic else a[:, None, 5] != other[None, :, 5]
        swap = np.abs(a[:, None, 4] - other[None, :, 4]) <= 2 * score_tol  # NMS may keep either one
        edge = np.abs(iou - iou_thres) <= tol  # the overlap is at the suppression threshold
        higher = other[None, :, 4] >= a[:, None, 4] - 2 * score_tol
        ok |= (overlap & (swap | (higher & (edge | other_loose[None] | cross)))).any(1)
    return ok & unmatched


def compare_detections(got, ref, *, score_tol: float, box_tol: float, conf_thres: float, iou_thres: float,
                       agnostic: bool = False, max_det: int | None = None) -> tuple[int, int]:
    """Assert that per-image detection sets `got` and `ref` (lists of (n, 6) x1, y1, x2, y2, conf, cls rows, or
    predictor Detections) are the same up to near-ties (module docstring). Returns (rows matched, rows excused) so a
    caller can check the comparison was not vacuous."""
    assert len(got) == len(ref), (len(got), len(ref))
    n_match = n_excused = 0
    args = (score_tol, box_tol, conf_thres, iou_thres, agnostic, max_det)
    for k, (g, r) in enumerate(zip(got, ref)):
        g, r = _rows(g), _rows(r)
        mg, mr = _match(g, r, score_tol, box_tol)
        loose_g, loose_r = np.zeros(len(g), bool), np.zeros(len(r), bool)
        while True:  # grow the excused sets until a cascade adds nothing
            new_g = _excused(g, mg < 0, r, loose_r, *args)
            new_r = _excused(r, mr < 0, g, loose_g, *args)
            if (new_g == loose_g).all() and (new_r == loose_r).all():
                break
            loose_g, loose_r = new_g, new_r
        for name, rows, m, loose in (("got", g, mg, loose_g), ("ref", r, mr, loose_r)):
            bad = np.flatnonzero((m < 0) & ~loose)
            assert not len(bad), (f"image {k}: {name} row {int(bad[0])} {np.round(rows[bad[0]], 5).tolist()} has no "
                                  f"match and is no near-tie ({len(bad)} such rows of {len(rows)})")
        n_match += int((mg >= 0).sum())
        n_excused += int(loose_g.sum() + loose_r.sum())
    return n_match, n_excused
