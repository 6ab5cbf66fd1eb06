"""Detection metrics: COCO-exact AP (Lin et al., 2014, "Microsoft COCO"), the confusion matrix, and the curves
val.py plots.

AP follows pycocotools' COCOeval for bbox with its default parameters, area range 'all' and no crowd boxes:
- detections are kept per (image, class) up to ``max_det`` (COCOeval's maxDets[-1] = 100), highest score first;
- IoU is computed in float64 on COCO (x, y, w, h) boxes with COCOeval's own arithmetic, so thresholds tie alike;
- each detection, in score order within its (image, class), takes the still-unmatched ground truth with the
  highest IoU >= t (equal IoUs go to the later ground truth, as COCOeval's scan does);
- per class, detections of all images are sorted by score (stable, images in dataset order), precision gets its
  envelope and is read at 101 recall points; classes without ground truth are left out of the means.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # the same floats COCOeval builds (0.6000000000000001 etc.)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval recThrs
COCO_MAX_DETS = 100  # COCOeval maxDets[-1]: cap per image *and class*, not per image
CONF_POINTS = np.linspace(0, 1, 1000)  # confidence axis of the P, R and F1 curves


def fitness(x) -> np.ndarray:
    """Model fitness for best.pt selection: 0.1 * mAP50 + 0.9 * mAP50-95 over rows [P, R, mAP50, mAP50-95, ...]."""
    x = np.asarray(x, dtype=np.float64)
    return x[..., :4] @ np.array([0.0, 0.0, 0.1, 0.9])


def xyxy2coco(boxes) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) -> COCO (x, y, w, h) in float64; val.py uses it for both the metric and the json,
    so both see bit-identical boxes."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate((b[:, :2], b[:, 2:] - b[:, :2]), 1)


def coco_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Pairwise IoU (n, m) of COCO xywh boxes with pycocotools' bbIou arithmetic (no eps, empty overlap -> 0)."""
    d = np.asarray(dt, np.float64).reshape(-1, 4)[:, None]
    g = np.asarray(gt, np.float64).reshape(-1, 4)[None]
    return _coco_iou(d, g)


def coco_pair_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Element-wise IoU (n,) of matched rows of COCO xywh boxes, same arithmetic as coco_iou."""
    return _coco_iou(np.asarray(dt, np.float64).reshape(-1, 4), np.asarray(gt, np.float64).reshape(-1, 4))


def _coco_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    # Operation order mirrors maskApi.c so that IoUs sitting exactly on a threshold compare the same way.
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    overlap = (w > 0) & (h > 0)
    inter = w * h
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    out = np.zeros(np.broadcast(w, h).shape)
    np.divide(inter, union, out=out, where=overlap)
    return out


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal keys in a sorted array."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)


def _equal_key_pairs(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) with keys[i] == sorted_keys[j], i ascending then j ascending, without an n x m matrix."""
    start = np.searchsorted(sorted_keys, keys, "left")
    cnt = np.searchsorted(sorted_keys, keys, "right") - start
    i = np.repeat(np.arange(len(keys)), cnt)
    j = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(start, cnt)
    return i, j


def match_coco(pred_img, pred_cls, pred_score, pred_box, gt_img, gt_cls, gt_box,
               iouv: np.ndarray = IOU_THRESHOLDS, max_det: int = COCO_MAX_DETS) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching for many images at once.

    Boxes are COCO xywh. Ground truths keep their given order within an (image, class), as in the json.
    Returns keep (n,) bool (inside the per image-and-class max_det cap) and correct (n, T) bool (matched at
    each IoU threshold; False for dropped rows). Vectorised over all images, classes, pairs and thresholds up to
    the greedy step, which is sequential inside an (image, class) because a detection may only take what
    higher-scored ones left over: utils/match_kernel.py runs it compiled, _match_by_rank in numpy without numba.
    """
    pred_img = np.asarray(pred_img, np.int64).ravel()
    pred_cls = np.asarray(pred_cls).astype(np.int64).ravel()
    pred_score = np.asarray(pred_score, np.float64).ravel()
    pred_box = np.asarray(pred_box, np.float64).reshape(-1, 4)
    gt_img = np.asarray(gt_img, np.int64).ravel()
    gt_cls = np.asarray(gt_cls).astype(np.int64).ravel()
    gt_box = np.asarray(gt_box, np.float64).reshape(-1, 4)
    iouv = np.asarray(iouv, np.float64)
    n, T = len(pred_score), len(iouv)
    keep = np.zeros(n, bool)
    correct = np.zeros((n, T), bool)
    if n == 0:
        return keep, correct

    # (image, class) key; lexsort is stable, so equal scores keep their input order like COCOeval's mergesort
    ncls = int(max(pred_cls.max(initial=0), gt_cls.max(initial=0))) + 1
    if min(pred_cls.min(initial=0), gt_cls.min(initial=0)) < 0:
        raise ValueError("match_coco: class indices must be non-negative")
    pkey = pred_img * ncls + pred_cls
    order = np.lexsort((-pred_score, pkey))
    skey = pkey[order]
    starts = _group_starts(skey)
    group_len = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, group_len)
    kept = rank < max_det
    keep[order[kept]] = True
    order, skey, rank = order[kept], skey[kept], rank[kept]
    if not len(gt_cls):
        return keep, correct

    gorder = np.lexsort((gt_cls, gt_img))  # stable: json order inside each (image, class)
    # every (kept detection, same image-and-class ground truth) pair, detections in sorted order
    pi, gpos = _equal_key_pairs((gt_img * ncls + gt_cls)[gorder], skey)  # pi indexes the sorted kept detections
    if not len(pi):
        return keep, correct
    gi = gorder[gpos]  # original gt index (ascending inside a pair run because gorder is stable)
    iou = coco_pair_iou(pred_box[order[pi]], gt_box[gi])
    thr = np.minimum(iouv, 1 - 1e-10)  # COCOeval caps the threshold just below 1
    cand = iou >= thr.min()
    pi, gi, iou = pi[cand], gi[cand], iou[cand]
    if not len(pi):
        return keep, correct

    kernel = _match_kernel()
    if kernel is not None:
        det_hit = kernel.greedy_match(pi, gi, iou, thr, len(order), len(gt_cls))
    else:
        det_hit = _match_by_rank(pi, gi, iou, thr, rank, len(order), len(gt_cls))
    correct[order] = det_hit
    return keep, correct


MATCH_COMPILED = True  # use utils/match_kernel.py where numba is there (tests switch it off for the numpy loop)


def _match_kernel():
    return _compiled_matcher() if MATCH_COMPILED else None


@functools.cache
def _compiled_matcher():
    try:
        from utils import match_kernel
    except ImportError:  # numba is in requirements.txt; without it the numpy loop gives the same matches
        return None
    return match_kernel


def _match_by_rank(pi, gi, iou, thr, rank, n_det: int, n_gt: int) -> np.ndarray:
    """The matching in numpy, vectorised over images and classes: rank by rank, as within one rank every
    detection belongs to a different (image, class)."""
    T = len(thr)
    r_of_pair = rank[pi]
    by_rank = np.argsort(r_of_pair, kind="stable")
    pi, gi, iou, r_of_pair = pi[by_rank], gi[by_rank], iou[by_rank], r_of_pair[by_rank]
    rank_starts = _group_starts(r_of_pair)
    rank_ends = np.r_[rank_starts[1:], len(pi)]
    gt_used = np.zeros((n_gt, T), bool)
    det_hit = np.zeros((n_det, T), bool)
    for s, e in zip(rank_starts, rank_ends):
        p, g, v = pi[s:e], gi[s:e], iou[s:e]
        ok = (v[:, None] >= thr) & ~gt_used[g]
        score = np.where(ok, v[:, None], -1.0)
        seg = _group_starts(p)
        seg_id = np.repeat(np.arange(len(seg)), np.diff(np.r_[seg, len(p)]))
        best = np.maximum.reduceat(score, seg, axis=0)
        # the last of several equally good ground truths wins, as in COCOeval's scan
        pos = np.where(ok & (score == best[seg_id]), np.arange(len(p))[:, None], -1)
        chosen = np.maximum.reduceat(pos, seg, axis=0)
        si, ti = np.nonzero(chosen >= 0)
        c = chosen[si, ti]
        gt_used[g[c], ti] = True
        det_hit[p[c], ti] = True
    return det_hit


def _smooth_precision_at_recall(rc: np.ndarray, pr: np.ndarray) -> np.ndarray:
    """COCOeval's precision at RECALL_POINTS for one class: envelope, then left searchsorted, 0 past the end.

    rc, pr: (n, T) cumulative recall/precision in score order. Returns (T, 101)."""
    n, T = rc.shape
    q = np.zeros((T, len(RECALL_POINTS)))
    if n == 0:
        return q
    env = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
    for t in range(T):  # 10 thresholds; searchsorted needs one monotone column at a time
        idx = np.searchsorted(rc[:, t], RECALL_POINTS, side="left")
        inside = idx < n
        q[t, inside] = env[idx[inside], t]
    return q


def ap_per_class(tp, conf, pred_cls, target_cls, plot: bool = False, save_dir: str | Path = ".", names=(),
                 eps: float = 1e-16, prefix: str = ""):
    """COCO-exact average precision per class (101-point, precision envelope).

    tp: (n, T) bool matches from match_coco, rows in dataset-image order (ties in score are broken by that
    order, as COCOeval does); conf (n,); pred_cls (n,); target_cls (m,) one entry per ground truth.
    P and R are read at the confidence that maximises the F1 averaged over classes (IoU 0.5).
    Returns tp, fp, p, r, f1 (at that confidence), ap (nc_with_gt, T), unique_classes, curves (a dict for plots).
    """
    tp = np.asarray(tp, bool)
    if tp.ndim == 1:
        tp = tp[:, None]
    conf = np.asarray(conf, np.float64).ravel()
    pred_cls = np.asarray(pred_cls).astype(np.int64).ravel()
    target_cls = np.asarray(target_cls).astype(np.int64).ravel()
    T = tp.shape[1]

    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc = len(unique_classes)
    order = np.lexsort((-conf, pred_cls))  # by class, then score; stable keeps image order for ties
    cls_sorted = pred_cls[order]
    lo = np.searchsorted(cls_sorted, unique_classes, "left")
    hi = np.searchsorted(cls_sorted, unique_classes, "right")

    ap = np.zeros((nc, T))
    q50 = np.zeros((nc, len(RECALL_POINTS)))  # COCO precision at the recall points, IoU 0.5 (the PR curve)
    p_curve = np.zeros((nc, len(CONF_POINTS)))
    r_curve = np.zeros((nc, len(CONF_POINTS)))
    for ci in range(nc):  # one vectorised pass per class
        idx = order[lo[ci]:hi[ci]]
        if not len(idx):
            continue
        hits = tp[idx]
        tpc = np.cumsum(hits, 0).astype(np.float64)
        fpc = np.cumsum(~hits, 0).astype(np.float64)
        rc = tpc / nt[ci]
        pr = tpc / (fpc + tpc + np.spacing(1))
        q = _smooth_precision_at_recall(rc, pr)
        ap[ci] = q.mean(1)
        q50[ci] = q[0]
        # P and R of the detections kept by each confidence threshold (a step function, not interpolated)
        n_above = np.searchsorted(-conf[idx], -CONF_POINTS, side="right")
        some = n_above > 0
        r_curve[ci, some] = rc[n_above[some] - 1, 0]
        p_curve[ci] = 1.0  # nothing kept: precision 1 by convention, so F1 is 0 there
        p_curve[ci, some] = pr[n_above[some] - 1, 0]

    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    i = int(f1_curve.mean(0).argmax()) if nc else 0
    p, r, f1 = p_curve[:, i], r_curve[:, i], f1_curve[:, i]
    tp_count = (r * nt).round()
    fp_count = (tp_count / (p + eps) - tp_count).round()
    curves = {"px": CONF_POINTS, "p": p_curve, "r": r_curve, "f1": f1_curve, "rec": RECALL_POINTS, "prec": q50,
              "best_conf": CONF_POINTS[i]}
    if plot:
        names = _names_for(unique_classes, names)
        save_dir = Path(save_dir)
        plot_pr_curve(RECALL_POINTS, q50, ap[:, 0], save_dir / f"{prefix}PR_curve.png", names)
        plot_mc_curve(CONF_POINTS, f1_curve, save_dir / f"{prefix}F1_curve.png", names, ylabel="F1")
        plot_mc_curve(CONF_POINTS, p_curve, save_dir / f"{prefix}P_curve.png", names, ylabel="Precision")
        plot_mc_curve(CONF_POINTS, r_curve, save_dir / f"{prefix}R_curve.png", names, ylabel="Recall")
    return tp_count, fp_count, p, r, f1, ap, unique_classes, curves


def _names_for(classes: np.ndarray, names) -> list[str]:
    if isinstance(names, dict):
        return [str(names.get(int(c), int(c))) for c in classes]
    names = list(names)
    return [str(names[int(c)]) if int(c) < len(names) else str(int(c)) for c in classes]


class DetectionMetrics:
    """Accumulates per-image detections and labels and computes COCO-exact P, R, mAP50 and mAP50-95.

    update() matches each batch at once (images never share matches), so only the matched rows are kept.
    Boxes are COCO xywh in original-image pixels (see xyxy2coco), so the numbers equal COCOeval's on the
    json val.py writes.
    """

    def __init__(self, nc: int, iouv: np.ndarray = IOU_THRESHOLDS, max_det: int = COCO_MAX_DETS):
        self.nc = int(nc)
        self.iouv = np.asarray(iouv, np.float64)
        self.max_det = int(max_det)
        self._correct, self._conf, self._cls, self._tcls, self._img, self._ids = [], [], [], [], [], []
        self.seen = 0
        self.results = None

    def update(self, preds: list, labels: list, image_ids: list | None = None) -> list[np.ndarray]:
        """preds[i]: (n, 6) x, y, w, h, conf, cls; labels[i]: (m, 5) cls, x, y, w, h, for the next images.
        image_ids: their COCO ids, when they do not ascend with the order of updates (COCOeval breaks exact
        score ties between images in id order). Returns per image the (n, T) correct matrix (rows outside the
        max_det cap are all False)."""
        if len(preds) != len(labels):
            raise ValueError(f"DetectionMetrics.update: {len(preds)} prediction sets for {len(labels)} label sets")
        if image_ids is not None and len(image_ids) != len(preds):
            raise ValueError(f"DetectionMetrics.update: {len(image_ids)} image ids for {len(preds)} images")
        self._ids += list(range(self.seen, self.seen + len(preds))) if image_ids is None else list(image_ids)
        preds = [np.asarray(p, np.float64).reshape(-1, 6) for p in preds]
        labels = [np.asarray(lb, np.float64).reshape(-1, 5) for lb in labels]
        pn = [len(p) for p in preds]
        P = np.concatenate(preds) if preds else np.zeros((0, 6))
        L = np.concatenate(labels) if labels else np.zeros((0, 5))
        pimg = np.repeat(np.arange(len(preds)), pn)
        limg = np.repeat(np.arange(len(labels)), [len(lb) for lb in labels])
        keep, correct = match_coco(pimg, P[:, 5], P[:, 4], P[:, :4], limg, L[:, 0], L[:, 1:5],
                                   self.iouv, self.max_det)
        self._correct.append(correct[keep])
        self._conf.append(P[keep, 4])
        self._cls.append(P[keep, 5].astype(np.int64))
        self._img.append(pimg[keep] + self.seen)
        self._tcls.append(L[:, 0].astype(np.int64))
        self.seen += len(preds)
        return np.split(correct, np.cumsum(pn)[:-1]) if len(pn) else []

    @property
    def n_labels(self) -> np.ndarray:
        """Ground-truth count per class (nc,)."""
        t = np.concatenate(self._tcls) if self._tcls else np.zeros(0, np.int64)
        return np.bincount(t, minlength=self.nc)

    def compute(self, plot: bool = False, save_dir: str | Path = ".", names=()) -> dict:
        """P, R, mAP50, mAP50-95 overall and per class with ground truth (keys: mp, mr, map50, map, ...)."""
        T = len(self.iouv)
        correct = np.concatenate(self._correct) if self._correct else np.zeros((0, T), bool)
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0)
        cls = np.concatenate(self._cls) if self._cls else np.zeros(0, np.int64)
        tcls = np.concatenate(self._tcls) if self._tcls else np.zeros(0, np.int64)
        if len(conf):  # rows in image-id order, so equal scores rank as in COCOeval
            img_rank = np.empty(len(self._ids), np.int64)
            img_rank[np.argsort(self._ids, kind="stable")] = np.arange(len(self._ids))
            o = np.argsort(img_rank[np.concatenate(self._img)], kind="stable")
            correct, conf, cls = correct[o], conf[o], cls[o]
        tpc, fpc, p, r, f1, ap, classes, curves = ap_per_class(correct, conf, cls, tcls, plot, save_dir, names)
        ap50, apm = (ap[:, 0], ap.mean(1)) if len(classes) else (np.zeros(0), np.zeros(0))

        def mean(x):
            return float(x.mean()) if len(x) else 0.0

        maps = np.zeros(self.nc)
        maps[:] = mean(apm)
        valid = classes < self.nc
        maps[classes[valid]] = apm[valid]
        self.results = {"mp": mean(p), "mr": mean(r), "map50": mean(ap50), "map": mean(apm),
                        "p": p, "r": r, "f1": f1, "ap50": ap50, "ap": apm, "ap_all": ap, "classes": classes,
                        "maps": maps, "nt": self.n_labels, "tp": tpc, "fp": fpc, "curves": curves,
                        "seen": self.seen}
        return self.results


class ConfusionMatrix:
    """(nc+1)^2 confusion matrix, rows = predicted class, columns = true class, last index = background."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.nc, self.conf, self.iou_thres = int(nc), conf, iou_thres
        self.matrix = np.zeros((self.nc + 1, self.nc + 1), np.int64)

    def process_batch(self, detections, labels) -> None:
        """One image: detections (n, 6) x1, y1, x2, y2, conf, cls; labels (m, 5) cls, x1, y1, x2, y2."""
        self.update([detections], [labels])

    def update(self, preds: list, labels: list) -> None:
        """Many images at once; boxes xyxy as in process_batch. Matches never cross images."""
        d = [np.asarray(x, np.float64).reshape(-1, 6) for x in preds]
        g = [np.asarray(x, np.float64).reshape(-1, 5) for x in labels]
        dimg = np.repeat(np.arange(len(d)), [len(x) for x in d])
        gimg = np.repeat(np.arange(len(g)), [len(x) for x in g])
        D = np.concatenate(d) if d else np.zeros((0, 6))
        G = np.concatenate(g) if g else np.zeros((0, 5))
        sel = D[:, 4] > self.conf
        D, dimg = D[sel], dimg[sel]
        dc, gc = D[:, 5].astype(np.int64), G[:, 0].astype(np.int64)
        if len(gc) and (gc.max() >= self.nc or gc.min() < 0):
            raise ValueError(f"ConfusionMatrix: label class {int(gc.max())} outside 0..{self.nc - 1}")
        dc = np.where((dc >= 0) & (dc < self.nc), dc, self.nc)
        matched_d = np.zeros(len(D), bool)
        matched_g = np.zeros(len(G), bool)
        if len(D) and len(G):
            di, gi = _equal_key_pairs(gimg, dimg)  # same-image pairs only: no n x m matrix across the batch
            a, b = G[gi, 1:5], D[di, :4]
            inter = (np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2])).clip(0).prod(1)
            iou = inter / ((a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter + 1e-7)
            sel = iou > self.iou_thres
            gi, di, iou = gi[sel], di[sel], iou[sel]
            if len(gi):
                o = np.argsort(-iou, kind="stable")  # best overlaps claim first
                gi, di = gi[o], di[o]
                _, first = np.unique(di, return_index=True)
                first.sort()
                gi, di = gi[first], di[first]
                _, first = np.unique(gi, return_index=True)
                gi, di = gi[first], di[first]
                np.add.at(self.matrix, (dc[di], gc[gi]), 1)
                matched_d[di] = True
                matched_g[gi] = True
        np.add.at(self.matrix, (np.full((~matched_g).sum(), self.nc), gc[~matched_g]), 1)  # missed: background
        np.add.at(self.matrix, (dc[~matched_d], np.full((~matched_d).sum(), self.nc)), 1)  # false alarms

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        tp = np.diag(self.matrix)[:-1]
        fp = self.matrix.sum(1)[:-1] - tp
        return tp, fp

    def plot(self, save_dir: str | Path = ".", names=(), normalize: bool = True) -> Path:
        """Save confusion_matrix.png (columns normalised to sum 1 when normalize)."""
        plt = _pyplot()
        m = self.matrix.astype(np.float64)
        if normalize:
            m = m / (m.sum(0, keepdims=True) + 1e-9)
        m[m < 0.005] = np.nan  # leave empty cells blank
        labels = _names_for(np.arange(self.nc), names) + ["background"]
        n = self.nc + 1
        fig, ax = plt.subplots(1, 1, figsize=(12, 9), tight_layout=True)
        im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
        fig.colorbar(im, ax=ax)
        if n <= 31:
            ax.set_xticks(range(n), labels, rotation=90)
            ax.set_yticks(range(n), labels)
            if n <= 21:
                for (i, j), v in np.ndenumerate(m):
                    if not np.isnan(v):
                        ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("True")
        ax.set_ylabel("Predicted")
        ax.set_title("Confusion Matrix")
        f = Path(save_dir) / "confusion_matrix.png"
        fig.savefig(f, dpi=150)
        plt.close(fig)
        return f


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plot_curves(px: np.ndarray, py: np.ndarray, labels: list[str], mean_label: str, save_file: str | Path,
                 **axes) -> None:
    """One line per class (labelled when there are at most 20, grey otherwise), their mean in bold blue."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    for y, label in zip(py, labels):
        ax.plot(px, y, linewidth=1, **({"label": label} if 0 < len(py) < 21 else {"color": "grey"}))
    if len(py):
        ax.plot(px, py.mean(0), linewidth=3, color="blue", label=mean_label)
    ax.set(xlim=(0, 1), ylim=(0, 1), **axes)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    fig.savefig(save_file, dpi=150)
    plt.close(fig)


def _class_names(names, n: int) -> list[str]:
    names = list(names)
    return [str(names[i]) if i < len(names) else str(i) for i in range(n)]


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap50: np.ndarray, save_file: str | Path, names=()) -> None:
    """Precision-recall curve per class (COCO 101-point precision at IoU 0.5) and their mean."""
    labels = [f"{n} {ap50[i]:.3f}" for i, n in enumerate(_class_names(names, len(py)))]
    mean = f"all classes {ap50.mean():.3f} mAP@0.5" if len(py) else ""
    _plot_curves(px, py, labels, mean, save_file, xlabel="Recall", ylabel="Precision",
                 title="Precision-Recall Curve")


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_file: str | Path, names=(), xlabel: str = "Confidence",
                  ylabel: str = "Metric") -> None:
    """A metric against confidence per class and the class mean, marking the best mean."""
    mean = ""
    if len(py):
        y = py.mean(0)
        i = int(y.argmax())
        mean = f"all classes {y[i]:.2f} at {px[i]:.3f}"
    _plot_curves(px, py, _class_names(names, len(py)), mean, save_file, xlabel=xlabel, ylabel=ylabel,
                 title=f"{ylabel}-Confidence Curve")
