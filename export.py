"""Export a trained detector to ONNX, TorchScript, OpenVINO, ncnn and MNN for deployment (phones, boards, NPUs).

Usage:
    python export.py --weights best.pt --include onnx                      # best.onnx next to best.pt
    python export.py --weights best.pt --include onnx torchscript --imgsz 320 320 --dynamic
    python export.py --weights best.pt --include onnx --nms --conf-thres 0.25   # graph ends in NMS
    python export.py --weights best.pt --include onnx --raw                # per-level raw head outputs (NPUs)
    python export.py --weights best.pt --include onnx --int8 --data shapes.yaml --imgsz 256   # + best_int8.onnx
    python export.py --weights best.pt --include openvino ncnn mnn --imgsz 320   # best_openvino_model/, ...
    python export.py --weights best.pt --include mnn --int8 --data shapes.yaml --imgsz 320   # + best_int8.mnn

The exported graph is the fused model (BatchNorm folded, RepVGG re-parameterised). Input `images` is
(N, 3, H, W) float 0-1 RGB; output `output0` is the decoded (N, A, nc+5) tensor x, y, w, h (pixels), obj,
class scores. Every file carries its stride, class names and model yaml, so detect.py and val.py run it
directly (`--weights best.onnx`, backend chosen by suffix in utils/backends.py). OpenVINO and ncnn exports are
folders (`best_openvino_model/`, `best_ncnn_model/`) with a metadata.yaml; MNN is `best.mnn` + `best.mnn.yaml`.
Every export is run in its runtime (utils/runtimes.py) and compared with the PyTorch model before it is reported.
The library code is in utils/export/; this file is run() and its command line.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.export import (
    DEFAULT_CALIB_IMAGES,
    ExportError,
    export_metadata,
    export_onnx,
    export_torchscript,
    int8_activation_note,
    letterbox_rgb,
    load_model,
    quantize_int8,
    require_onnx,
)
from utils.export import int8 as _int8
from utils.export.graphs import classic_shuffle, output_names
from utils.export.int8_mnn import NCNN_INT8_UNREACHABLE, check_mnn_int8, quantize_mnn_int8
from utils.export.int8_openvino import quantize_openvino_int8, require_nncf
from utils.export.mnn import export_mnn
from utils.export.ncnn import export_ncnn
from utils.export.ncnn import require_pnnx as require_ncnn
from utils.export.openvino import export_openvino
from utils.export.verify import RTOL, reference_inputs, verify_export
from utils.general import LOGGER, check_img_size, colorstr, first_line
from utils.runtimes import require as require_runtime
from utils.torch_utils import select_device

# --include name -> file suffix, or folder-name suffix for the runtimes whose model is several files
FORMATS = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": "_openvino_model", "ncnn": "_ncnn_model",
           "mnn": ".mnn"}
RUNTIME_FORMATS = ("openvino", "ncnn", "mnn")  # converted from the fused model, verified in a child process
INT8_FORMATS = ("onnx", "openvino", "mnn")  # --int8: ONNX Runtime, NNCF and MNN's quantiser (ncnn: not from pip)
TITLES = {"torchscript": "TorchScript", "onnx": "ONNX", "openvino": "OpenVINO", "ncnn": "ncnn", "mnn": "MNN"}


def parse_include(include) -> list[str]:
    """Normalise --include (a string, or a list with commas allowed) to known format names, in order."""
    items = [include] if isinstance(include, str) else list(include)
    names = [x.strip().lower().lstrip(".") for s in items for x in str(s).split(",") if x.strip()]
    if not names:
        raise ExportError(f"--include is empty; choose from {', '.join(FORMATS)}")
    unknown = [x for x in names if x not in FORMATS]
    if unknown:
        raise ExportError(f"--include {' '.join(unknown)}: unknown format; supported: {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def compare_int8(fp32_file: Path, int8_file: Path, data, imgsz: int, workers: int = 2) -> dict:
    """mAP50 and mAP50-95 of the FP32 and INT8 files on the dataset's val split (val.py, conf 0.001)."""
    import val

    def validate(f: Path, tag: str) -> tuple[float, float]:
        r = val.run(data, weights=str(f), batch_size=1, imgsz=imgsz, device="cpu", workers=workers, plots=False,
                    project=f.parent / "int8_check", name=tag, exist_ok=True)[0]
        return float(r[2]), float(r[3])

    return _int8.compare_int8(Path(fp32_file), Path(int8_file), validate)


def _check_int8(fp32: Path, q: Path, data, imgsz, dynamic: bool) -> None:
    """The FP32-vs-INT8 mAP report (val.py on both), where val.py can feed the export."""
    if imgsz[0] != imgsz[1] and not dynamic:
        LOGGER.warning("WARNING ⚠️ FP32-vs-INT8 mAP check skipped: val.py feeds square images; export "
                       "with a square --imgsz or --dynamic to run it")
        return
    try:
        compare_int8(fp32, q, data, imgsz[0])
    except (ValueError, FileNotFoundError) as e:  # a folder val.py cannot run: the export itself stands
        if q.suffix == ".onnx":
            raise
        LOGGER.warning(f"WARNING ⚠️ FP32-vs-INT8 mAP check skipped: val.py cannot run {q.name} ({first_line(e)})")


def _temp_onnx(model, im, stem: Path, opset: int, dynamic: bool, graph: str, meta: dict) -> Path:
    """The fused model's ONNX for OpenVINO and MNN, in a temporary folder beside the outputs. Channel shuffles are
    written as view-transpose-reshape here: OpenVINO 2026.4 computes the gather form wrongly (rel. diff 7e-2 on
    yolov5n_ShuffleNetV2), while the .onnx for ONNX Runtime keeps the faster gather."""
    d = Path(tempfile.mkdtemp(prefix=stem.name + ".onnx.", dir=stem.parent))
    with classic_shuffle(model):
        return export_onnx(model, im, d / f"{stem.stem}.onnx", opset, dynamic, False, graph, None, meta)


def _export_one(fmt: str, model, im, out: Path, src, opset: int, dynamic: bool, simplify: bool, graph: str,
                nms_args: dict, meta: dict, prefix: str) -> None:
    """Write one format; unexpected converter errors become a one-line ExportError naming the format."""
    try:
        if fmt == "onnx":
            import onnx
            LOGGER.info(f"{prefix} starting export with onnx {onnx.__version__} opset {opset}...")
            export_onnx(model, im, out, opset, dynamic, simplify, graph, nms_args, meta)
        elif fmt == "torchscript":
            LOGGER.info(f"{prefix} starting export with torch {torch.__version__}...")
            export_torchscript(model, im, out, graph, nms_args, meta)
        elif fmt == "openvino":
            LOGGER.info(f"{prefix} starting export with openvino {require_runtime('openvino').__version__}...")
            export_openvino(src, out, meta)
        elif fmt == "ncnn":
            LOGGER.info(f"{prefix} starting export with pnnx (TorchScript trace) ...")
            export_ncnn(model, im, out, meta, graph)
        else:
            LOGGER.info(f"{prefix} starting export with MNN {require_runtime('mnn').version()}...")
            export_mnn(src, out, meta, output_names(model, graph))
    except (ExportError, ImportError):
        raise
    except Exception as e:
        raise ExportError(f"{fmt} export of {out.name} failed: {type(e).__name__}: {first_line(e)}") from e


def run(weights=ROOT / "yolov5s.pt", imgsz=(640, 640), batch_size: int = 1, device: str = "cpu",
        include=("torchscript", "onnx"), half: bool = False, dynamic: bool = False, simplify: bool = False,
        opset: int = 17, nms: bool = False, raw: bool = False, int8: bool = False, data=None,
        conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 100, agnostic_nms: bool = False,
        calib_images: int = DEFAULT_CALIB_IMAGES, file=None, check_int8: bool = True,
        int8_head_convs: bool = False, int8_reduce_range: bool = False, verify: bool = True) -> list[str]:
    """Export weights to each format in include; returns the written files (next to the weights, e.g.
    best.pt -> best.onnx, best.torchscript, best_openvino_model/, best_ncnn_model/, best.mnn, and with int8
    best_int8.onnx, best_int8_openvino_model/, best_int8.mnn).
    `file` overrides the output stem. verify: run each export in its runtime on a letterboxed image and on random
    input and fail (ExportError naming the format) where it differs from the PyTorch model by more than
    float32 rounding (utils.export.verify.RTOL)."""
    t0 = time.time()
    fmts = parse_include(include)
    if nms and raw:
        raise ExportError("--nms and --raw are exclusive: --nms ends the graph in NMS, --raw leaves the head undecoded")
    graph = "nms" if nms else "raw" if raw else "decoded"
    if half and dynamic:
        raise ExportError("--half and --dynamic cannot be combined: use one or the other")
    device = select_device(device)
    if half and device.type == "cpu":
        raise ExportError("--half export needs a CUDA device (use --device 0); CPU runtimes run float32")
    if half and int8:
        raise ExportError("--half and --int8 cannot be combined: INT8 is quantised from the float32 graph")
    if int8:
        if not set(INT8_FORMATS) & set(fmts):
            if "ncnn" in fmts:
                raise ExportError(NCNN_INT8_UNREACHABLE)
            raise ExportError("--int8 quantises the ONNX, OpenVINO or MNN model: add onnx, openvino or mnn to "
                              "--include")
        if "ncnn" in fmts:  # the other formats still get their INT8 model; ncnn is written in float32
            LOGGER.warning(f"WARNING ⚠️ {NCNN_INT8_UNREACHABLE}; writing the ncnn model in float32")
        if data is None:
            raise ExportError("--int8 needs --data (a dataset yaml) for its calibration images")
        if graph != "decoded":
            raise ExportError("--int8 is for the decoded graph; drop --nms/--raw (run NMS after the INT8 model)")
    rt = [f for f in fmts if f in RUNTIME_FORMATS]
    if rt and (graph == "nms" or half):
        raise ExportError(f"--include {' '.join(rt)} takes the float32 decoded or --raw graph; drop "
                          f"{'--nms (run NMS after the model)' if graph == 'nms' else '--half'}")
    if "onnx" in fmts or "openvino" in fmts or "mnn" in fmts:
        require_onnx(runtime=int8 and "onnx" in fmts)
    if int8 and "openvino" in fmts:
        require_nncf()
    for f in rt:  # a missing package is an error before any work, naming what to install
        if f == "ncnn":
            require_ncnn()
        if f != "ncnn" or verify:  # ncnn's own package runs the check; pnnx alone converts
            require_runtime(f)
    imgsz = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    imgsz = (imgsz * 2)[:2] if len(imgsz) == 1 else imgsz
    if len(imgsz) != 2:
        raise ExportError(f"--imgsz takes one or two numbers (H W), got {imgsz}")
    if batch_size < 1:
        raise ExportError(f"--batch-size must be >= 1, got {batch_size}")

    model = load_model(weights, device, half=half)
    gs = int(max(model.stride))
    imgsz = check_img_size([int(x) for x in imgsz], gs)
    im = torch.zeros(batch_size, 3, *imgsz, device=device)
    im = im.half() if half else im
    with torch.no_grad():
        shape = tuple(model(im)[0].shape)
    nms_args = {"conf_thres": conf_thres, "iou_thres": iou_thres, "max_det": max_det, "agnostic": agnostic_nms}
    meta = export_metadata(model, imgsz, batch_size, graph, dynamic, half, nms_args if nms else None)
    stem = Path(file) if file is not None else (Path(str(weights)) if not isinstance(weights, nn.Module)
                                                else ROOT / "model.pt")
    LOGGER.info(f"\n{colorstr('PyTorch:')} starting from {stem.with_suffix('.pt')} with input shape "
                f"{tuple(im.shape)} BCHW and output shape {shape} ({graph} graph)")
    written = []
    inputs = None
    if verify and graph != "nms" and not half:  # a real image: the dataset's first val image, else a generated one
        image = _int8.calibration_files(data, 1, split="val")[0] if data is not None else None
        inputs = reference_inputs(imgsz, batch_size, image=image, seed=0)
    elif verify:
        LOGGER.info(f"export check skipped: {'an --nms graph returns a varying set of rows' if nms else '--half'}")
    onnx_tmp = None
    try:
        for fmt in fmts:
            out = stem.with_suffix(FORMATS[fmt]) if FORMATS[fmt].startswith(".") else \
                stem.with_name(stem.stem + FORMATS[fmt])
            t = time.time()
            prefix = colorstr(f"{TITLES[fmt]}:")
            src = None
            if fmt in ("openvino", "mnn"):
                onnx_tmp = onnx_tmp or _temp_onnx(model, im, stem, opset, dynamic, graph, meta)
                src = onnx_tmp
            _export_one(fmt, model, im, out, src, opset, dynamic, simplify, graph, nms_args, meta, prefix)
            size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
            LOGGER.info(f"{prefix} export success ✅ {time.time() - t:.1f}s, saved as {out} ({size / 1e6:.1f} MB)")
            if inputs is not None:
                diffs = verify_export(fmt, out, model, inputs, graph)
                LOGGER.info(f"{prefix} verified in {TITLES[fmt] if fmt in RUNTIME_FORMATS else fmt + ' runtime'}: "
                            f"max rel. diff vs PyTorch {', '.join(f'{k} {v:.2g}' for k, v in diffs.items())} "
                            f"(tolerance {RTOL:g})")
            written.append(str(out))
    finally:
        if onnx_tmp is not None:
            shutil.rmtree(onnx_tmp.parent, ignore_errors=True)
    if int8 and "onnx" in fmts:
        fp32 = stem.with_suffix(".onnx")
        q = stem.with_name(stem.stem + "_int8.onnx")
        t = time.time()
        quantize_int8(fp32, q, data, imgsz, head_index=len(model.model) - 1, n_images=calib_images,
                      head_convs=int8_head_convs, reduce_range=int8_reduce_range)
        LOGGER.info(f"{colorstr('INT8:')} export success ✅ {time.time() - t:.1f}s, saved as {q} "
                    f"({q.stat().st_size / 1e6:.1f} MB)")
        note = int8_activation_note(model)
        if note:
            LOGGER.info(f"{colorstr('INT8:')} note: {note}")
        written.append(str(q))
        if check_int8:
            _check_int8(fp32, q, data, imgsz, dynamic)
    if int8 and "openvino" in fmts:
        fp32 = stem.with_name(stem.stem + "_openvino_model")
        q = stem.with_name(stem.stem + "_int8_openvino_model")
        t = time.time()
        quantize_openvino_int8(fp32, q, data, imgsz, head_index=len(model.model) - 1, n_images=calib_images)
        LOGGER.info(f"{colorstr('OpenVINO INT8:')} export success ✅ {time.time() - t:.1f}s, saved as {q}")
        written.append(str(q))
        if check_int8:
            _check_int8(fp32, q, data, imgsz, dynamic)
    if int8 and "mnn" in fmts:
        fp32 = stem.with_suffix(".mnn")
        q = stem.with_name(stem.stem + "_int8.mnn")
        t = time.time()
        quantize_mnn_int8(fp32, q, data, imgsz, n_images=calib_images)
        LOGGER.info(f"{colorstr('MNN INT8:')} export success ✅ {time.time() - t:.1f}s, saved as {q} "
                    f"({q.stat().st_size / 1e6:.1f} MB)")
        if inputs is not None:  # the quantiser cannot be checked to float32 rounding; a broken model can
            check_mnn_int8(fp32, q, inputs["image"], decoded=graph == "decoded")
        written.append(str(q))
        if check_int8:
            _check_int8(fp32, q, data, imgsz, dynamic)
    f = next((x for x in written if x.endswith(".onnx")), written[0] if written else "")
    size = "" if dynamic else f" --imgsz {imgsz[0]}" if imgsz[0] == imgsz[1] else f" --imgsz {imgsz[0]} {imgsz[1]}"
    LOGGER.info(f"\nExport complete ({time.time() - t0:.1f}s)\nResults saved to {colorstr('bold', str(stem.parent))}"
                f"\nDetect:          python detect.py --weights {f}{size}"
                f"\nValidate:        python val.py --weights {f} --data {data or 'data.yaml'}"
                f"{' --imgsz ' + str(imgsz[0]) if size else ''}")
    return written


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Export a YOLOv5-lite checkpoint to ONNX, TorchScript, OpenVINO, "
                                                 "ncnn or MNN")
    parser.add_argument("--data", type=str, default=None, help="dataset.yaml (INT8 calibration and mAP check)")
    parser.add_argument("--weights", nargs="+", type=str, default=[str(ROOT / "yolov5s.pt")], help="model.pt path")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640, 640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size")
    parser.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--half", action="store_true", help="FP16 half-precision export (CUDA only)")
    parser.add_argument("--inplace", action="store_true", help="accepted for YOLOv5 compatibility (no effect)")
    parser.add_argument("--optimize", action="store_true", help="accepted for YOLOv5 compatibility (no effect)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX/TorchScript: dynamic batch, height, width")
    parser.add_argument("--simplify", action="store_true", help="ONNX: simplify the graph (needs onnxslim)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX: opset version")
    parser.add_argument("--nms", action="store_true", help="end the graph in NMS: output0 rows "
                                                           "[image, x1, y1, x2, y2, conf, cls]")
    parser.add_argument("--raw", action="store_true", help="per-level undecoded head outputs (NPU toolchains)")
    parser.add_argument("--agnostic-nms", action="store_true", help="--nms: class-agnostic NMS")
    parser.add_argument("--int8", action="store_true", help="static INT8: ONNX Runtime (onnx), NNCF (openvino), "
                        "MNN's quantiser (mnn); needs --data (ncnn: not available from pip)")
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, help="INT8 calibration images")
    parser.add_argument("--no-int8-check", action="store_true", help="skip the FP32-vs-INT8 mAP comparison")
    parser.add_argument("--int8-head-convs", action="store_true", help="INT8: quantise the Detect 1x1 convs too "
                                                                       "(int8 logits; box decoding stays float)")
    parser.add_argument("--int8-reduce-range", action="store_true", help="INT8: 7-bit weights, for x86 CPUs "
                                                                         "without VNNI (avoids u8 x s8 saturation)")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="--nms: confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="--nms: NMS IoU threshold")
    parser.add_argument("--max-det", "--topk-all", type=int, default=100, help="--nms: max detections per image")
    parser.add_argument("--no-verify", action="store_true", help="skip running each export against PyTorch")
    parser.add_argument("--include", nargs="+", default=["torchscript", "onnx"],
                        help="torchscript, onnx, openvino, ncnn, mnn")
    return parser.parse_args(argv)


def main(opt) -> int:
    try:
        for w in opt.weights:
            run(weights=w, imgsz=opt.imgsz, batch_size=opt.batch_size, device=opt.device, include=opt.include,
                half=opt.half, dynamic=opt.dynamic, simplify=opt.simplify, opset=opt.opset, nms=opt.nms, raw=opt.raw,
                int8=opt.int8, data=opt.data, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                max_det=opt.max_det, agnostic_nms=opt.agnostic_nms, calib_images=opt.calib_images,
                check_int8=not opt.no_int8_check, int8_head_convs=opt.int8_head_convs,
                int8_reduce_range=opt.int8_reduce_range,
                verify=not opt.no_verify)
    except (ExportError, ImportError, FileNotFoundError, ValueError) as e:
        LOGGER.error(f"ERROR: {first_line(e)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_opt()))
