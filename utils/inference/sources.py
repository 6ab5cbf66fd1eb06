"""Inference sources for detect.py: image files, folders, globs, .txt lists, videos, webcams and network streams.

Every loader yields lists of Frame (one per file, or one per live stream of a batch), holding the original
BGR image; letterboxing belongs to the predictor so the Python API and detect.py share it.
Bad input is reported as a one-line SourceError / FileNotFoundError naming the file (or list line);
an unreadable file inside a folder is skipped with a warning instead.
"""
from __future__ import annotations

import glob
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.data.dataloaders import IMG_FORMATS, imread
from utils.general import LOGGER

VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv", "webm")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
STREAM_FIRST_FRAME_TIMEOUT = 30.0  # seconds to wait for a stream's first frame


class SourceError(ValueError):
    """A source that cannot be used; the message names it and says why."""


@dataclass
class Frame:
    """One image to run detection on, with where it came from."""
    path: str  # file path, or the stream URL / webcam index as text
    im0: np.ndarray  # original image, HWC uint8 BGR
    index: int  # 1-based position of its file (or stream) among the sources
    total: int  # number of files (or streams)
    mode: str = "image"  # image | video | stream
    frame: int = 0  # 1-based count of frames taken from this video/stream (0 for images)
    frames: int = 0  # frames expected from this video (after --vid-stride); 0 for images and live streams
    fps: float = 30.0

    def describe(self) -> str:
        """YOLOv5's per-image line prefix."""
        if self.mode == "image":
            return f"image {self.index}/{self.total} {self.path}: "
        if self.mode == "video":
            return f"video {self.index}/{self.total} ({self.frame}/{self.frames}) {self.path}: "
        return f"{self.index - 1}: "


def media_kind(path: str | Path) -> str | None:
    """'image', 'video' or None from the file suffix."""
    suffix = Path(str(path)).suffix[1:].lower()
    return "image" if suffix in IMG_FORMATS else "video" if suffix in VID_FORMATS else None


def is_stream(source: str) -> bool:
    s = str(source).strip()
    return s.isnumeric() or s.lower().startswith(STREAM_SCHEMES) or s.endswith(".streams")


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _expand(entry: str, where: str) -> list[str]:
    """Media files named by one source entry (file, folder or glob); `where` prefixes error messages."""
    p = Path(os.path.expanduser(entry))
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and media_kind(f))
        if not files:
            raise FileNotFoundError(f"{where}no images or videos in folder '{entry}' (supported suffixes: "
                                    f"{', '.join(IMG_FORMATS + VID_FORMATS)})")
        return files
    if p.is_file():
        if media_kind(p) is None:
            raise SourceError(f"{where}'{entry}' is not a supported image or video (suffix '{p.suffix}')")
        return [str(p)]
    if _has_magic(entry):
        matches = sorted(f for f in glob.glob(os.path.expanduser(entry), recursive=True) if os.path.isfile(f))
        files = [f for f in matches if media_kind(f)]
        if not files:
            raise FileNotFoundError(f"{where}no images or videos match '{entry}'")
        return files
    raise FileNotFoundError(f"{where}source '{entry}' does not exist")


def _read_list(txt: Path) -> list[str]:
    """Files from a .txt list, one path per line; relative paths are tried from the cwd, then the list's folder."""
    files = []
    for n, line in enumerate(txt.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = line
        if not Path(line).is_absolute() and not Path(line).exists() and (txt.parent / line).exists():
            entry = str(txt.parent / line)
        files += _expand(entry, f"{txt} line {n}: ")
    if not files:
        raise FileNotFoundError(f"source list '{txt}' names no images or videos")
    return files


def list_media(source: str | Path | list) -> list[str]:
    """Image and video files for a file, folder, glob, .txt list, or a list of those."""
    entries = source if isinstance(source, (list, tuple)) else [source]
    files = []
    for entry in entries:
        entry = str(entry)
        p = Path(os.path.expanduser(entry))
        if p.suffix.lower() == ".txt" and p.is_file():
            files += _read_list(p)
        else:
            files += _expand(entry, "")
    return files


class LoadFiles:
    """Images and videos from disk, in order; videos frame by frame every vid_stride-th frame."""

    def __init__(self, source: str | Path | list, vid_stride: int = 1):
        if int(vid_stride) < 1:
            raise SourceError(f"--vid-stride must be >= 1, got {vid_stride}")
        self.files = list_media(source)
        self.kinds = [media_kind(f) for f in self.files]
        self.vid_stride = int(vid_stride)
        self.skipped: list[str] = []
        self.frame_counts = [self._video_frames(f) if k == "video" else 1 for f, k in zip(self.files, self.kinds)]
        self._first = None
        if self.nf == 1 and self.kinds[0] == "image":  # a lone bad image fails now, before any output is made
            self._first = imread(self.files[0])
            if self._first is None:
                raise SourceError(f"'{self.files[0]}': unreadable or corrupt image")

    def _video_frames(self, f: str) -> int:
        cap = cv2.VideoCapture(f)
        opened = cap.isOpened()
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if opened else 0
        cap.release()
        if not opened and len(self.files) == 1:
            raise SourceError(f"'{f}': cannot open video (corrupt file or missing codec)")
        return math.ceil(max(n, 0) / self.vid_stride)

    @property
    def nf(self) -> int:
        return len(self.files)

    @property
    def total_frames(self) -> int:
        """Images plus expected video frames: the progress bar's length."""
        return sum(self.frame_counts)

    @property
    def has_video(self) -> bool:
        return "video" in self.kinds

    def __len__(self) -> int:
        return self.nf

    def _skip(self, path: str, why: str) -> None:
        if self.nf == 1:  # the only input: nothing to skip to
            raise SourceError(f"'{path}': {why}")
        LOGGER.warning(f"WARNING ⚠️ skipping {path}: {why}")
        self.skipped.append(path)

    def __iter__(self):
        for i, (path, kind) in enumerate(zip(self.files, self.kinds), 1):
            if kind == "image":
                im, self._first = (self._first if self._first is not None else imread(path)), None
                if im is None:
                    self._skip(path, "unreadable or corrupt image")
                    continue
                yield [Frame(path, im, i, self.nf)]
            else:
                yield from self._video(path, i)

    def _video(self, path: str, i: int):
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            cap.release()
            self._skip(path, "cannot open video (corrupt file or missing codec)")
            return
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and fps > 0 else 30.0
        expected = self.frame_counts[i - 1]
        n = 0
        try:
            while True:
                ok = all(cap.grab() for _ in range(self.vid_stride - 1)) if n else True
                ok, im = cap.read() if ok else (False, None)
                if not ok or im is None:
                    break
                n += 1
                yield [Frame(path, im, i, self.nf, "video", n, max(expected, n), fps)]
        finally:
            cap.release()
        if n == 0:
            self._skip(path, "video has no readable frames")
        elif n < expected:
            LOGGER.warning(f"WARNING ⚠️ {path}: read {n} of {expected} frames, the rest is unreadable "
                           f"(truncated or corrupt tail)")


def _stream_list(source: str) -> list[str]:
    s = str(source).strip()
    if s.endswith(".streams"):
        p = Path(s)
        if not p.is_file():
            raise FileNotFoundError(f"stream list '{s}' does not exist")
        items = [x.strip() for x in p.read_text().splitlines() if x.strip() and not x.strip().startswith("#")]
        if not items:
            raise SourceError(f"stream list '{s}' is empty")
        return items
    return [s]


class LoadStreams:
    """Live sources (webcam index, rtsp/rtmp/http URL) read by one thread each; yields the newest frame of every
    stream as a batch, never the same frame twice. Ends when every stream has ended."""

    def __init__(self, source: str | list, vid_stride: int = 1, timeout: float = STREAM_FIRST_FRAME_TIMEOUT):
        if int(vid_stride) < 1:
            raise SourceError(f"--vid-stride must be >= 1, got {vid_stride}")
        self.sources = [str(s) for s in source] if isinstance(source, (list, tuple)) else _stream_list(source)
        self.vid_stride = int(vid_stride)
        n = len(self.sources)
        self.caps: list[cv2.VideoCapture | None] = [None] * n
        self.imgs: list[np.ndarray | None] = [None] * n
        self.seq = [0] * n  # frames received per stream
        self.fps = [30.0] * n
        self.alive = [True] * n
        self.cond = threading.Condition()
        self._stop = False
        self.threads = []
        try:
            for i, s in enumerate(self.sources):
                self._open(i, s, timeout)
        except BaseException:
            self.close()
            raise
        shapes = {im.shape for im in self.imgs}
        if len(shapes) > 1:
            LOGGER.warning("WARNING ⚠️ streams differ in size; frames are letterboxed to --imgsz without rect padding")

    def _open(self, i: int, s: str, timeout: float) -> None:
        what = f"webcam {s}" if s.isnumeric() else f"stream '{s}'"
        cap = cv2.VideoCapture(int(s) if s.isnumeric() else s)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {what} (check the index/URL, network and credentials)")
        self.caps[i] = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps[i] = fps if math.isfinite(fps) and 0 < fps < 1000 else 30.0
        t0 = time.time()
        ok, im = cap.read()
        while not ok and time.time() - t0 < timeout:
            time.sleep(0.05)
            ok, im = cap.read()
        if not ok or im is None:
            raise SourceError(f"{what} opened but sent no frame within {timeout:.0f}s")
        self.imgs[i], self.seq[i] = im, 1
        t = threading.Thread(target=self._reader, args=(i,), daemon=True, name=f"stream{i}")
        self.threads.append(t)
        t.start()
        h, w = im.shape[:2]
        LOGGER.info(f"{i + 1}/{len(self.sources)}: {s}... Success ({w}x{h} at {self.fps[i]:.2f} FPS)")

    def _reader(self, i: int) -> None:
        cap, n = self.caps[i], 0
        try:
            while not self._stop:
                if not cap.grab():
                    break
                n += 1
                if n % self.vid_stride:
                    continue
                ok, im = cap.retrieve()
                if not ok:
                    break
                with self.cond:
                    self.imgs[i], self.seq[i] = im, self.seq[i] + 1
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.alive[i] = False
                self.cond.notify_all()
            if not self._stop:
                LOGGER.info(f"stream {self.sources[i]} ended after {self.seq[i]} frames")

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self):
        last = [0] * len(self.sources)
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self._stop or any(q > seen for q, seen in zip(self.seq, last))
                                       or not any(self.alive))
                    if self._stop or all(q == seen for q, seen in zip(self.seq, last)):
                        return
                    snap = [(im, q) for im, q in zip(self.imgs, self.seq)]
                frames = []
                for i, (im, q) in enumerate(snap):
                    last[i] = q
                    frames.append(Frame(self.sources[i], im, i + 1, len(self.sources), "stream", q, 0, self.fps[i]))
                yield frames
        finally:
            self.close()

    def close(self) -> None:
        self._stop = True
        with self.cond:
            self.cond.notify_all()
        for t in self.threads:
            t.join(timeout=2)
        for cap in self.caps:
            if cap is not None:
                cap.release()


def open_source(source, vid_stride: int = 1) -> LoadFiles | LoadStreams:
    """The loader for a detect.py --source value (or a list of paths)."""
    if isinstance(source, (list, tuple)):
        return LoadFiles(source, vid_stride)
    s = str(source).strip()
    if not s:
        raise SourceError("--source is empty")
    if is_stream(s):
        return LoadStreams(s, vid_stride)
    return LoadFiles(s, vid_stride)
