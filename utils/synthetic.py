"""utils.synthetic, the old import path, also for `python -m utils.synthetic ...`: imported, it IS utils.data.synthetic
(the same module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.data import synthetic

if __name__ == "__main__":
    synthetic.main()
else:
    sys.modules[__name__] = synthetic
