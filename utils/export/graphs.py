"""What an exported graph computes: the head switched to its export outputs, the decoded model, and the model
followed by NMS in the same graph (ONNX NonMaxSuppression or a scripted loop for TorchScript)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from models.blocks.heads import Segment
from utils.export.common import ExportError, head_of
from utils.inference.nms import MAX_WH


@contextlib.contextmanager
def export_mode(model: nn.Module, graph: str = "decoded"):
    """Switch the head to its export outputs for the duration of a trace, then restore it.

    The flags are set on this head instance only (other models in the process are unaffected), and the cached
    grids are dropped so the trace computes them from the input's shape: the graph then works at any shape.
    """
    m = head_of(model)
    saved = {k: m.__dict__.get(k, None) for k in ("export", "raw_export")}
    grids = (list(m.grid), list(m.anchor_grid))
    m.export, m.raw_export = graph != "raw", graph == "raw"
    m.grid = [torch.empty(0) for _ in range(m.nl)]
    m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
    try:
        yield m
    finally:
        for k, v in saved.items():
            if v is None:
                m.__dict__.pop(k, None)
            else:
                setattr(m, k, v)
        m.grid, m.anchor_grid = grids



_NMS_SCRIPT = None


def _scripted_select():
    """TorchScript function: per image, indices kept by NMS (score > conf, IoU > iou suppressed, at most max_det),
    as (K, 3) int64 rows [image, 0, box] in the order of ONNX NonMaxSuppression (image, then score descending).
    Scripted, not traced, so its per-image loop and data-dependent sizes stay dynamic in a TorchScript file."""
    global _NMS_SCRIPT
    if _NMS_SCRIPT is None:
        import torchvision  # registers torchvision::nms

        def select(boxes: torch.Tensor, scores: torch.Tensor, max_det: int, iou_thres: float,
                   conf_thres: float) -> torch.Tensor:
            out = [torch.zeros((0, 3), dtype=torch.long, device=boxes.device)]
            for b in range(boxes.shape[0]):
                s = scores[b, 0]
                cand = (s > conf_thres).nonzero().view(-1)
                keep = torch.ops.torchvision.nms(boxes[b][cand], s[cand], iou_thres)[:max_det]
                i = cand[keep]
                bi = torch.full_like(i, b)
                out.append(torch.stack((bi, torch.zeros_like(i), i), 1))
            return torch.cat(out, 0)

        _NMS_SCRIPT = torch.jit.script(select)
    return _NMS_SCRIPT


class _OnnxNMS(torch.autograd.Function):
    """Exports as one ONNX NonMaxSuppression node; runs the scripted selection while tracing."""

    @staticmethod
    def forward(ctx, boxes, scores, max_det: int, iou_thres: float, conf_thres: float):
        return _scripted_select()(boxes, scores, max_det, iou_thres, conf_thres)

    @staticmethod
    def symbolic(g, boxes, scores, max_det: int, iou_thres: float, conf_thres: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_thres], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([conf_thres], dtype=torch.float32)),
                    center_point_box_i=0)


class NMSModel(nn.Module):
    """Model + NMS (Neubeck & Van Gool, 2006) in one graph: (N, 3, H, W) -> (K, 7) rows
    [image, x1, y1, x2, y2, conf, cls], the same boxes as utils.inference.nms.non_max_suppression (single label per box,
    conf = obj * best class score, per-class NMS via the class coordinate offset, at most max_det per image)."""

    def __init__(self, model: nn.Module, conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 100,
                 agnostic: bool = False, onnx: bool = True):
        super().__init__()
        if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
            raise ExportError(f"--conf-thres {conf_thres} and --iou-thres {iou_thres} must be in [0, 1]")
        if max_det < 1:
            raise ExportError(f"--max-det must be >= 1, got {max_det}")
        self.model, self.onnx = model, onnx
        self.conf_thres, self.iou_thres, self.max_det, self.agnostic = conf_thres, iou_thres, int(max_det), agnostic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)  # (N, A, 5 + nc) decoded
        n = y.shape[1]
        xy, wh = y[..., 0:2], y[..., 2:4] / 2
        boxes = torch.cat((xy - wh, xy + wh), 2)  # xyxy, as utils.boxes.xywh2xyxy
        conf, cls = (y[..., 5:] * y[..., 4:5]).max(2, keepdim=True)
        cls = cls.to(y.dtype)
        shifted = boxes if self.agnostic else boxes + cls * MAX_WH
        scores = conf.transpose(1, 2).contiguous().float()  # (N, 1, A): one channel, so per-image max_det
        shifted = shifted.float()  # ONNX NonMaxSuppression takes float32 (a --half graph casts here)
        if self.onnx:
            sel = _OnnxNMS.apply(shifted, scores, self.max_det, self.iou_thres, self.conf_thres)
        else:
            sel = _scripted_select()(shifted, scores, self.max_det, self.iou_thres, self.conf_thres)
        flat = sel[:, 0] * n + sel[:, 2]
        rows = torch.cat((boxes, conf, cls), 2).reshape(-1, 6)[flat]
        return torch.cat((sel[:, 0:1].to(rows.dtype), rows), 1)


class DecodedModel(nn.Module):
    """Thin wrapper so every exported graph has one input and a plain tensor (or tuple) output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        y = self.model(x)
        return tuple(y) if isinstance(y, list) else y


def graph_module(model: nn.Module, graph: str, onnx: bool, nms_args: dict | None = None) -> nn.Module:
    if graph == "nms":
        return NMSModel(model, onnx=onnx, **(nms_args or {})).eval()
    return DecodedModel(model).eval()


def output_names(model: nn.Module, graph: str) -> list[str]:
    m = head_of(model)
    if graph == "raw":
        return [f"output{i}" for i in range(m.nl)] + (["proto"] if isinstance(m, Segment) else [])
    if isinstance(m, Segment):
        return ["output0", "output1"]
    return ["output0"]


@contextlib.contextmanager
def classic_shuffle(model: nn.Module):
    """Write every channel shuffle of this model as view-transpose-reshape for the duration of a trace (pnnx maps
    that to ncnn's ShuffleChannel; the default gather is faster in PyTorch and ONNX Runtime but unsupported by
    pnnx). The same permutation, so outputs are equal; set on these instances only, restored afterwards."""
    blocks = [m for m in model.modules() if getattr(type(m), "gather_shuffle", None) is True]
    for m in blocks:
        m.gather_shuffle = False
    try:
        yield model
    finally:
        for m in blocks:
            m.__dict__.pop("gather_shuffle", None)
