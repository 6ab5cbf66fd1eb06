"""YOLO-format detection datasets: dataset yaml resolution, label verification with a cache, and the
augmenting training/validation dataloader (mosaic, random perspective, mixup, HSV, flips, rect batches).

Dataset layout (YOLOv5's): for .../images/.../x.jpg the label is .../labels/.../x.txt with one row
`class x_center y_center width height` (normalised) per object; a missing or empty file is a background image.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, distributed
from tqdm import tqdm

from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.augmentations import (
    DEFAULT_AUGMENT_HYP,
    augment_hsv,
    copy_paste,
    letterbox,
    mixup,
    random_flip,
    random_perspective,
)
from utils.data.samplers import EpochSeededSampler
from utils.general import LOGGER, ROOT, TQDM_BAR_FORMAT, first_line, load_yaml, resolve_file

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
NUM_THREADS = min(8, max(1, os.cpu_count() or 1))
CACHE_VERSION = 2  # 2: JSON, never pickle (version 1 was a pickle: such files are rebuilt, never read)
CACHE_FORMAT = "yolov5lite-label-cache"
MAX_IMAGE_SIDE = 1 << 20  # a cached (w, h) beyond this is not an image this loader could have measured
MIN_IMAGE_SIDE = 10
EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------------------------------------------
# paths and dataset yaml
# ---------------------------------------------------------------------------------------------------------------
def img2label_paths(img_paths: list[str]) -> list[str]:
    """Label path for each image: the last /images/ directory becomes /labels/ and the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for p in img_paths:
        p = str(p)
        head, sep, tail = p.rpartition(sa)
        p = head + sb + tail if sep else p
        out.append(os.path.splitext(p)[0] + ".txt")
    return out


def list_image_files(path: str | Path | list, prefix: str = "") -> list[str]:
    """Image files from a directory (recursive), a .txt list (paths relative to the list's folder), or a list."""
    files: list[str] = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(os.path.abspath(os.path.expanduser(str(p))))  # same cache hash from any cwd
        if p.is_dir():
            files += [str(f) for f in p.rglob("*.*")]
        elif p.is_file() and p.suffix.lower() == ".txt":
            base = p.parent
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    files.append(str(f if f.is_absolute() else (base / f).resolve()))
        elif p.is_file():
            files.append(str(p))
        else:
            raise FileNotFoundError(f"{prefix}{p} does not exist")
    files = sorted(f.replace("/", os.sep) for f in files if f.rsplit(".", 1)[-1].lower() in IMG_FORMATS)
    if not files:
        raise FileNotFoundError(f"{prefix}No images found in {path}")
    return files


def _resolve_root(path_value: Any, yaml_file: Path | None) -> Path:
    """Dataset root: absolute as is; relative to the repo root (YOLOv5's rule), else cwd, else the yaml's folder."""
    if not path_value:
        return yaml_file.parent.resolve() if yaml_file else Path.cwd()
    p = Path(str(path_value)).expanduser()
    if p.is_absolute():
        return p
    candidates = [ROOT / p, Path.cwd() / p] + ([yaml_file.parent / p] if yaml_file else [])
    for c in candidates:
        if c.exists():
            return c.resolve()
    return (ROOT / p).resolve()  # where a generated dataset goes


def _split_paths(value: Any, root: Path) -> str | list[str]:
    if isinstance(value, (list, tuple)):
        return [str(p if Path(p).is_absolute() else (root / p).resolve()) for p in map(str, value)]
    p = Path(str(value))
    return str(p if p.is_absolute() else (root / p).resolve())


def _missing_splits(d: dict) -> list[str]:
    out = []
    for k in ("train", "val", "test"):
        v = d.get(k)
        if v:
            out += [p for p in (v if isinstance(v, list) else [v]) if not Path(p).exists()]
    return out


def _generate(d: dict, yaml_name: str) -> None:
    """Build a missing or stale dataset with its yaml's `generate:` generator (see utils/data/synthetic.py)."""
    from utils.data.synthetic import GENERATORS  # local import: the generator is only needed for such yamls

    name = d["generate"]
    if name not in GENERATORS:
        raise ValueError(f"{yaml_name}: unknown generator 'generate: {name}' (known: {sorted(GENERATORS)})")
    GENERATORS[name](d["path"], **dict(d.get("generate_args") or {}))


def check_dataset(data: str | Path | dict, autogenerate: bool = True) -> dict:
    """Load and validate a dataset yaml (or dict): absolute split paths, names {int: str}, nc; generate if missing."""
    yaml_file = None
    if isinstance(data, dict):
        d = dict(data)
        yaml_name = "dataset dict"
    else:
        yaml_file = resolve_file(data, ("data",), kind="dataset yaml")
        yaml_name = str(yaml_file)
        d = load_yaml(yaml_file, "a mapping with keys path/train/val/names")
        d["yaml_file"] = str(yaml_file)

    for k in ("train", "val"):
        if not d.get(k):
            raise ValueError(f"{yaml_name}: missing required key '{k}'")
    if "names" not in d or d["names"] in (None, "", [], {}):
        raise ValueError(f"{yaml_name}: missing required key 'names' (a list or a dict id -> name)")
    names = d["names"]
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    elif isinstance(names, dict):
        try:
            names = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{yaml_name}: 'names' keys must be integer class ids, got {list(names)}") from None
    else:
        raise ValueError(f"{yaml_name}: 'names' must be a list or a dict, got {type(names).__name__}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{yaml_name}: 'names' ids must be 0..{len(names) - 1}, got {sorted(names)}")
    names = {k: str(names[k]) for k in sorted(names)}
    if "nc" in d and d["nc"] is not None and int(d["nc"]) != len(names):
        raise ValueError(f"{yaml_name}: nc={d['nc']} but {len(names)} names")
    d["names"], d["nc"] = names, len(names)

    root = _resolve_root(d.get("path"), yaml_file)
    d["path"] = str(root)
    for k in ("train", "val", "test"):
        if d.get(k):
            d[k] = _split_paths(d[k], root)

    if autogenerate and d.get("generate"):
        _generate(d, yaml_name)  # builds a missing or stale dataset; a no-op when it is current
    missing = _missing_splits(d)
    if missing:
        hint = f" (download it from {d['download']})" if isinstance(d.get("download"), str) else ""
        raise FileNotFoundError(f"{yaml_name}: dataset path not found: {missing[0]}{hint}")
    return d


# ---------------------------------------------------------------------------------------------------------------
# verification and cache
# ---------------------------------------------------------------------------------------------------------------
def exif_size(img: Image.Image) -> tuple[int, int]:
    """(w, h) of a PIL image after its EXIF orientation is applied (orientations 5-8 swap the sides)."""
    w, h = img.size
    try:
        if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            return h, w
    except Exception:  # malformed EXIF must not make a readable image corrupt
        pass
    return w, h


def _check_image(im_file: str) -> tuple[int, int]:
    """(w, h) of a readable image; raises ValueError saying why it is unusable."""
    if os.path.getsize(im_file) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(im_file) as im:
            im.verify()  # structure and checksums, no full decode
        with Image.open(im_file) as im:
            fmt = (im.format or "").lower()
            shape = exif_size(im)
    except UnidentifiedImageError:
        raise ValueError("cannot identify image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"unreadable image ({e})") from None
    if fmt not in IMG_FORMATS:
        raise ValueError(f"invalid image format '{fmt}'")
    if shape[0] < MIN_IMAGE_SIDE or shape[1] < MIN_IMAGE_SIDE:
        raise ValueError(f"image size {shape[0]}x{shape[1]} < {MIN_IMAGE_SIDE} pixels")
    if fmt in ("jpeg", "mpo"):
        with open(im_file, "rb") as f:
            f.seek(-2, 2)
            complete = f.read() == b"\xff\xd9"
        if not complete:  # no end-of-image marker: decode fully to see whether data is missing
            try:
                with Image.open(im_file) as im:
                    im.load()
            except OSError as e:
                raise ValueError(f"truncated JPEG ({e})") from None
    return shape


def parse_label_file(lb_file: str) -> tuple[np.ndarray, list[str]]:
    """Rows [cls, x, y, w, h] of a label file (polygons become boxes) and notes; ValueError names the line."""
    rows, notes = [], []
    with open(lb_file, errors="replace") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            v = np.array([float(x) for x in parts], dtype=np.float64)
        except ValueError:
            bad = next(x for x in parts if not _is_float(x))
            raise ValueError(f"line {n}: non-numeric value '{bad}'") from None
        if not np.isfinite(v).all():
            raise ValueError(f"line {n}: non-finite value")
        if len(v) == 5:
            row = v
        elif len(v) >= 7 and len(v) % 2 == 1:  # segment polygon: cls x1 y1 x2 y2 ...
            xy = v[1:].reshape(-1, 2)
            lo, hi = xy.min(0), xy.max(0)
            row = np.concatenate(([v[0]], (lo + hi) / 2, hi - lo))
        else:
            raise ValueError(f"line {n}: expected 5 columns (class x y w h), got {len(v)}")
        if (v < 0).any():
            raise ValueError(f"line {n}: negative value {v[v < 0][0]:g}")
        if row[0] != int(row[0]):
            raise ValueError(f"line {n}: class id {row[0]:g} is not an integer")
        if (v[1:] > 1 + 1e-6).any():
            raise ValueError(f"line {n}: coordinate {v[1:][v[1:] > 1 + 1e-6][0]:g} > 1 (not normalised)")
        rows.append(row)
    lb = np.array(rows, dtype=np.float32).reshape(-1, 5)
    lb[:, 1:] = lb[:, 1:].clip(0, 1)
    if len(lb):
        _, keep = np.unique(lb, axis=0, return_index=True)
        if len(keep) < len(lb):
            notes.append(f"{len(lb) - len(keep)} duplicate labels removed")
            lb = lb[np.sort(keep)]
    return lb, notes


def _is_float(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def verify_image_label(im_file: str, lb_file: str) -> dict:
    """Check one image/label pair; returns its labels and shape, or corrupt=True with a message naming why."""
    out = {"im_file": im_file, "labels": None, "shape": None, "corrupt": False, "missing": False, "msg": ""}
    try:
        out["shape"] = _check_image(im_file)
    except (ValueError, OSError) as e:
        out.update(corrupt=True, msg=f"WARNING ⚠️ {im_file}: ignoring corrupt image: {e}")
        return out
    if not os.path.isfile(lb_file):
        out.update(labels=np.zeros((0, 5), np.float32), missing=True)
        return out
    try:
        lb, notes = parse_label_file(lb_file)
    except (ValueError, OSError) as e:
        out.update(corrupt=True, msg=f"WARNING ⚠️ {lb_file}: {e}; ignoring image {im_file}")
        return out
    out["labels"] = lb
    if notes:
        out["msg"] = f"WARNING ⚠️ {lb_file}: {'; '.join(notes)}"
    return out


def _files_hash(files: list[str]) -> str:
    """Hash of paths, sizes and modification times: any added, removed or edited file changes it."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        try:
            st = os.stat(f)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(b"-")
    return h.hexdigest()


class CacheError(ValueError):
    """A label cache that must not be used; the message says why (it is then rebuilt)."""


def _cache_to_json(cache: dict) -> dict:
    """The cache as JSON-able data: per-image lists plus every label row in one base64 float32 blob."""
    entries = cache["entries"]
    counts = [-1 if e["labels"] is None else len(e["labels"]) for e in entries]
    rows = [e["labels"] for e in entries if e["labels"] is not None and len(e["labels"])]
    blob = np.concatenate(rows).astype("<f4") if rows else np.zeros((0, 5), "<f4")
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "hash": cache["hash"],
            "im_files": [e["im_file"] for e in entries],
            "shapes": [None if e["shape"] is None else [int(v) for v in e["shape"]] for e in entries],
            "counts": counts, "corrupt": [bool(e["corrupt"]) for e in entries],
            "missing": [bool(e["missing"]) for e in entries], "msg": [e["msg"] for e in entries],
            "labels": base64.b64encode(blob.tobytes()).decode("ascii")}


def _list_of(d: dict, key: str, n: int, ok) -> list:
    v = d.get(key)
    if not isinstance(v, list) or len(v) != n or not all(ok(x) for x in v):
        raise CacheError(f"field '{key}' is not {n} valid values")
    return v


def _is_side(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE


def _cache_from_json(d, h: str, im_files: list[str]) -> dict:
    """Check every field of a parsed cache file as strictly as freshly parsed labels; CacheError otherwise.
    Sizes the file states (label counts) are compared with the data it holds before anything is decoded."""
    if not isinstance(d, dict) or d.get("format") != CACHE_FORMAT:
        raise CacheError("not a label cache of this project")
    if d.get("version") != CACHE_VERSION:
        raise CacheError(f"cache version {str(d.get('version'))[:20]!r}, expected {CACHE_VERSION}")
    if d.get("hash") != h or d.get("im_files") != im_files:
        raise CacheError("stale (images or labels changed since it was written)")
    n = len(im_files)
    shapes = _list_of(d, "shapes", n, lambda s: s is None or (isinstance(s, list) and len(s) == 2
                                                               and all(_is_side(v) for v in s)))
    counts = _list_of(d, "counts", n, lambda c: isinstance(c, int) and not isinstance(c, bool) and c >= -1)
    corrupt = _list_of(d, "corrupt", n, lambda c: isinstance(c, bool))
    missing = _list_of(d, "missing", n, lambda c: isinstance(c, bool))
    msgs = _list_of(d, "msg", n, lambda m: isinstance(m, str) and len(m) <= 4096)
    if any(c != (k < 0) or (not c and s is None) for c, k, s in zip(corrupt, counts, shapes)):
        raise CacheError("entries contradict themselves (corrupt flag, labels and shape)")
    total = sum(k for k in counts if k > 0)
    text = d.get("labels")
    if not isinstance(text, str) or len(text) != 4 * -(-total * 20 // 3):  # base64 of total rows x 5 float32
        raise CacheError(f"it claims {total} label rows but holds {len(text) if isinstance(text, str) else 0} "
                         f"base64 characters")
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        raise CacheError("label data is not base64") from None
    lb = np.frombuffer(blob, "<f4").astype(np.float32).reshape(-1, 5)
    c = lb[:, 0]
    if not np.isfinite(lb).all() or (c < 0).any() or (c != np.round(c)).any() or (lb[:, 1:] > 1).any() \
            or (lb[:, 1:] < 0).any():
        raise CacheError("label rows out of range (class ids >= 0 integers, coordinates in 0..1)")
    ends = np.cumsum([max(k, 0) for k in counts])
    entries = []
    for i, f in enumerate(im_files):
        labels = None if counts[i] < 0 else lb[ends[i] - counts[i]:ends[i]].copy()
        entries.append({"im_file": f, "labels": labels, "shape": None if shapes[i] is None else tuple(shapes[i]),
                        "corrupt": corrupt[i], "missing": missing[i],
                        "msg": re.sub(r"[\x00-\x1f\x7f]", " ", msgs[i])})  # one line each when replayed
    return {"version": CACHE_VERSION, "hash": h, "entries": entries, "msgs": [e["msg"] for e in entries if e["msg"]],
            "n_corrupt": sum(corrupt)}


def _load_cache(path: Path, h: str, im_files: list[str], prefix: str = "") -> dict | None:
    """The cache at path if it is this version's JSON for exactly these files; None (rebuild) otherwise, with a
    one-line warning when a file was there. Never unpickles: a dataset from a stranger can ship any cache."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:1] == b"\x80":
            raise CacheError("a pickle (old cache format; never loaded, as it could run code)")
        try:
            d = json.loads(raw)
        except (ValueError, RecursionError):
            raise CacheError("not readable JSON (damaged or truncated)") from None
        return _cache_from_json(d, h, im_files)
    except (OSError, CacheError) as e:
        LOGGER.warning(f"{prefix}WARNING ⚠️ label cache {path}: {first_line(e)}; rebuilding it")
    return None


def _save_cache(path: Path, cache: dict, prefix: str = "") -> None:
    """Write atomically (a fresh temporary file, then rename) so a crash or a concurrent reader never sees half
    a cache; a read-only dataset folder only costs a warning."""
    tmp = None
    try:
        text = json.dumps(_cache_to_json(cache), separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, path)
        tmp = None
        LOGGER.info(f"{prefix}New cache created: {path}")
    except OSError as e:
        LOGGER.warning(f"{prefix}WARNING ⚠️ cache directory {path.parent} is not writeable: {first_line(e)}")
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _cache_path(label_files: list[str], p: Any) -> Path:
    first = Path(label_files[0]).parent
    if first.name and first.parent.exists():
        return first.with_suffix(".cache")  # labels/train -> labels/train.cache
    return Path(p if not isinstance(p, list) else p[0]).with_suffix(".cache")


# ---------------------------------------------------------------------------------------------------------------
# image loading
# ---------------------------------------------------------------------------------------------------------------
def imread(path: str) -> np.ndarray | None:
    """BGR uint8 image; OpenCV applies EXIF orientation, expands grayscale, drops alpha and maps 16-bit to 8-bit."""
    try:
        buf = np.fromfile(path, np.uint8)  # also works with non-ASCII paths
    except OSError:
        return None
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None


class LoadImagesAndLabels(Dataset):
    """Detection dataset in YOLO layout with verification cache, rect batching and YOLOv4/v5 augmentations."""

    def __init__(self, path: str | Path | list, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, image_weights: bool = False,
                 cache_images: bool | str = False, single_cls: bool = False, stride: int = 32, pad: float = 0.0,
                 prefix: str = "", nc: int | None = None):
        self.img_size = img_size
        self.augment = augment
        self.hyp = {**DEFAULT_AUGMENT_HYP, **(hyp or {})}
        self.image_weights = image_weights
        self.rect = False if image_weights else rect
        self.mosaic = augment and not self.rect  # mosaic would undo the rect shapes
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.stride = stride
        self.path = path
        self.prefix = prefix

        im_files = list_image_files(path, prefix)
        label_files = img2label_paths(im_files)
        self.cache_path = _cache_path(label_files, path)
        h = _files_hash(im_files + label_files)
        cache = _load_cache(self.cache_path, h, im_files, prefix)
        self.cache_loaded = cache is not None
        if cache is None:
            cache = self._build_cache(im_files, label_files, h)
        else:
            for m in cache["msgs"]:
                LOGGER.warning(f"{prefix}{m}")
        entries = cache["entries"]

        # class ids are checked here rather than in the cache, which does not depend on nc;
        # single_cls maps every class to 0, so any id is acceptable then
        n_corrupt = cache["n_corrupt"]
        if nc is not None and not single_cls:
            for e in entries:
                if e["labels"] is not None and len(e["labels"]) and e["labels"][:, 0].max() >= nc:
                    lb_file = img2label_paths([e["im_file"]])[0]
                    bad = int(e["labels"][:, 0].max())
                    line = _first_line_with_class(lb_file, nc)
                    LOGGER.warning(f"{prefix}WARNING ⚠️ {lb_file}: line {line}: class id {bad} >= nc={nc}; "
                                   f"ignoring image {e['im_file']}")
                    e.update(corrupt=True, labels=None)
                    n_corrupt += 1
        good = [e for e in entries if not e["corrupt"]]
        n_bg = sum(len(e["labels"]) == 0 for e in good)
        LOGGER.info(f"{prefix}Scanning {self.cache_path}... {len(good)} images, {n_bg} backgrounds, "
                    f"{n_corrupt} corrupt{' (cached)' if self.cache_loaded else ''}")
        if not good:
            raise FileNotFoundError(f"{prefix}No usable images in {path} ({n_corrupt} corrupt)")
        if augment and n_bg == len(good):
            LOGGER.warning(f"{prefix}WARNING ⚠️ No labels found in {path}; training on backgrounds only")
        self.n_corrupt, self.n_backgrounds = n_corrupt, n_bg

        self.im_files = [e["im_file"] for e in good]
        self.label_files = img2label_paths(self.im_files)
        self.labels = [e["labels"].copy() for e in good]
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.shapes = np.array([e["shape"] for e in good], dtype=np.float64)  # (w, h)
        n = len(self.shapes)
        self.n = n
        self.indices = np.arange(n)
        bi = np.floor(np.arange(n) / batch_size).astype(int)
        self.batch = bi
        if self.rect:
            self._set_rect_shapes(batch_size, pad)

        self.ims: list[np.ndarray | None] = [None] * n
        self.im_hw0: list[tuple[int, int] | None] = [None] * n
        self.im_hw: list[tuple[int, int] | None] = [None] * n
        self.npy_files = [Path(f).with_suffix(".npy") for f in self.im_files]
        if isinstance(cache_images, str) and cache_images.lower() in CACHE_OFF:
            cache_images = False
        if cache_images == "auto":
            cache_images = self._auto_cache()
        if cache_images:
            self._cache_images("disk" if cache_images == "disk" else "ram")

    # -- setup helpers ----------------------------------------------------------------------------------------
    def _build_cache(self, im_files: list[str], label_files: list[str], h: str) -> dict:
        entries, msgs = [], []
        desc = f"{self.prefix}Scanning {self.cache_path.parent / self.cache_path.stem}..."
        with ThreadPoolExecutor(NUM_THREADS) as ex:
            it = ex.map(verify_image_label, im_files, label_files)
            for e in tqdm(it, desc=desc, total=len(im_files), bar_format=TQDM_BAR_FORMAT, leave=False,
                          disable=len(im_files) < 100):
                entries.append(e)
                if e["msg"]:
                    msgs.append(e["msg"])
                    LOGGER.warning(f"{self.prefix}{e['msg']}")
        cache = {"version": CACHE_VERSION, "hash": h, "entries": entries, "msgs": msgs,
                 "n_corrupt": sum(e["corrupt"] for e in entries)}
        _save_cache(self.cache_path, cache, self.prefix)
        return cache

    def _set_rect_shapes(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio and give each batch the smallest stride-multiple shape holding its images."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        ar = ar[order]
        nb = int(self.batch[-1]) + 1
        starts = np.arange(nb) * batch_size
        mini, maxi = np.minimum.reduceat(ar, starts), np.maximum.reduceat(ar, starts)
        hw = np.ones((nb, 2))
        hw[maxi < 1] = np.stack((maxi[maxi < 1], np.ones((maxi < 1).sum())), 1)  # all wide: shrink height
        hw[mini > 1] = np.stack((np.ones((mini > 1).sum()), 1 / mini[mini > 1]), 1)  # all tall: shrink width
        self.batch_shapes = (np.ceil(hw * self.img_size / self.stride + pad).astype(int) * self.stride)

    def _cache_images(self, kind: str) -> None:
        if kind == "ram":
            need = sum(self._resized_bytes(i) for i in range(self.n))
            avail = _available_memory()
            if avail is not None and need > 0.8 * avail:
                LOGGER.warning(f"{self.prefix}WARNING ⚠️ --cache ram needs {need / 1e9:.1f} GB but only "
                               f"{avail / 1e9:.1f} GB is available; not caching images")
                return
        fn = self._cache_to_disk if kind == "disk" else self.load_image
        total = 0
        with ThreadPoolExecutor(NUM_THREADS) as ex:
            pbar = tqdm(enumerate(ex.map(fn, range(self.n))), total=self.n, bar_format=TQDM_BAR_FORMAT,
                        disable=self.n < 100)
            for i, x in pbar:
                if kind == "disk":
                    total += self.npy_files[i].stat().st_size
                else:
                    self.ims[i], self.im_hw0[i], self.im_hw[i] = x
                    total += x[0].nbytes
                pbar.desc = f"{self.prefix}Caching images ({total / 1e9:.2f} GB {kind})"
            pbar.close()

    def _auto_cache(self) -> str | bool:
        """'ram' when the resized images are small beside free memory (<= AUTO_CACHE_BYTES and <= 10% of it):
        the cache holds exactly what load_image returns, so training sees the same pixels, while each mosaic
        stops decoding 4 files; on 2 cores the decoding workers otherwise slow the training step itself."""
        need = sum(self._resized_bytes(i) for i in range(self.n))
        avail = _available_memory()
        if need > AUTO_CACHE_BYTES or (avail is not None and need > 0.1 * avail):
            return False
        LOGGER.info(f"{self.prefix}caching {self.n} images in RAM ({need / 1e6:.0f} MB, small beside free "
                    f"memory; --cache off to read them from disk every time)")
        return "ram"

    def _resized_bytes(self, i: int) -> int:
        w, h = self.shapes[i]
        r = self.img_size / max(w, h)
        return int(w * r) * int(h * r) * 3

    def _cache_to_disk(self, i: int) -> None:
        f = self.npy_files[i]
        if not f.exists() or self._load_npy(i) is None:
            im = self._read(i)
            fd, tmp = tempfile.mkstemp(prefix=f".{f.stem}.", suffix=".tmp.npy", dir=f.parent)  # never a planted path
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, im, allow_pickle=False)
                os.replace(tmp, f)
            finally:
                Path(tmp).unlink(missing_ok=True)

    def _load_npy(self, i: int) -> np.ndarray | None:
        """The --cache disk copy of image i if it is a plain uint8 array of the image's verified size; None (read
        the image instead) for anything else, e.g. a .npy shipped with the dataset whose header claims more than
        the file holds (memory-mapped first, so such a claim allocates nothing)."""
        f = self.npy_files[i]
        try:
            mm = np.load(f, mmap_mode="r", allow_pickle=False)
            w, h = (int(v) for v in self.shapes[i])
            if isinstance(mm, np.ndarray) and mm.dtype == np.uint8 and mm.shape == (h, w, 3):
                return np.array(mm)
        except (OSError, ValueError, EOFError):
            pass
        if not getattr(self, "_warned_npy", False):
            LOGGER.warning(f"{self.prefix}WARNING ⚠️ {f}: not a --cache disk copy of its image; reading the image")
            self._warned_npy = True
        return None

    # -- loading ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.im_files)

    def _read(self, i: int) -> np.ndarray:
        im = imread(self.im_files[i])
        if im is None:
            raise FileNotFoundError(f"Image not found or unreadable: {self.im_files[i]}")
        return im

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized so its long side is img_size; returns (im, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        f = self.npy_files[i]
        im = self._load_npy(i) if f.exists() else None
        im = self._read(i) if im is None else im
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4-image mosaic around a random centre on a 2s canvas, then random perspective cropping to s."""
        s = self.img_size
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        idxs = [index] + random.choices(self.indices, k=3)
        random.shuffle(idxs)
        canvas = np.full((s * 2, s * 2, 3), 114, dtype=np.uint8)
        labels = []
        for k, j in enumerate(idxs):
            im, _, (h, w) = self.load_image(j)
            if k == 0:  # top left
                xa1, ya1, xa2, ya2 = max(xc - w, 0), max(yc - h, 0), xc, yc
                xb1, yb1, xb2, yb2 = w - (xa2 - xa1), h - (ya2 - ya1), w, h
            elif k == 1:  # top right
                xa1, ya1, xa2, ya2 = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                xb1, yb1, xb2, yb2 = 0, h - (ya2 - ya1), min(w, xa2 - xa1), h
            elif k == 2:  # bottom left
                xa1, ya1, xa2, ya2 = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                xb1, yb1, xb2, yb2 = w - (xa2 - xa1), 0, w, min(ya2 - ya1, h)
            else:  # bottom right
                xa1, ya1, xa2, ya2 = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                xb1, yb1, xb2, yb2 = 0, 0, min(w, xa2 - xa1), min(ya2 - ya1, h)
            canvas[ya1:ya2, xa1:xa2] = im[yb1:yb2, xb1:xb2]
            lb = self.labels[j].copy()
            if len(lb):
                lb[:, 1:] = xywhn2xyxy(lb[:, 1:], w, h, xa1 - xb1, ya1 - yb1)
            labels.append(lb)
        labels = np.concatenate(labels, 0)
        np.clip(labels[:, 1:], 0, 2 * s, out=labels[:, 1:])
        hyp = self.hyp
        canvas, labels = copy_paste(canvas, labels, p=hyp["copy_paste"])
        return random_perspective(canvas, labels, degrees=hyp["degrees"],
                                  translate=hyp["translate"], scale=hyp["scale"],
                                  shear=hyp["shear"], perspective=hyp["perspective"],
                                  border=self.mosaic_border)

    def __getitem__(self, index: int | tuple[int, int]):
        if isinstance(index, tuple):  # (dataset index, seed) from EpochSeededSampler: already resampled
            index, seed = index
            with seeded_augmentation(seed):
                return self._get(index)
        return self._get(self.indices[index])  # image_weights may resample indices between epochs

    def _get(self, index: int):
        hyp = self.hyp
        shapes = None
        if self.mosaic and random.random() < hyp["mosaic"]:
            im, labels = self.load_mosaic(index)
            if random.random() < hyp["mixup"]:
                im, labels = mixup(im, labels, *self.load_mosaic(random.choice(self.indices)))
        else:
            im, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            im, ratio, pad = letterbox(im, shape, auto=False, scaleup=self.augment)
            if self.augment and self.ims[index] is not None and np.shares_memory(im, self.ims[index]):
                im = im.copy()  # HSV works in place: never on the RAM cache
            shapes = (h0, w0), ((h / h0 * ratio[1], w / w0 * ratio[0]), pad)  # for mapping boxes back
            labels = self.labels[index].copy()
            if len(labels):
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                im, labels = random_perspective(im, labels, degrees=hyp["degrees"],
                                                translate=hyp["translate"], scale=hyp["scale"],
                                                shear=hyp["shear"],
                                                perspective=hyp["perspective"])
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=im.shape[1], h=im.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(im, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"])
            im, labels = random_flip(im, labels, hyp["flipud"], hyp["fliplr"])
        out = torch.zeros((nl, 6))
        if nl:
            out[:, 1:] = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(im), out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        """Stack images; prefix each target row with its image's index in the batch."""
        ims, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return _stack(ims), torch.cat(labels, 0), paths, shapes

    @staticmethod
    def collate_fn4(batch):
        """--quad: every 4 images become one of twice the size, either one upscaled or a 2x2 tile."""
        ims, labels, paths, shapes = zip(*batch)
        n = len(ims) // 4
        out_ims, out_lb = [], []
        for i in range(n):
            j = i * 4
            if random.random() < 0.5:
                im = torch.nn.functional.interpolate(ims[j][None].float(), scale_factor=2.0, mode="bilinear",
                                                     align_corners=False)[0].round().clamp(0, 255).to(ims[j].dtype)
                lb = labels[j].clone()
            else:
                im = torch.cat((torch.cat((ims[j], ims[j + 1]), 2), torch.cat((ims[j + 2], ims[j + 3]), 2)), 1)
                parts = []
                for k in range(4):
                    lb = labels[j + k].clone()
                    lb[:, 2] = (lb[:, 2] + k % 2) / 2
                    lb[:, 3] = (lb[:, 3] + k // 2) / 2
                    lb[:, 4:6] /= 2
                    parts.append(lb)
                lb = torch.cat(parts, 0)
            lb[:, 0] = i
            out_ims.append(im)
            out_lb.append(lb)
        return _stack(out_ims), torch.cat(out_lb, 0), paths[::4][:n], shapes[::4][:n]


def _stack(ims) -> torch.Tensor:
    """torch.stack for same-shape images via numpy: torch's multi-threaded copy of large uint8 tensors was
    ~100x slower (300 ms vs 3 ms per batch of 16 at 320 px) on a busy 2-core CPU."""
    return torch.from_numpy(np.stack([im.numpy() for im in ims], 0))


def _first_line_with_class(lb_file: str, nc: int) -> int | str:
    try:
        with open(lb_file, errors="replace") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if parts and float(parts[0]) >= nc:
                    return n
    except (OSError, ValueError):
        pass
    return "?"


AUTO_CACHE_BYTES = 1 << 30  # --cache auto (train.py's default) caches datasets whose resized images fit in 1 GiB
CACHE_OFF = ("off", "none", "no", "false")


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@contextmanager
def seeded_augmentation(seed: int):
    """Seed the random and np.random streams the augmentations draw from for one sample, and give the caller's
    streams back afterwards (with workers=0 the sample is made in the training process itself)."""
    state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def seed_worker(worker_id: int) -> None:
    """Give each dataloader worker its own numpy/random streams, derived from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(path, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: dict | None = None, augment: bool = False, cache: bool | str = False, pad: float = 0.0,
                      rect: bool = False, rank: int = -1, workers: int = 8, image_weights: bool = False,
                      quad: bool = False, prefix: str = "", shuffle: bool = False, seed: int = 0,
                      nc: int | None = None):
    """(DataLoader, LoadImagesAndLabels) for training or validation; nc, when given, rejects images with class >= nc."""
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING ⚠️ --rect is incompatible with DataLoader shuffle, setting shuffle=False")
        shuffle = False
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                  image_weights=image_weights, cache_images=cache, single_cls=single_cls,
                                  stride=int(stride), pad=pad, prefix=prefix, nc=nc)
    batch_size = min(batch_size, len(dataset))
    world = _world_size() if rank != -1 else 1
    nw = min(max((os.cpu_count() or 1) // world, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None
    if rank != -1:
        sampler = distributed.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                                 seed=seed)
    if augment:  # the per-epoch state travels with the indices to the persistent workers (utils/data/samplers.py)
        sampler = EpochSeededSampler(dataset, shuffle=shuffle, seed=seed + max(rank, 0), inner=sampler)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=torch.cuda.is_available(), persistent_workers=nw > 0,
                        collate_fn=LoadImagesAndLabels.collate_fn4 if quad else LoadImagesAndLabels.collate_fn,
                        worker_init_fn=seed_worker, generator=generator)
    return loader, dataset


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))
