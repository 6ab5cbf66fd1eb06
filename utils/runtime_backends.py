"""DetectBackend classes for the deployment runtimes: OpenVINO (`<stem>_openvino_model/` or its .xml), ncnn
(`<stem>_ncnn_model/`) and MNN (`<stem>.mnn`), thin wrappers around the runners of utils.runtimes.

utils.backends registers them by import path, so a runtime's package is imported only when its format is opened.
Metadata comes from the sidecar yaml export.py writes (metadata.yaml in the folder, <stem>.mnn.yaml beside an
.mnn), read with yaml.safe_load and size-capped by utils.runtimes.read_metadata and type-checked here, because
the shapes it gives are allocated (warmup) and its names end up in file names. A missing sidecar or weights file
and a missing runtime package are one-line errors. The runtimes compute in float32 on the CPU whatever the device;
outputs are moved to the device.
"""
from __future__ import annotations

from pathlib import Path

import torch

from utils.backends import Backend, BackendError
from utils.general import LOGGER, first_line
from utils.runtimes import (
    METADATA_FILE,
    MNNRunner,
    NcnnRunner,
    OpenVINORunner,
    RuntimeFileError,
    read_metadata,
    require,
)

MAX_SIDE = 8192  # larger fixed inputs than this in a metadata file are not an export of ours: refused, not allocated
MAX_BATCH = 256
GRAPHS = ("decoded", "raw")  # what export.py writes for these runtimes (--nms is refused there)


def sidecar_metadata(file: Path, model: Path) -> dict:
    """The export metadata in file (for model): a one-line BackendError when it is missing, not a mapping, or
    holds values of the wrong type or absurd size."""
    if not file.is_file():
        raise BackendError(f"'{model}': its metadata file '{file}' not found (stride and class names live there; "
                           "export it again)")
    try:
        meta = read_metadata(file)
    except RuntimeFileError as e:
        raise BackendError(str(e)) from None
    if not meta:
        raise BackendError(f"'{file}' holds no metadata mapping")
    return check_metadata(meta, file)


def _int_list(v, n: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool)
                                                               for x in v)


def check_metadata(meta: dict, file: Path) -> dict:
    """Types and bounds of the keys a backend uses; anything else is ignored."""
    def bad(key: str, why: str):
        raise BackendError(f"'{file}': metadata '{key}' {why}")

    names = meta.get("names")
    if names is not None and not isinstance(names, (dict, list)):
        bad("names", f"must be a mapping or list of class names, not {type(names).__name__}")
    y = meta.get("yaml")
    if y is not None and not isinstance(y, dict):
        bad("yaml", f"must be a mapping, not {type(y).__name__}")
    s = meta.get("stride")
    if s is not None and not (isinstance(s, int) and 1 <= s <= 1024):
        bad("stride", f"must be an integer in 1..1024, got {s!r}")
    fmt = meta.get("format", "decoded")
    if fmt not in GRAPHS:
        bad("format", f"must be one of {', '.join(GRAPHS)}, got {fmt!r}")
    imgsz = meta.get("imgsz")
    if imgsz is not None and not (_int_list(imgsz, 2) and all(1 <= x <= MAX_SIDE for x in imgsz)):
        bad("imgsz", f"must be [h, w] with sides in 1..{MAX_SIDE}, got {imgsz!r}")
    b = meta.get("batch", 1)
    if not (isinstance(b, int) and 1 <= b <= MAX_BATCH):
        bad("batch", f"must be an integer in 1..{MAX_BATCH}, got {b!r}")
    return meta


class RuntimeBackend(Backend):
    """Shared by the three: open the runner (errors as one line), read the sidecar, run float32 numpy on the CPU."""

    runtime = ""  # utils.runtimes name: openvino | ncnn | mnn
    runner_cls = None

    def open_runner(self, w: str, threads: int | None):
        require(self.runtime)  # ImportError saying what to pip install
        if self.device.type != "cpu":
            LOGGER.warning(f"WARNING ⚠️ {self.runtime} runs on the CPU here; outputs are moved to {self.device}")
        self.fp16 = False  # the exports are float32
        try:
            return self.runner_cls(w, threads=threads)
        except ImportError:
            raise
        except RuntimeFileError as e:
            raise BackendError(str(e)) from None
        except Exception as e:  # the runtimes raise their own types for unreadable graphs
            raise BackendError(f"'{w}' cannot be loaded by {self.runtime}: {first_line(e)}") from None

    def fix_shape(self, meta: dict) -> None:
        """A graph converted at one shape runs only at it (export metadata 'imgsz', 'batch', 'dynamic')."""
        if not meta.get("dynamic", False) and meta.get("imgsz"):
            self.fixed_imgsz = tuple(meta["imgsz"])
            self.fixed_batch = int(meta.get("batch", 1))

    def infer(self, im: torch.Tensor) -> list:
        return self.runner(im.detach().float().cpu().numpy())


class OpenVINOBackend(RuntimeBackend):
    """An OpenVINO IR: the `_openvino_model/` folder (or its .xml) with <stem>.bin and metadata.yaml beside it."""

    kind, runtime, runner_cls = "xml", "openvino", OpenVINORunner

    def load(self, w, threads: int | None = None, **opts) -> dict:
        self.runner = self.open_runner(w, threads)
        meta = sidecar_metadata(self.runner.path.parent / METADATA_FILE, Path(w))
        shape = self.runner.compiled.inputs[0].get_partial_shape()
        if shape.is_static:  # the IR itself says (also for IRs with another writer's metadata)
            b, _, h, wd = (int(d) for d in shape.to_shape())
            if not (1 <= h <= MAX_SIDE and 1 <= wd <= MAX_SIDE and 1 <= b <= MAX_BATCH):
                raise BackendError(f"'{w}': input shape {(b, 3, h, wd)} is out of range")
            self.fixed_batch, self.fixed_imgsz = b, (h, wd)
        return meta


class NcnnBackend(RuntimeBackend):
    """An ncnn model: the `_ncnn_model/` folder with model.ncnn.param, model.ncnn.bin and metadata.yaml. The
    graph is converted at the exported size; ncnn runs a batch image by image, so any batch size goes."""

    kind, runtime, runner_cls = "ncnn", "ncnn", NcnnRunner

    def load(self, w, threads: int | None = None, **opts) -> dict:
        require(self.runtime)
        folder = Path(w)
        meta = sidecar_metadata(folder / METADATA_FILE, folder) if folder.is_dir() else None
        self.runner = self.open_runner(w, threads)
        meta = meta if meta is not None else sidecar_metadata(self.runner.path.parent / METADATA_FILE, folder)
        if meta.get("imgsz"):  # pnnx traces one shape: reshapes in the head keep its grid size
            self.fixed_imgsz = tuple(meta["imgsz"])
        return meta


class MNNBackend(RuntimeBackend):
    """An .mnn file with its metadata (and output names) in <stem>.mnn.yaml beside it."""

    kind, runtime, runner_cls = "mnn", "mnn", MNNRunner

    def load(self, w, threads: int | None = None, **opts) -> dict:
        require(self.runtime)
        path = Path(w)
        # before the runner: without the sidecar MNN would be asked for a guessed output name
        meta = sidecar_metadata(path.with_name(path.name + ".yaml"), path)
        self.runner = self.open_runner(w, threads)
        self.fix_shape(meta)
        return meta
