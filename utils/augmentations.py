"""utils.augmentations, YOLOv5's import path: it IS utils.data.augmentations
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.data import augmentations

sys.modules[__name__] = augmentations
