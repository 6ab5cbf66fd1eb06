"""utils.autoanchor, the old import path: it IS utils.training.autoanchor
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.training import autoanchor

sys.modules[__name__] = autoanchor
