"""YOLOv5 detection loss: CIoU box regression, IoU-targeted objectness and class BCE (Jocher et al., YOLOv5)."""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.boxes import bbox_iou
from utils.torch_utils import de_parallel

# Per-level objectness weights: small-stride levels hold many easy negatives, so they are weighted up.
_BALANCE = {3: [4.0, 1.0, 0.4]}
_BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]  # P3-P7

# Cell offsets (in units of g) for the matched cell and its four possible neighbours: self, left, up, right, down.
_NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:
    """Positive and negative BCE targets under label smoothing (Szegedy et al., 2016): 1 - eps/2 and eps/2."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss wrapper around a BCE-with-logits criterion (Lin et al., 2017, 'Focal Loss for Dense Detection')."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the modulation is applied element-wise before reducing

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        prob = pred.sigmoid()
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def scaled_gains(hyp: dict, nc: int, nl: int, imgsz: int) -> dict[str, float]:
    """The box/cls/obj loss gains of hyp for this model and image size. YOLOv5's hyp files are tuned for 3 output
    levels, 80 classes and 640 px: per-level sums grow with the levels, class BCE with the classes and objectness
    with the cell count (spec: Loss). The factor is formed first, as YOLOv5's in-place `hyp[k] *= ...` does, so the
    gains match its float values exactly."""
    return {"box": hyp["box"] * (3 / nl),
            "cls": hyp["cls"] * (nc / 80 * 3 / nl),
            "obj": hyp["obj"] * ((imgsz / 640) ** 2 * 3 / nl)}


class ComputeLoss:
    """YOLOv5 training loss over the raw per-level Detect outputs (Jocher et al., YOLOv5 v6/v7).

    ComputeLoss(model, hyp=hyp, imgsz=640) takes the hyperparameters as written in a hyp file and scales the
    box/cls/obj gains itself (scaled_gains; hyp is not changed). ComputeLoss(model) reads model.hyp as gains that are
    already scaled, the way YOLOv5's train.py leaves them.
    """

    sort_obj_iou = False

    def __init__(self, model: nn.Module, autobalance: bool = False, hyp: dict | None = None,
                 imgsz: int | None = None):
        m = de_parallel(model).model[-1]  # Detect head
        first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        device = first.device if first is not None else m.anchors.device
        if hyp is None:
            h = model.hyp
        else:
            if imgsz is None:
                raise ValueError("ComputeLoss(hyp=...) needs imgsz: the objectness gain scales with the image size")
            h = {**hyp, **scaled_gains(hyp, m.nc, m.nl, imgsz)}

        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["cls_pw"]], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["obj_pw"]], device=device))
        self.cp, self.cn = smooth_BCE(eps=h.get("label_smoothing", 0.0))
        if h.get("fl_gamma", 0.0) > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, h["fl_gamma"]), FocalLoss(bce_obj, h["fl_gamma"])
        self.BCEcls, self.BCEobj = bce_cls, bce_obj

        self.balance = list(_BALANCE.get(m.nl, _BALANCE_DEFAULT))
        self.ssi = [float(s) for s in m.stride].index(16.0) if autobalance else 0  # stride-16 level is the anchor
        self.gr = 1.0  # objectness target = gr * iou + (1 - gr)
        self.autobalance = autobalance
        self.hyp = h
        self.na, self.nc, self.nl = m.na, m.nc, m.nl
        self.anchors = m.anchors.to(device)  # (nl, na, 2) grid units
        self.device = device

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (total * batch_size with shape (1,), detached [box, obj, cls])."""
        lcls = torch.zeros(1, device=self.device)
        lbox = torch.zeros(1, device=self.device)
        lobj = torch.zeros(1, device=self.device)
        tcls, tbox, indices, anchors = self.build_targets(p, targets)

        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=pi.device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                # Bounded decode: xy in (-0.5, 1.5) cells, wh in (0, 4) anchors, matching anchor_t = 4.
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                pbox = torch.cat((pxy, pwh), 1)
                iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze(-1)
                lbox = lbox + (1.0 - iou).mean()

                iou = iou.detach().clamp(0).type(tobj.dtype)
                if self.sort_obj_iou:  # let the best of several writes to one cell land last
                    order = iou.argsort()
                    b, a, gj, gi, iou = b[order], a[order], gj[order], gi[order], iou[order]
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou

                if self.nc > 1:  # a single class is fully described by objectness
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=t.device), tcls[i]] = self.cp
                    lcls = lcls + self.BCEcls(pcls, t)

            obji = self.BCEobj(pi[..., 4], tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()

        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, p: list[torch.Tensor], targets: torch.Tensor):
        """Assign each target to anchors with wh ratio < anchor_t, in its own cell and its 2 nearest neighbours.

        Returns per level: class ids, boxes (xy offset from cell corner, wh) in grid units,
        (image, anchor, gy, gx) indices and the matched anchors.
        """
        na, nt = self.na, targets.shape[0]
        dev = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        g = 0.5  # neighbour band: a centre within 0.5 of a cell edge also claims the cell across that edge
        off = _NEIGHBOURS.to(dev) * g

        # (na, nt, 7): every target copied once per anchor, with the anchor index appended
        ai = torch.arange(na, device=dev, dtype=targets.dtype).view(na, 1).expand(na, nt)
        targets = torch.cat((targets.unsqueeze(0).expand(na, nt, 6), ai[..., None]), 2)
        gain = torch.ones(7, device=dev, dtype=targets.dtype)

        for i in range(self.nl):
            anchors = self.anchors[i].to(dev)
            ny, nx = p[i].shape[2], p[i].shape[3]
            gain[2:6] = torch.tensor([nx, ny, nx, ny], device=dev, dtype=targets.dtype)
            t = targets * gain  # to grid units
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                keep = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
                t = t[keep]

                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance from the far edge
                left, up = ((gxy % 1 < g) & (gxy > 1)).T
                right, down = ((gxi % 1 < g) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.unsqueeze(0).expand(5, *t.shape)[sel]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
            else:
                t = targets[0]
                offsets = 0

            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a = a.long().view(-1)
            b, c = bc.long().T
            # A centre exactly on the far image edge (x == 1) would index one past the grid: clamp it back in,
            # and measure the box offset from the clamped cell so target and prediction share a cell.
            gij = (gxy - offsets).long()
            gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
            gij = torch.stack((gi, gj), 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
