"""utils.sources, the old import path: it IS utils.inference.sources
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.inference import sources

sys.modules[__name__] = sources
