"""``python -m nmrn ...``: the ``nmrn`` command (for environments without the console script)."""

import sys

from nmrn.cli import main

if __name__ == "__main__":
    sys.exit(main())
