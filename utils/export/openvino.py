"""OpenVINO IR writer: the fused model's ONNX converted by openvino.convert_model into a `<stem>_openvino_model/`
folder (<stem>.xml, <stem>.bin, metadata.yaml as YOLOv5 lays it out), weights kept float32."""
from __future__ import annotations

from pathlib import Path

from utils.export.common import staged_folder
from utils.runtimes import METADATA_FILE, require, write_metadata


def export_openvino(onnx_file: str | Path, folder: str | Path, metadata: dict) -> Path:
    """Convert onnx_file into folder (replaced whole, so a failed conversion leaves no half-written model)."""
    ov = require("openvino")
    folder = Path(folder)
    stem = folder.name.removesuffix("_openvino_model") or "model"
    with staged_folder(folder) as tmp:
        m = ov.convert_model(str(onnx_file))
        ov.save_model(m, str(tmp / f"{stem}.xml"), compress_to_fp16=False)  # float32, as exported
        write_metadata(tmp / METADATA_FILE, metadata)
    return folder
