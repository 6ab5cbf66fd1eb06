"""python -m benchmarks: the backbone table (benchmarks.backbones); bad arguments are one-line errors."""
import sys

from benchmarks.backbones import main
from utils.general import LOGGER, first_line

if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, ImportError) as e:  # bad --cfgs/--data/--epochs: say so, no traceback
        LOGGER.error(f"ERROR: {first_line(e)}")
        sys.exit(1)
