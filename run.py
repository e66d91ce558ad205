#!/usr/bin/env python3
"""Start scoreserver: `python run.py [flags]` is `scoreserver serve [flags]`."""

import sys

from scoreserver.ops.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python run.py"))
