"""utils.transfer, the old import path: it IS utils.training.transfer
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.training import transfer

sys.modules[__name__] = transfer
