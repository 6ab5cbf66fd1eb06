"""Image/label augmentations for detection training (Bochkovskiy et al., YOLOv4; Jocher et al., YOLOv5).

Images are HWC uint8 BGR numpy arrays; labels are (n, 5) float arrays [cls, x1, y1, x2, y2] in pixels unless a
function says otherwise. Everything is vectorised over boxes; OpenCV does the pixel work.
"""
from __future__ import annotations

import math
import random

import cv2
import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 114  # grey used for letterbox / mosaic / warp borders
# augmentation part of hyp.scratch-low.yaml, used for keys a hyp dict leaves out
DEFAULT_AUGMENT_HYP = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5,
                       "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0,
                       "copy_paste": 0.0}


def letterbox(im: np.ndarray, new_shape: int | tuple[int, int] = (640, 640), color=(114, 114, 114),
              auto: bool = True, scaleFill: bool = False, scaleup: bool = True, stride: int = 32):
    """Resize keeping aspect ratio, then pad to new_shape (h, w); returns (im, (rw, rh) ratio, (dw, dh) pad per side).

    auto pads only to the next multiple of stride (minimum rectangle); scaleFill stretches without padding;
    scaleup=False never enlarges (better mAP on val, as YOLOv5 does).
    """
    shape = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw, dh = dw / 2, dh / 2  # split padding between both sides
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    if top or bottom or left or right:
        im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (float(dw), float(dh))


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> None:
    """Random hue/saturation/value gains applied in place through per-channel lookup tables."""
    if not (hgain or sgain or vgain):
        return
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV 8-bit hue spans 0-179
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Mask of warped boxes worth keeping: (4, n) xyxy before (already scaled) and after augmentation.

    Kept when w, h > wh_thr pixels, area after / area before > area_thr and aspect ratio < ar_thr.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(im: np.ndarray, targets: np.ndarray | None = None, degrees: float = 10,
                       translate: float = 0.1, scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0)):
    """Random homography (rotation, scale, shear, translation, perspective) of an image and its xyxy pixel labels.

    border < 0 crops (used after mosaic: a 2s canvas becomes s). Boxes are the min/max of their warped corners,
    clipped, then filtered by box_candidates.
    """
    targets = np.zeros((0, 5)) if targets is None else targets
    height = im.shape[0] + border[0] * 2
    width = im.shape[1] + border[1] * 2

    C = np.eye(3)  # move the centre to the origin so rotation/scale act about it
    C[0, 2] = -im.shape[1] / 2
    C[1, 2] = -im.shape[0] / 2
    P = np.eye(3)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * height
    M = T @ S @ R @ P @ C  # right to left: centre first, translate last

    if border[0] or border[1] or (np.eye(3) != M).any():
        fill = (PAD_VALUE,) * 3
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=fill)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=fill)

    n = len(targets)
    if n:
        corners = np.ones((n * 4, 3))
        corners[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        corners = corners @ M.T
        xy = corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]
        xy = xy.reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(box1=targets[:, 1:5].T * s, box2=new.T, area_thr=0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray):
    """Blend two same-size images with ratio ~ Beta(32, 32) and keep both label sets (Zhang et al., 2018)."""
    r = np.random.beta(32.0, 32.0)
    im = (im.astype(np.float32) * r + im2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def copy_paste(im: np.ndarray, labels: np.ndarray, p: float = 0.5):
    """Box-level copy-paste (Ghiasi et al., 2021): paste mirrored copies of a random fraction p of the boxes.

    YOLOv5 pastes segment masks; with box labels only we paste the box patch at the horizontally mirrored
    position when it would cover at most 30% of any existing box.
    """
    n = len(labels)
    if not p or not n:
        return im, labels
    w = im.shape[1]
    boxes = labels[:, 1:5]
    chosen = np.random.permutation(n)[: int(round(p * n))]
    if not len(chosen):
        return im, labels
    mirrored = boxes[chosen].copy()
    mirrored[:, [0, 2]] = w - boxes[chosen][:, [2, 0]]
    ioa = _ioa(mirrored, boxes)
    new = []
    for j, k in enumerate(chosen):  # few boxes per image; the pixel copy is the cost, not the loop
        if ioa[j].max() >= 0.30:
            continue
        x1, y1, x2, y2 = np.round(boxes[k]).astype(int)
        mx1 = w - x2
        if x2 <= x1 or y2 <= y1:
            continue
        im[y1:y2, mx1:mx1 + (x2 - x1)] = im[y1:y2, x1:x2][:, ::-1]
        new.append(np.concatenate(([labels[k, 0]], [mx1, y1, mx1 + (x2 - x1), y2])))
        boxes = np.concatenate((boxes, np.asarray(new[-1][1:])[None]), 0)
        ioa = np.concatenate((ioa, _ioa(mirrored, boxes[-1:])), 1)
    if new:
        labels = np.concatenate((labels, np.asarray(new, dtype=labels.dtype)), 0)
    return im, labels


def _ioa(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection over the area of box2: (N, 4) x (M, 4) xyxy -> (N, M)."""
    lt = np.maximum(box1[:, None, :2], box2[None, :, :2])
    rb = np.minimum(box1[:, None, 2:], box2[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    return inter / ((box2[:, 2:] - box2[:, :2]).prod(1)[None] + eps)


def random_flip(im: np.ndarray, labels: np.ndarray, flipud: float, fliplr: float):
    """Vertical/horizontal flips of an image and its normalised xywh labels [cls, x, y, w, h]."""
    if flipud and random.random() < flipud:
        im = np.flipud(im)
        if len(labels):
            labels[:, 2] = 1 - labels[:, 2]
    if fliplr and random.random() < fliplr:
        im = np.fliplr(im)
        if len(labels):
            labels[:, 1] = 1 - labels[:, 1]
    return im, labels


def multi_scale_size(imgsz: int, stride: int, low: float = 0.5, high: float = 1.5) -> int:
    """Random training size in [low, high] * imgsz rounded down to a multiple of stride (--multi-scale)."""
    sz = random.randrange(int(imgsz * low), int(imgsz * high) + stride)
    return max(int(sz // stride * stride), stride)


def multi_scale(imgs: torch.Tensor, imgsz: int, stride: int) -> torch.Tensor:
    """Resize a (bs, 3, H, W) float batch so its long side is a random multiple of stride; labels are normalised."""
    sz = multi_scale_size(imgsz, stride)
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / stride) * stride for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


__all__ = ["letterbox", "augment_hsv", "random_perspective", "box_candidates", "mixup", "copy_paste",
           "random_flip", "multi_scale", "multi_scale_size"]
