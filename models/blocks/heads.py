"""YOLOv5 detection and segmentation heads (Redmon & Farhadi, 2018 YOLOv3 anchors; Jocher et al. YOLOv5)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.layers import Conv
from models.registry import Row, head, register


def detect_args(row: Row):
    """Detect rows are [nc, anchors]; an int anchors means that many placeholder anchors per level."""
    args = list(row.args)
    if len(args) > 1 and isinstance(args[1], int):
        n_levels = len(row.frm) if isinstance(row.frm, list) else 1
        args[1] = [list(range(args[1] * 2))] * n_levels
    return head(Row(row.index, row.frm, row.n, args, row.ch, row.width_multiple, row.no))


def segment_args(row: Row):
    args, c2, n = detect_args(row)
    if len(args) > 4:  # [nc, anchors, nm, npr, ch]: prototype width follows width_multiple
        args[3] = row.scale_width(args[3])
    return args, c2, n


def make_grid(nx: int, ny: int, anchors_px: torch.Tensor):
    """(grid, anchor_grid) of one level, each (1, na, ny, nx, 2): cell offsets minus 0.5 (so that
    xy = 2 * sigmoid - 0.5 + cell) and the level's anchors in pixels."""
    d, t = anchors_px.device, anchors_px.dtype
    na = anchors_px.shape[0]
    shape = 1, na, ny, nx, 2
    yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
    grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
    return grid, anchors_px.view((1, na, 1, 1, 2)).expand(shape)


def decode_level(xi: torch.Tensor, grid: torch.Tensor, anchor_grid: torch.Tensor, stride) -> torch.Tensor:
    """YOLOv5's box decoding of one raw level (bs, na, ny, nx, no) -> (bs, na*ny*nx, no), xywh in input pixels;
    Detect at inference and the ONNX raw-output backend both use it."""
    bs, na, ny, nx, no = xi.shape
    y = xi.sigmoid()
    xy, wh, rest = y.split((2, 2, no - 4), 4)
    xy = (xy * 2 + grid) * stride
    wh = (wh * 2) ** 2 * anchor_grid
    return torch.cat((xy, wh, rest), 4).view(bs, na * nx * ny, no)


@register
class Detect(nn.Module):
    """Anchor-based detection head: one 1x1 conv per level predicting na * (nc + 5) values per cell."""
    yaml_args = staticmethod(detect_args)
    export = False  # export mode returns only the decoded tensor
    raw_export = False  # return per-level raw tensors only (for NPU toolchains that decode themselves)

    def __init__(self, nc: int = 80, anchors=(), ch=(), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace
        self.stride = torch.zeros(self.nl)

    def forward(self, x: list[torch.Tensor]):
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training and not self.raw_export:
                z.append(self.decode(i, x[i]))
        if self.training or self.raw_export:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def decode(self, i: int, xi: torch.Tensor) -> torch.Tensor:
        """Raw level output (bs, na, ny, nx, no) -> (bs, na*ny*nx, no) with xywh in input pixels."""
        if (self.grid[i].shape[2:4] != xi.shape[2:4] or self.grid[i].device != xi.device
                or torch.onnx.is_in_onnx_export()):
            self.grid[i], self.anchor_grid[i] = self._make_grid(xi.shape[3], xi.shape[2], i)
        return decode_level(xi, self.grid[i], self.anchor_grid[i], self.stride[i])

    def _make_grid(self, nx: int, ny: int, i: int):
        return make_grid(nx, ny, self.anchors[i] * self.stride[i])

    def initialize_biases(self, cf=None) -> None:
        """Objectness prior of ~8 objects per 640x640 image; class prior 0.6/nc (Lin et al., 2017 focal loss init)."""
        with torch.no_grad():
            for mi, s in zip(self.m, self.stride):
                b = mi.bias.view(self.na, -1)  # a view: the in-place adds land in the parameter
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:5 + self.nc] += math.log(0.6 / (self.nc - 0.99999)) if cf is None else torch.log(cf / cf.sum())


@register
class Proto(nn.Module):
    """Mask prototypes at 1/4 input resolution (Bolya et al., 2019 YOLACT)."""
    yaml_args = "channels"

    def __init__(self, c1: int, c_: int = 256, c2: int = 32):
        super().__init__()
        self.cv1 = Conv(c1, c_, k=3)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.cv2 = Conv(c_, c_, k=3)
        self.cv3 = Conv(c_, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


@register
class Segment(Detect):
    """Detect plus nm mask coefficients per anchor and a Proto branch on the first level."""
    yaml_args = staticmethod(segment_args)

    def __init__(self, nc: int = 80, anchors=(), nm: int = 32, npr: int = 256, ch=(), inplace: bool = True):
        super().__init__(nc, anchors, ch, inplace)
        self.nm = nm
        self.npr = npr
        self.no = 5 + nc + nm
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.proto = Proto(ch[0], npr, nm)

    def decode(self, i: int, xi: torch.Tensor) -> torch.Tensor:
        bs, _, ny, nx, _ = xi.shape
        if (self.grid[i].shape[2:4] != xi.shape[2:4] or self.grid[i].device != xi.device
                or torch.onnx.is_in_onnx_export()):
            self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
        xy, wh, conf, mask = xi.split((2, 2, self.nc + 1, self.nm), 4)
        xy = (xy.sigmoid() * 2 + self.grid[i]) * self.stride[i]
        wh = (wh.sigmoid() * 2) ** 2 * self.anchor_grid[i]
        return torch.cat((xy, wh, conf.sigmoid(), mask), 4).view(bs, self.na * nx * ny, self.no)

    def forward(self, x: list[torch.Tensor]):
        p = self.proto(x[0])
        out = super().forward(x)
        if self.training or self.raw_export:
            return out, p
        return (out, p) if self.export else (out[0], p, out[1])
