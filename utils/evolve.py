"""utils.evolve, the old import path: it IS utils.training.evolve
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.training import evolve

sys.modules[__name__] = evolve
