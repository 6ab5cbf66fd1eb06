"""utils.callbacks, the old import path: it IS utils.training.callbacks
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.training import callbacks

sys.modules[__name__] = callbacks
