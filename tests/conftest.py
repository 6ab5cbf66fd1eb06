from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "yolov5n_reference.pt"

# One thread by default: with two, OpenMP threads wait on each other whenever anything else runs on a 2-core
# machine (tests ran ~10x slower under load); the suite's tensors are tiny, so a second thread buys little.
# YOLO_TEST_THREADS=N runs the suite at N threads, to check that no test depends on one thread's float order.
torch.set_num_threads(int(os.environ.get("YOLO_TEST_THREADS", "1")))

# tests/isolated runs only in a pytest process of its own (tests/test_isolated.py sets YOLO_ISOLATED)
collect_ignore = [] if os.environ.get("YOLO_ISOLATED") else ["isolated"]


@pytest.fixture(scope="session")
def reference():
    """The YOLOv5 7.0 numeric oracle (../shared/reference); tests using it skip when it is absent."""
    if not REFERENCE.is_file():
        pytest.skip(f"numeric oracle not found at {REFERENCE}")
    return torch.load(REFERENCE, map_location="cpu", weights_only=True)


class LogLines(list):
    """The messages a logger emitted, in order; `.text` is what a plain StreamHandler would have printed."""

    @property
    def text(self) -> str:
        return "".join(f"{m}\n" for m in self)


class _Collect(logging.Handler):
    def __init__(self, sink: LogLines, level: int):
        super().__init__(level)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextlib.contextmanager
def _capture(logger: logging.Logger | None = None, level: int = logging.NOTSET):
    if logger is None:
        from utils.general import LOGGER as logger
    lines = LogLines()
    handler = _Collect(lines, level)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="session")
def capture_log():
    """`with capture_log() as lines:` collects what the project LOGGER emits inside the block (it does not propagate
    to the root logger, so caplog sees nothing). Optional: another `logger`, a minimum `level`. Session-scoped so
    module-scoped fixtures can use it; each block removes its own handler on exit."""
    return _capture


@pytest.fixture
def log_lines(capture_log):
    """LogLines of everything the project LOGGER emits during the test."""
    with capture_log() as lines:
        yield lines
