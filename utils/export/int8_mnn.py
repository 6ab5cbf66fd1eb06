"""Post-training INT8 for MNN with MNN's own offline quantiser (the `quantized.out` tool that the MNN package
compiles into its `_tools` module), and why ncnn INT8 is not offered.

MNN's quantiser reads calibration images from a folder and preprocesses them itself (resize, mean/normal); it is
given letterboxed images already at the export size, written losslessly, so it sees what the detector sees.
It runs in a child process: it is native code that aborts the process on a bad input, and the `mnnquant` script
the package installs passes its arguments in a form the compiled tool rejects (MNN 3.6.1: std::length_error) and
imports a telemetry logger.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from utils.export.common import ExportError, atomic_path
from utils.export.int8 import DEFAULT_CALIB_IMAGES, calibration_files, letterbox_rgb
from utils.general import LOGGER
from utils.runtimes import read_metadata, require, write_metadata

_QUANT = "import sys, _tools; sys.exit(0 if _tools.mnnquant(['quantized.out'] + sys.argv[1:]) else 1)"
QUANT_TIMEOUT_S = 1800
# Largest |INT8 - FP32| score (objectness, class: 0-1) on the reference image before the export warns. INT8 rounding
# moves a score by a few hundredths (ONNX Runtime and OpenVINO INT8 on these models: < 0.5 on the test's lively
# model, < 0.1 on trained ones); a model the runtime computes wrongly saturates its scores at 0 or 1 (0.93-1.0 seen).
SCORE_TOLERANCE = 0.5
X86_NOTE = ("MNN 3.6.1 computes offline-quantised models wrongly on this x86 CPU (measured: a 2-conv model errs by "
            "15% of its output scale at precision High and overflows at Normal); MNN's INT8 targets ARM: validate "
            "the file on the device")

# The pip packages ncnn and pnnx ship the runtime and the PyTorch converter only; ncnn's INT8 path is two C++ tools
# built from ncnn's source tree (tools/quantize), and pnnx converts no quantised PyTorch model into ncnn INT8 layers.
NCNN_INT8_UNREACHABLE = ("ncnn INT8 is not available from pip: it needs ncnn's ncnn2table (calibration table) and "
                         "ncnn2int8 (conversion) tools, which the ncnn and pnnx packages do not ship; build ncnn "
                         "from source (tools/quantize) and run them on the exported _ncnn_model/ folder, or use "
                         "--include onnx, openvino or mnn with --int8")


def write_calibration_images(files: list[str], imgsz, folder: Path) -> int:
    """Each readable file letterboxed to imgsz as a lossless PNG in folder (BGR, as cv2 writes); returns the count.
    letterbox_rgb's 0-1 floats are k/255 exactly, so rounding back to uint8 restores the letterboxed pixels."""
    import cv2
    n = 0
    for f in files:
        x = letterbox_rgb(f, imgsz)
        if x is None:
            continue
        im = np.clip(np.rint(x[0].transpose(1, 2, 0)[:, :, ::-1] * 255), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{n:05d}.png"), im)
        n += 1
    return n


def quantize_mnn_int8(fp32_file: str | Path, int8_file: str | Path, data, imgsz,
                      n_images: int = DEFAULT_CALIB_IMAGES) -> Path:
    """MNN offline quantisation of an .mnn file into int8_file (+ its .yaml sidecar with int8: true): int8 weights
    (symmetric, max-abs per output channel) and activations (asymmetric, moving-average min/max: MNN's EMA
    method, the closest to ONNX Runtime's min-max path), calibrated on n letterboxed train images.
    Unlike the ONNX Runtime and OpenVINO paths the Detect layer's 1x1 convs are quantised too: MNN 3.6.1 ignores
    its skip_quant_op_names list (outputs bit-identical with and without it); the box decoding stays float."""
    require("mnn")
    fp32_file, int8_file = Path(fp32_file), Path(int8_file)
    files = calibration_files(data, n_images)
    h, w = int(imgsz[0]), int(imgsz[1])
    tmp = atomic_path(int8_file)
    with tempfile.TemporaryDirectory(prefix="mnn_calib_", dir=int8_file.parent) as d:
        n = write_calibration_images(files, (h, w), Path(d))
        if not n:
            raise ExportError(f"MNN INT8: none of the {len(files)} calibration images could be read")
        config = Path(d) / "quant.json"
        config.write_text(json.dumps({  # dst = (src - mean) * normal on RGB: the detector's 0-1 input
            "format": "RGB", "mean": [0.0, 0.0, 0.0], "normal": [1 / 255] * 3, "width": w, "height": h,
            "path": d + os.sep, "used_image_num": n, "feature_quantize_method": "EMA",
            "weight_quantize_method": "MAX_ABS", "batch_size": 1, "quant_bits": 8}))
        try:
            r = subprocess.run([sys.executable, "-c", _QUANT, str(fp32_file), str(tmp), str(config)],
                               capture_output=True, text=True, timeout=QUANT_TIMEOUT_S)
            if r.returncode != 0 or not tmp.stat().st_size:
                lines = [x.strip() for x in (r.stderr + r.stdout).splitlines() if "rror" in x or "what()" in x]
                why = lines[-1] if lines else f"exit code {r.returncode}"
                raise ExportError(f"MNN INT8: MNN's quantiser failed on {fp32_file.name}: {why}")
            os.replace(tmp, int8_file)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".json").unlink(missing_ok=True)  # the quantiser's scale dump; unused
    meta = read_metadata(fp32_file.with_name(fp32_file.name + ".yaml"))
    write_metadata(int8_file.with_name(int8_file.name + ".yaml"), {**meta, "int8": True, "calib_images": n})
    LOGGER.info(f"MNN INT8: quantised on {n} calibration images (EMA activations, max-abs weights)")
    return int8_file


def check_mnn_int8(fp32_file: str | Path, int8_file: str | Path, image: np.ndarray, decoded: bool = True) -> float:
    """Max |INT8 - FP32| score of the two MNN models on image (run in a child process, as export verification
    runs them); above SCORE_TOLERANCE a warning that this runtime computes the INT8 model wrongly here. The file is
    kept: MNN's INT8 is meant for ARM devices, whose kernels differ from the x86 ones that run it here."""
    from utils.export.verify import run_in_child
    y32, y8 = (r["image"][0] for r in run_in_child([("mnn", fp32_file), ("mnn", int8_file)], {"image": image}, 1))
    cols = slice(4, None) if decoded and y32.ndim == 3 else slice(None)  # raw heads: every logit, unscaled
    d = float(np.abs(y8[..., cols] - y32[..., cols]).max()) if y8.shape == y32.shape else float("inf")
    if not d <= SCORE_TOLERANCE:
        LOGGER.warning(f"WARNING ⚠️ MNN INT8: {Path(int8_file).name} scores differ from the FP32 model's by up to "
                       f"{d:.2f} on the reference image (INT8 rounding moves them by hundredths): {X86_NOTE}")
    else:
        LOGGER.info(f"MNN INT8: max score change vs FP32 on the reference image {d:.3f}")
    return d
