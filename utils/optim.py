"""utils.optim, the old import path: it IS utils.training.optim
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.training import optim

sys.modules[__name__] = optim
