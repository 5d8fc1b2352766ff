"""python -m janlib COMMAND: the same command line as the `janlib` console script (janlib.cli)."""

import sys

from janlib.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m janlib"))
