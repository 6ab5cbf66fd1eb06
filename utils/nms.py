"""utils.nms, the old import path: it IS utils.inference.nms
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.inference import nms

sys.modules[__name__] = nms
