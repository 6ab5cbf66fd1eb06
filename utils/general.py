"""Small shared helpers: logging, path resolution, rounding. Box maths lives in utils/boxes.py."""
from __future__ import annotations

import glob
import logging
import math
import os
import re
from pathlib import Path

import cv2

# OpenCV's own thread pool competes with torch's on small CPUs (forward passes slowed ~40x on 2 cores after a few
# cv2.resize calls in the same process); image ops here are per-image and parallelised by dataloader workers instead.
cv2.setNumThreads(0)

ROOT = Path(__file__).resolve().parents[1]
TQDM_BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"  # every progress bar: a 10-character bar between the counts
LOGGER = logging.getLogger("yolov5lite")
if not LOGGER.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of divisor that is >= x (YOLOv5's width rounding)."""
    return int(math.ceil(x / divisor) * divisor)


def colorstr(*parts: str) -> str:
    """Wrap the last argument in ANSI colours named by the others, e.g. colorstr('blue', 'bold', 'text')."""
    *styles, text = parts if len(parts) > 1 else ("blue", "bold", parts[0])
    codes = {"black": 30, "red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36,
             "white": 37, "bold": 1, "underline": 4}
    if os.environ.get("NO_COLOR"):
        return text
    return "".join(f"\033[{codes[s]}m" for s in styles) + text + "\033[0m"


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless exist_ok."""
    path = Path(path)
    if path.exists() and not exist_ok:
        path, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        for n in range(2, 100000):
            candidate = Path(f"{path}{sep}{n}{suffix}")
            if not candidate.exists():
                path = candidate
                break
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_file(name: str | Path, search_dirs: tuple[str, ...] = (), kind: str = "file") -> Path:
    """Find a file as YOLOv5 does: as given, then by bare name under the search dirs (relative to the repo root).

    Raises FileNotFoundError listing every place it looked.
    """
    name = str(name)
    candidates = [Path(name)]
    if not Path(name).is_absolute():
        candidates.append(ROOT / name)
        for d in search_dirs:
            candidates.append(ROOT / d / name)
            candidates.extend(Path(p) for p in glob.glob(str(ROOT / d / "**" / Path(name).name), recursive=True))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates[:6]))
    raise FileNotFoundError(f"{kind} '{name}' not found (looked in: {looked})")


def check_yaml(name: str | Path) -> Path:
    """Resolve a model/data/hyp yaml by bare name under models/, data/ or data/hyps/."""
    return resolve_file(name, ("models", "data", "data/hyps"), kind="yaml")


def load_yaml(file: str | Path, expect: str = "a mapping", empty_ok: bool = False, error: type = ValueError) -> dict:
    """The mapping in a yaml file (safe_load: no tags that construct objects). A file that does not parse, or holds
    something other than a mapping, raises `error` with one line naming the file; empty_ok: an empty file is {}."""
    import yaml
    try:
        d = yaml.safe_load(Path(file).read_text(errors="ignore"))
    except yaml.YAMLError as e:
        raise error(f"{file}: invalid yaml ({first_line(e)})") from None
    if d is None and empty_ok:
        return {}
    if not isinstance(d, dict):
        raise error(f"{file}: expected {expect}")
    return d


def check_img_size(imgsz, stride: int = 32, floor: int = 0):
    """Round image size(s) up to a multiple of stride, warning when it changes."""
    if isinstance(imgsz, int):
        new = max(make_divisible(imgsz, int(stride)), floor)
    else:
        imgsz = list(imgsz)
        new = [max(make_divisible(x, int(stride)), floor) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f"WARNING ⚠️ --img-size {imgsz} must be multiple of max stride {stride}, updating to {new}")
    return new


_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def safe_path_component(name, fallback: str, max_bytes: int = 120) -> str:
    """A string read from a file (a class name in a checkpoint, a stream name) as one harmless path component.

    Separators, NUL and control characters become '_', a drive letter and leading dots go (so '..', '/abs',
    'C:x', '.hidden' cannot leave or hide in the folder it is joined to), the UTF-8 length is capped, and an
    empty result becomes ``fallback`` (e.g. the class id)."""
    s = re.sub(r"[\\/\x00-\x1f\x7f]", "_", str(name))
    s = re.sub(r"^[A-Za-z]:", "", s)  # 'C:x' is relative to drive C's cwd on Windows
    s = re.sub(r'[<>:"|?*]', "_", s)  # not allowed in Windows file names
    s = s.strip().lstrip(".").rstrip(". ")  # Windows drops trailing dots and spaces
    b = s.encode("utf-8")[:max_bytes]
    s = b.decode("utf-8", errors="ignore").rstrip(". ")
    if s.split(".")[0].upper() in _RESERVED_NAMES:
        s = f"_{s}"
    return s or str(fallback)


def clean_str(s: str) -> str:
    return re.sub(r"[|@#!¡·$€%&()=?¿^*;:,¨´><+]", "_", s)


def emojis(s: str) -> str:
    return s


_TRAINING_NAMES = ("init_seeds", "labels_to_class_weights", "labels_to_image_weights")


def __getattr__(name: str):
    """YOLOv5's `from utils.general import init_seeds, labels_to_class_weights`: they live in utils.training,
    imported on first use (utils.training imports this module)."""
    if name in _TRAINING_NAMES:
        from utils import training
        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
