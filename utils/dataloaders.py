"""utils.dataloaders, YOLOv5's import path: it IS utils.data.dataloaders
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.data import dataloaders

sys.modules[__name__] = dataloaders
