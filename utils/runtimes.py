"""One runner per deployment runtime: ONNX Runtime, OpenVINO, ncnn and MNN.

Each runner is `Runner(path, threads=None)`; calling it with a float32 NCHW array returns the model's outputs as a
list of float32 arrays, and `metadata` is the dict export.py stored with the files (stride, names, imgsz, yaml, ...)
decoded to Python values. export.py uses them to verify every export; the inference backends can wrap them.

Every runner computes in float32 (no fp16/bf16 fallbacks), so it reproduces the exported model to float32
rounding on any CPU: that is what the export-time check compares against.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml

METADATA_FILE = "metadata.yaml"  # beside the model files in an OpenVINO or ncnn folder (YOLOv5's name)
MAX_METADATA_BYTES = 16 << 20  # a sidecar larger than this is not ours; never read what a file claims unchecked
JSON_KEYS = ("names", "yaml", "imgsz", "dynamic", "half", "strides", "anchors", "output_columns", "conf_thres",
             "iou_thres", "max_det", "agnostic", "int8", "outputs")
INSTALL = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "mnn": "MNN"}


class RuntimeFileError(ValueError):
    """A runtime's model file or folder is missing, incomplete or unreadable; the message names it."""


def require(runtime: str):
    """Import a runtime's Python package; missing, it is a one-line ImportError saying what to install."""
    module = {"mnn": "MNN"}.get(runtime, runtime)
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{runtime} is not installed: pip install {INSTALL[runtime]}") from None


def decode_metadata(meta: dict) -> dict:
    """String metadata (ONNX metadata_props, export_metadata's values) -> Python values; other values pass."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, str) and k in JSON_KEYS:
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        elif isinstance(v, str) and k in ("stride", "nc", "batch", "calib_images") and v.lstrip("-").isdigit():
            v = int(v)
        out[k] = v
    if isinstance(out.get("names"), dict):
        out["names"] = {int(k): str(v) for k, v in out["names"].items()}
    return out


def write_metadata(file: Path, meta: dict) -> Path:
    """The export metadata as a yaml sidecar (decoded: stride an int, names a dict), readable by people too."""
    Path(file).write_text(yaml.safe_dump(decode_metadata(meta), sort_keys=False, allow_unicode=True))
    return Path(file)


def read_metadata(file: Path) -> dict:
    """A metadata.yaml sidecar (safe_load, size-capped); missing, it is an empty dict (the runner still runs)."""
    file = Path(file)
    if not file.is_file():
        return {}
    if file.stat().st_size > MAX_METADATA_BYTES:
        raise RuntimeFileError(f"'{file}' is {file.stat().st_size} bytes; not an export metadata file")
    try:
        meta = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RuntimeFileError(f"'{file}' is not valid yaml: {str(e).splitlines()[0]}") from None
    return decode_metadata(meta) if isinstance(meta, dict) else {}


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise RuntimeFileError(f"{what} '{path}' not found (the export folder is incomplete: export it again)")
    return path


def _in_folder(path: Path, suffix: str, what: str) -> Path:
    """The one file with suffix in an export folder (or path itself when it is that file)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RuntimeFileError(f"{what} '{path}' not found")
    files = sorted(path.glob(f"*{suffix}"))
    if len(files) != 1:
        raise RuntimeFileError(f"{what} folder '{path}' holds {len(files)} *{suffix} files; expected one")
    return files[0]


class OnnxRuntimeRunner:
    """An .onnx file in ONNX Runtime (CPU execution provider)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = require("onnxruntime")
        self.path = _need(Path(path), "ONNX file")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._meta = decode_metadata(dict(self.session.get_modelmeta().custom_metadata_map))

    @property
    def metadata(self) -> dict:
        return self._meta

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}))


class OpenVINORunner:
    """An OpenVINO IR (.xml + .bin) in the CPU plugin; path is the `_openvino_model/` folder or the .xml."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ov = require("openvino")
        xml = _in_folder(Path(path), ".xml", "OpenVINO model")
        _need(xml.with_suffix(".bin"), "OpenVINO weights file")
        config = {"INFERENCE_PRECISION_HINT": "f32"}  # no bf16 on CPUs that have it: float32 like the export
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.path = xml
        self.compiled = ov.Core().compile_model(str(xml), "CPU", config)
        self._meta = read_metadata(xml.parent / METADATA_FILE)

    @property
    def metadata(self) -> dict:
        return self._meta

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        r = self.compiled([np.ascontiguousarray(x, dtype=np.float32)])
        return [np.asarray(r[o]) for o in self.compiled.outputs]


class NcnnRunner:
    """An ncnn model (model.ncnn.param + model.ncnn.bin, blobs in0 / out0.. as pnnx names them) in a
    `_ncnn_model/` folder. ncnn runs one image at a time; a batch is run image by image."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ncnn = require("ncnn")
        param = _in_folder(Path(path), ".param", "ncnn model")
        weights = _need(param.with_suffix(".bin"), "ncnn weights file")
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False  # float32 everywhere
        opt.use_bf16_storage = False
        if threads:
            opt.num_threads = int(threads)
        # a graph ncnn cannot build still "loads"; extracting from it crashes the process, so check both codes
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise RuntimeFileError(f"ncnn could not load '{param}' (unsupported layer or corrupt file)")
        self.path, self._ncnn = param, ncnn
        self._meta = read_metadata(param.parent / METADATA_FILE)
        outs = [n for n in self.net.output_names()]
        self.outputs = sorted(outs, key=lambda n: int(n[3:]) if n[3:].isdigit() else 0) or ["out0"]
        self.input_name = (list(self.net.input_names()) or ["in0"])[0]

    @property
    def metadata(self) -> dict:
        return self._meta

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        per_image = []
        for im in np.ascontiguousarray(x, dtype=np.float32):
            with self.net.create_extractor() as ex:
                ex.input(self.input_name, self._ncnn.Mat(im).clone())
                per_image.append([np.array(ex.extract(n)[1]) for n in self.outputs])
        return [np.stack([p[i] for p in per_image]) for i in range(len(self.outputs))]


class MNNRunner:
    """An .mnn file in MNN's CPU backend (high precision: float32), metadata in the sidecar <file>.yaml."""

    def __init__(self, path: str | Path, threads: int | None = None):
        mnn = require("mnn")
        import MNN.expr as F
        self.path = _need(Path(path), "MNN model file")
        self._meta = read_metadata(self.path.with_name(self.path.name + ".yaml"))
        outputs = self._meta.get("outputs") or ["output0"]
        self.module = mnn.nn.load_module_from_file(str(self.path), ["images"], list(outputs), shape_mutable=True,
                                                   precision_mode=F.PrecisionMode.High, thread_num=int(threads or 1))
        if self.module is None:
            raise RuntimeFileError(f"MNN could not load '{self.path}'")
        self._F = F

    @property
    def metadata(self) -> dict:
        return self._meta

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        F = self._F
        x = np.ascontiguousarray(x, dtype=np.float32)
        ys = self.module.forward([F.const(x, list(x.shape), F.NCHW)])
        return [np.array(F.convert(y, F.NCHW).read(), dtype=np.float32) for y in ys]


RUNNERS = {"onnx": OnnxRuntimeRunner, "openvino": OpenVINORunner, "ncnn": NcnnRunner, "mnn": MNNRunner}


def runtime_of(path: str | Path) -> str | None:
    """Which runtime reads path: by suffix (.onnx, .xml, .mnn) or folder name (_openvino_model, _ncnn_model)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith("_openvino_model") or p.suffix.lower() == ".xml":
        return "openvino"
    if name.endswith("_ncnn_model") or p.suffix.lower() == ".param":
        return "ncnn"
    return {".onnx": "onnx", ".mnn": "mnn"}.get(p.suffix.lower())


def load_runner(path: str | Path, threads: int | None = None):
    """The runner for an exported file or folder (see runtime_of)."""
    rt = runtime_of(path)
    if rt is None:
        raise RuntimeFileError(f"'{path}': not an ONNX, OpenVINO, ncnn or MNN export")
    return RUNNERS[rt](path, threads)


def _child(argv: list[str]) -> int:
    """python -m utils.runtimes IN.npz OUT.npz THREADS FORMAT PATH [FORMAT PATH ...]: run each export on every
    input array (export-time verification runs here, away from the exporting process, as a runtime may crash)."""
    fin, fout, threads, pairs = argv[0], argv[1], int(argv[2]), argv[3:]
    res = {}
    try:
        with np.load(fin) as z:
            inputs = {k: z[k] for k in z.files}
        for i in range(0, len(pairs), 2):
            runner = RUNNERS[pairs[i]](pairs[i + 1], threads=threads)
            for k, x in inputs.items():
                res.update({f"{i // 2}|{k}|{j}": y for j, y in enumerate(runner(x))})
            print(pairs[i], flush=True)
    except (ImportError, ValueError, RuntimeError) as e:
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        return 1
    np.savez(fout, **res)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
