"""Metadata stored with every export: stride, class names, model yaml, image size, output layout."""
from __future__ import annotations

import datetime
import json

from models.blocks.heads import Segment
from utils.export.common import head_of

GRAPH_FORMATS = ("decoded", "nms", "raw")  # what the graph returns; stored as metadata 'format'
NMS_COLUMNS = ["image", "x1", "y1", "x2", "y2", "conf", "cls"]  # rows of an --nms graph's output0


def model_names(model) -> dict[int, str]:
    names = getattr(model, "names", None) or {}
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    nc = head_of(model).nc
    return {int(k): str(v) for k, v in names.items()} if len(names) == nc else {i: f"class{i}" for i in range(nc)}


def export_metadata(model, imgsz, batch_size: int, graph: str, dynamic: bool, half: bool = False,
                    nms_args: dict | None = None) -> dict:
    """Everything a runtime needs besides the graph: stride, names, yaml, output layout."""
    m = head_of(model)
    meta = {
        "stride": str(int(max(model.stride))),
        "names": json.dumps(model_names(model)),
        "yaml": json.dumps(getattr(model, "yaml", {}), default=str),
        "format": graph,
        "imgsz": json.dumps([int(imgsz[0]), int(imgsz[1])]),
        "batch": str(int(batch_size)),
        "dynamic": json.dumps(bool(dynamic)),
        "half": json.dumps(bool(half)),
        "nc": str(int(m.nc)),
        "strides": json.dumps([int(s) for s in model.stride]),
        "anchors": json.dumps((m.anchors * m.stride.view(-1, 1, 1).to(m.anchors)).tolist()),  # pixels per level
        "task": "segment" if isinstance(m, Segment) else "detect",
        "author": "yolov5-lite export.py",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if graph == "nms":
        meta["output_columns"] = json.dumps(NMS_COLUMNS)
        meta.update({k: json.dumps(v) for k, v in (nms_args or {}).items()})
    elif graph == "raw":
        meta["output_layout"] = "per level (N, na, ny, nx, 5 + nc) logits; decode: s = sigmoid(v); " \
                                "xy = (2 s - 0.5 + cell) * stride; wh = (2 s)^2 * anchor; obj, cls = s"
    return meta

