"""utils.predictor, the old import path: it IS utils.inference.predictor
(one module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.inference import predictor

sys.modules[__name__] = predictor
