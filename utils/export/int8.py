"""Post-training static INT8 with ONNX Runtime: calibration images, the quantiser, the FP32-vs-INT8 mAP check."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch.nn as nn

from utils.export.common import ExportError, atomic_path, quiet_logger
from utils.export.onnx import require_onnx
from utils.general import LOGGER, TQDM_BAR_FORMAT, colorstr

DEFAULT_CALIB_IMAGES = 200


def letterbox_rgb(path: str, imgsz) -> np.ndarray | None:
    """One image as the detector sees it at a fixed shape: letterboxed (pad 114), RGB, (1, 3, h, w) float 0-1."""
    import cv2

    from utils.data.augmentations import letterbox
    im = cv2.imread(str(path))
    if im is None:
        LOGGER.warning(f"WARNING ⚠️ skipping unreadable calibration image {path}")
        return None
    im = letterbox(im, tuple(imgsz), auto=False)[0]
    return np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255.0


def calibration_files(data, n: int, split: str = "train", seed: int = 0) -> list[str]:
    """n images spread evenly over the dataset split (deterministic)."""
    from utils.data.dataloaders import check_dataset, list_image_files
    d = check_dataset(data)
    files = list_image_files(d[split])
    if n <= 0:
        raise ExportError(f"--calib-images must be >= 1, got {n}")
    if n >= len(files):
        return files
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in idx]


def head_nodes(proto, head_index: int) -> list[str]:
    """Names of the nodes traced from the Detect layer and of everything downstream of them (decode, NMS):
    these stay float."""
    scope = f"/model.{head_index}/"
    nodes = list(proto.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    todo = [n for n in nodes if scope in n.name]
    seen = {id(n) for n in todo}
    while todo:
        for out in todo.pop().output:
            for c in consumers.get(out, []):
                if id(c) not in seen:
                    seen.add(id(c))
                    todo.append(c)
    return [n.name for n in nodes if id(n) in seen and n.name]


def cpu_lacks_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True on an x86 CPU whose flags show AVX2 but no VNNI (AVX512_VNNI or AVX_VNNI); False where unknown."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path(cpuinfo).read_text().splitlines()
                      if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & set(flags)


def quantize_int8(fp32_file: str | Path, int8_file: str | Path, data, imgsz, head_index: int,
                  n_images: int = DEFAULT_CALIB_IMAGES, per_channel: bool = True, head_convs: bool = False,
                  reduce_range: bool = False) -> Path:
    """Post-training static INT8 (QDQ, per-channel weights) with ONNX Runtime, calibrated on n letterboxed train
    images (Jacob et al., 2018; ORT QDQ format). The Detect layer (its 1x1 convs and the box decoding) stays
    float: quantising the decode's pixel arithmetic costs mAP and saves hardly any time. head_convs=True also
    quantises the 1x1 convs (worth it at large nc; their logits then reach the float decode as int8).
    reduce_range=True stores 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 pairs into a 16-bit sum that
    can saturate (ONNX Runtime's and OpenVINO's documented caveat), which 7-bit weights avoid at a small cost."""
    require_onnx(runtime=True)
    if not reduce_range and cpu_lacks_vnni():
        LOGGER.warning("WARNING ⚠️ this CPU has no VNNI: its INT8 kernels can saturate u8 x s8 products and lose "
                       "accuracy; export with --int8-reduce-range for INT8 models meant for such CPUs")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from tqdm import tqdm

    files = calibration_files(data, n_images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(tqdm(files, desc=f"{colorstr('INT8:')} calibrating", bar_format=TQDM_BAR_FORMAT))

        def get_next(self):
            for f in self.it:
                x = letterbox_rgb(f, imgsz)
                if x is not None:
                    return {"images": x}
            return None

    import onnx
    int8_file = Path(int8_file)
    tmp, pre = atomic_path(int8_file), atomic_path(int8_file.with_name(int8_file.stem + "_pre.onnx"))
    try:
        try:  # shape inference + constant folding: the quantiser then sees every conv bias as an initializer
            from onnxruntime.quantization.shape_inference import quant_pre_process
            with quiet_logger(None, logging.ERROR):  # onnxruntime.quantization advises via the root logger
                quant_pre_process(str(fp32_file), str(pre))
            src = pre
        except Exception as e:  # pre-processing only helps; quantise the graph as exported if it fails
            LOGGER.warning(f"WARNING ⚠️ INT8 pre-processing skipped ({type(e).__name__}: {e})")
            src = Path(fp32_file)
        exclude = head_nodes(onnx.load(str(src), load_external_data=False), head_index)
        if head_convs:  # quantise the head's 1x1 convs too (faster at large nc); the decode stays float
            exclude = [n for n in exclude if not (n.endswith("/Conv") and f"/model.{head_index}/m." in n)]
        with quiet_logger(None, logging.ERROR):  # onnxruntime.quantization advises via the root logger
            quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                            reduce_range=reduce_range,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        proto = onnx.load(str(tmp))
        meta = {p.key: p.value for p in onnx.load(str(fp32_file), load_external_data=False).metadata_props}
        meta.update(int8=json.dumps(True), calib_images=str(len(files)))
        del proto.metadata_props[:]
        for k, v in meta.items():
            p = proto.metadata_props.add()
            p.key, p.value = k, v
        onnx.save(proto, str(tmp))
        os.replace(tmp, int8_file)
    finally:
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    return int8_file


def int8_activation_note(model: nn.Module) -> str | None:
    """Advice for an INT8 export whose model uses SiLU, or None. ONNX Runtime folds ReLU into its INT8 convs, but
    runs each SiLU as two more INT8 ops (QLinearSigmoid + QLinearMul) that get no faster with a second thread:
    most of why the SiLU nano models gain far less from INT8 than their ReLU variants (README, deployment speed)."""
    n = sum(isinstance(m, nn.SiLU) for m in model.modules())
    if not n:
        return None
    return (f"{n} SiLU activations each run as two INT8 ops in ONNX Runtime, which limits the INT8 speed-up; "
            f"for INT8 deployment train a ReLU variant (yaml key 'activation: nn.ReLU()', e.g. yolov5n_ReLU.yaml)")


def compare_int8(fp32_file: Path, int8_file: Path, validate: Callable[[Path, str], tuple[float, float]]) -> dict:
    """mAP50 and mAP50-95 of the FP32 and INT8 files; validate(file, tag) -> (mAP50, mAP50-95) runs the
    validation (export.compare_int8 passes val.run at conf 0.001), so this library module never imports a script."""
    out = {}
    for tag, f in (("fp32", fp32_file), ("int8", int8_file)):
        LOGGER.info(f"\n{colorstr('INT8:')} validating {tag} {Path(f).name} ...")
        m50, m = validate(Path(f), tag)
        out[tag] = {"mAP50": float(m50), "mAP50-95": float(m)}
    d50, d = out["int8"]["mAP50"] - out["fp32"]["mAP50"], out["int8"]["mAP50-95"] - out["fp32"]["mAP50-95"]
    LOGGER.info(f"{colorstr('INT8:')} mAP50 FP32 {out['fp32']['mAP50']:.4f} -> INT8 {out['int8']['mAP50']:.4f} "
                f"({d50 * 100:+.2f} points); mAP50-95 {out['fp32']['mAP50-95']:.4f} -> {out['int8']['mAP50-95']:.4f} "
                f"({d * 100:+.2f} points)")
    return out

