import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "yolov5n_reference.pt"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def reference():
    """The YOLOv5 7.0 numeric oracle (../shared/reference); tests using it skip when it is absent."""
    if not REFERENCE.is_file():
        pytest.skip(f"numeric oracle not found at {REFERENCE}")
    return torch.load(REFERENCE, map_location="cpu", weights_only=True)
