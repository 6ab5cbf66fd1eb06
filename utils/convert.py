"""utils.convert, the old import path, also for `python -m utils.convert ...`: imported, it IS utils.data.convert
(the same module object, not a copy, so a monkeypatch through either name reaches the code)."""
import sys

from utils.data import convert

if __name__ == "__main__":
    convert.cli()
else:
    sys.modules[__name__] = convert
