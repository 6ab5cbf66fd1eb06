"""Runs tests/isolated in a pytest process of its own: the tests that load OpenVINO, ncnn or MNN into the test
process. Those runtimes bring their own OpenMP/TBB thread pools and allocators; heap corruption was seen in the
long-lived suite process after they had run there (it surfaced minutes later in unrelated tests), so they get a
short-lived process, and a failure there fails this test with that run's output."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_native_runtime_tests_pass_in_their_own_process():
    env = {**os.environ, "YOLO_ISOLATED": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/isolated"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, f"tests/isolated exited {r.returncode}:\n{tail}"
    assert "passed" in tail.strip().splitlines()[-1], tail  # it ran tests, not an empty collection
