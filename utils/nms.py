"""Non-maximum suppression over decoded YOLO predictions, vectorised per image."""
from __future__ import annotations

import torch
import torchvision

from utils.boxes import xywh2xyxy

MAX_WH = 7680  # class offset in pixels: boxes of different classes never overlap after the shift


def non_max_suppression(prediction, conf_thres: float = 0.25, iou_thres: float = 0.45, classes=None,
                        agnostic: bool = False, multi_label: bool = False, labels=(), max_det: int = 300,
                        nm: int = 0, max_nms: int = 30000) -> list[torch.Tensor]:
    """Filter (bs, N, 5+nc+nm) predictions (xywh, obj, cls scores, masks) to per-image (k, 6+nm) tensors
    x1, y1, x2, y2, conf, cls(, masks). conf = obj * cls score. No time limit: every image is processed."""
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} must be in [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} must be in [0, 1]")
    if isinstance(prediction, (list, tuple)):  # (decoded, raw) from an eval forward
        prediction = prediction[0]
    bs = prediction.shape[0]
    nc = prediction.shape[2] - nm - 5
    mi = 5 + nc
    multi_label &= nc > 1
    device = prediction.device
    out = [torch.zeros((0, 6 + nm), device=device)] * bs
    candidates = prediction[..., 4] > conf_thres  # cheap objectness prefilter before any per-class work
    for xi in range(bs):
        x = prediction[xi][candidates[xi]]
        if labels and len(labels[xi]):  # auto-labelling: append ground truth as perfect predictions
            lb = labels[xi]
            v = torch.zeros((len(lb), nc + nm + 5), device=device)
            v[:, :4] = lb[:, 1:5]
            v[:, 4] = 1.0
            v[range(len(lb)), lb[:, 0].long() + 5] = 1.0
            x = torch.cat((x, v), 0)
        if not x.shape[0]:
            continue
        scores = x[:, 5:mi] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        mask = x[:, mi:]
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], scores[i, j, None], j[:, None].float(), mask[i]), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            keep = conf.view(-1) > conf_thres
            x = torch.cat((box, conf, j.float(), mask), 1)[keep]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=device)).any(1)]
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        offsets = x[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou_thres)[:max_det]
        out[xi] = x[keep]
    return out
