"""Post-training INT8 for OpenVINO with NNCF: the FP32 IR quantised on letterboxed train images, the Detect layer
(its 1x1 convs and the box decoding) left in float as in the ONNX Runtime path (int8.quantize_int8)."""
from __future__ import annotations

import logging
from pathlib import Path

from utils.export.common import quiet_logger, staged_folder
from utils.export.int8 import DEFAULT_CALIB_IMAGES, calibration_files, letterbox_rgb
from utils.general import LOGGER
from utils.runtimes import METADATA_FILE, read_metadata, require, write_metadata


def require_nncf():
    """Import nncf; missing, a one-line ImportError saying what to install."""
    try:
        import nncf
    except ImportError:
        raise ImportError("OpenVINO INT8 needs nncf: pip install nncf") from None
    return nncf


def quantize_openvino_int8(fp32_folder: str | Path, int8_folder: str | Path, data, imgsz, head_index: int,
                           n_images: int = DEFAULT_CALIB_IMAGES) -> Path:
    """NNCF post-training quantisation (min-max activations, per-channel symmetric weights, MIXED preset:
    asymmetric activations) of an `_openvino_model/` folder into int8_folder, with the same metadata + int8."""
    ov, nncf = require("openvino"), require_nncf()
    fp32_folder, int8_folder = Path(fp32_folder), Path(int8_folder)
    xml = next(fp32_folder.glob("*.xml"))
    files = calibration_files(data, n_images)
    images = [x for x in (letterbox_rgb(f, imgsz) for f in files) if x is not None]  # (1, 3, h, w) each
    model = ov.Core().read_model(str(xml))
    # the head's nodes keep the ONNX scope names (/model.<i>/...): everything traced from the Detect layer
    ignored = nncf.IgnoredScope(patterns=[rf".*/model\.{head_index}/.*"], validate=False)
    with quiet_logger("nncf", logging.WARNING):  # nncf logs every op it leaves unquantised
        q = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images),
                          preset=nncf.QuantizationPreset.MIXED, ignored_scope=ignored)
    with staged_folder(int8_folder) as tmp:
        ov.save_model(q, str(tmp / xml.name), compress_to_fp16=False)
        meta = read_metadata(fp32_folder / METADATA_FILE)
        write_metadata(tmp / METADATA_FILE, {**meta, "int8": True, "calib_images": len(images)})
    LOGGER.info(f"OpenVINO INT8: quantised on {len(images)} calibration images, head (row {head_index}) in float")
    return int8_folder

