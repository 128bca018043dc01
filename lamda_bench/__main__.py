"""``python -m lamda_bench`` is the ``lamda-bench`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # guarded: spawned cell processes import __main__ again
    sys.exit(main())
