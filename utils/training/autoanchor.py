"""AutoAnchor: check anchor fit by best possible recall and re-fit with k-means + evolution (Jocher et al., YOLOv5).

Anchors are fitted in pixels at the training image size; the Detect head stores them in grid units.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from utils.general import LOGGER, colorstr

PREFIX = colorstr("AutoAnchor: ")


def _detect_head(model):
    """Detect layer of a (possibly DataParallel-wrapped) model."""
    return (model.module if hasattr(model, "module") else model).model[-1]


def check_anchor_order(m) -> bool:
    """Flip the Detect head's anchors if their mean area does not grow with stride; return whether it flipped."""
    area = m.anchors.prod(-1).mean(-1).view(-1)  # mean anchor area per level
    da = area[-1] - area[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        LOGGER.info(f"{PREFIX}Reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)
        return True
    return False


def anchor_ratio_metric(wh: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per label and anchor: min over w and h of min(r, 1/r) (1 = perfect); also each label's best anchor."""
    r = wh[:, None] / k[None]
    x = torch.min(r, 1 / r).min(2)[0]
    return x, x.max(1)[0]


def anchor_metrics(wh: torch.Tensor, k: torch.Tensor, thr: float = 4.0) -> tuple[float, float]:
    """(BPR, anchors above threshold per target) for label wh (n, 2) and anchors k (m, 2) in pixels.

    BPR is the fraction of labels with at least one anchor whose wh ratio lies within thr in both sides,
    i.e. that the loss's anchor_t matching could assign at all.
    """
    x, best = anchor_ratio_metric(wh, k)
    bpr = (best > 1 / thr).float().mean()
    aat = (x > 1 / thr).float().sum(1).mean()
    return float(bpr), float(aat)


def _label_wh(dataset, img_size: int, scale: np.ndarray | None = None) -> np.ndarray:
    """Label widths/heights in pixels with each image's long side resized to img_size."""
    shapes = np.asarray(dataset.shapes, dtype=np.float64)
    if shapes.ndim != 2 or shapes.shape[1] != 2:
        raise ValueError(f"dataset.shapes must be (N, 2) image (w, h), got shape {shapes.shape}")
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    if scale is not None:
        shapes = shapes * scale
    parts = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(shapes, dataset.labels)]
    return np.concatenate(parts, 0) if parts else np.zeros((0, 2))


def check_anchors(dataset, model, thr: float = 4.0, imgsz: int = 640) -> float:
    """Log the anchors' fit to the dataset and replace them with evolved ones when BPR < 0.98 and they improve.

    Returns the best possible recall of the anchors the model ends up with.
    """
    m = _detect_head(model)
    # Random 0.9-1.1 rescale per image mimics scale augmentation so the fit is not brittle to one size.
    scale = np.random.uniform(0.9, 1.1, size=(len(dataset.shapes), 1))
    wh = torch.tensor(_label_wh(dataset, imgsz, scale), dtype=torch.float32)
    if len(wh) == 0:
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ no labels found, skipping anchor check")
        return 0.0

    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    anchors_px = m.anchors.clone() * stride
    bpr, aat = anchor_metrics(wh, anchors_px.cpu().view(-1, 2).float(), thr)
    s = f"\n{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > 0.98:
        LOGGER.info(f"{s}Current anchors are a good fit to dataset ✅")
        return bpr

    LOGGER.info(f"{s}Anchors are a poor fit to dataset ⚠️, attempting to improve...")
    na = m.anchors.numel() // 2
    new = kmean_anchors(dataset, n=na, img_size=imgsz, thr=thr, gen=1000, verbose=False)
    new_bpr, _ = anchor_metrics(wh, torch.tensor(new, dtype=torch.float32), thr)
    if new_bpr > bpr:
        new = torch.tensor(new, device=m.anchors.device).type_as(m.anchors)
        m.anchors[:] = new.view_as(m.anchors)
        check_anchor_order(m)  # kmean_anchors sorts by area, but the head may run large-to-small
        m.anchors /= stride
        LOGGER.info(f"{PREFIX}Done ✅ (optional: update model *.yaml to use these anchors in the future)")
        return new_bpr
    LOGGER.info(f"{PREFIX}Done ⚠️ (original anchors better than new anchors, proceeding with original anchors)")
    return bpr


def kmeans(obs: np.ndarray, k: int, iter: int = 30, thresh: float = 1e-5, rng=None) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with `iter` random restarts (Lloyd, 1982); returns (centroids (k, d), mean distance).

    Restarts start from k distinct observations; a cluster that empties is re-seeded with the
    observation farthest from its centroid, so exactly k centroids come back.
    """
    rng = np.random if rng is None else rng
    obs = np.asarray(obs, dtype=np.float64)
    if not 0 < k <= len(obs):
        raise ValueError(f"kmeans needs 1 <= k <= number of observations, got k={k}, n={len(obs)}")
    best, best_dist = None, np.inf
    for _ in range(max(iter, 1)):
        c = obs[rng.permutation(len(obs))[:k]].copy()
        prev = np.inf
        for _ in range(300):
            d = ((obs[:, None] - c[None]) ** 2).sum(-1)  # (n, k) squared distances
            lab = d.argmin(1)
            dmin = np.sqrt(d[np.arange(len(obs)), lab])
            dist = dmin.mean()
            counts = np.bincount(lab, minlength=k)
            for j in np.flatnonzero(counts == 0):  # rare: at most k per pass
                far = dmin.argmax()
                c[j], dmin[far] = obs[far], 0.0
            sums = np.stack([np.bincount(lab, weights=obs[:, i], minlength=k) for i in range(obs.shape[1])], 1)
            nz = counts > 0
            c[nz] = sums[nz] / counts[nz, None]
            if prev - dist <= thresh:  # distortion stopped falling
                break
            prev = dist
        if dist < best_dist:
            best, best_dist = c.copy(), dist
    return best, float(best_dist)


def kmean_anchors(dataset, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  verbose: bool = True, seed: int | None = None) -> np.ndarray:
    """Evolve n anchors (pixels, sorted by area) for a dataset: k-means on whitened wh then genetic mutation.

    dataset: object with .shapes (N, 2) image w, h and .labels, a list of (k, 5) cls, x, y, w, h normalised.
    seed: seeds a private RNG for reproducible anchors; None uses numpy's global RNG (e.g. set by training seeds).
    """
    rng = np.random if seed is None else np.random.RandomState(seed)
    thr = 1 / thr

    wh0 = _label_wh(dataset, img_size)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        LOGGER.info(f"{PREFIX}WARNING ⚠️ Extremely small objects found: {tiny} of {len(wh0)} labels are "
                    "<3 pixels in size")
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)  # sub-2-px labels carry no usable shape

    if 0 < n <= len(wh):
        s = wh.std(0)
        s[s == 0] = 1.0  # identical sizes on one axis: nothing to whiten
        k = kmeans(wh / s, n, iter=30, rng=rng)[0] * s
    else:
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ switching strategies from kmeans to random init "
                       f"({len(wh)} labels < {n} anchors)")
        k = np.sort(rng.rand(n * 2)).reshape(n, 2) * img_size
    wh_t, wh0_t = torch.tensor(wh, dtype=torch.float32), torch.tensor(wh0, dtype=torch.float32)

    def fitness(anchors: np.ndarray) -> float:
        # mean best-anchor ratio, counting only labels the loss could match at all
        _, best = anchor_ratio_metric(wh_t, torch.tensor(anchors, dtype=torch.float32))
        return float((best * (best > thr).float()).mean())

    def report(anchors: np.ndarray, log: bool = True) -> np.ndarray:
        anchors = anchors[np.argsort(anchors.prod(1))]
        if log and len(wh0_t):
            x, best = anchor_ratio_metric(wh0_t, torch.tensor(anchors, dtype=torch.float32))
            bpr, aat = (best > thr).float().mean(), (x > thr).float().mean() * n
            past = x[x > thr]
            msg = (f"{PREFIX}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr\n"
                   f"{PREFIX}n={n}, img_size={img_size}, metric_all={x.mean():.3f}/{best.mean():.3f}-mean/best, "
                   f"past_thr={(past.mean() if len(past) else torch.tensor(0.0)):.3f}-mean: ")
            msg += ", ".join(f"{round(float(a))},{round(float(b))}" for a, b in anchors)
            LOGGER.info(msg)
        return anchors

    k = report(k, log=False)
    f, sh, mp, sigma = fitness(k), k.shape, 0.9, 0.1  # mutation probability and scale
    pbar = tqdm(range(gen), desc=f"{PREFIX}Evolving anchors with Genetic Algorithm")
    for _ in pbar:
        v = np.ones(sh)
        while (v == 1).all():  # insist on some change
            v = ((rng.random_sample(sh) < mp) * rng.random_sample() * rng.randn(*sh) * sigma + 1).clip(0.3, 3.0)
        kg = (k.copy() * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg.copy()
            pbar.desc = f"{PREFIX}Evolving anchors with Genetic Algorithm: fitness = {f:.4f}"
            if verbose:
                report(k)
    return report(k).astype(np.float32)
