import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "yolov5n_reference.pt"

# One thread: with two, OpenMP threads wait on each other whenever anything else runs on a 2-core machine
# (tests ran ~10x slower under load); the suite's tensors are tiny, so a second thread buys little.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference():
    """The YOLOv5 7.0 numeric oracle (../shared/reference); tests using it skip when it is absent."""
    if not REFERENCE.is_file():
        pytest.skip(f"numeric oracle not found at {REFERENCE}")
    return torch.load(REFERENCE, map_location="cpu", weights_only=True)
