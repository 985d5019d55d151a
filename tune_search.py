#!/usr/bin/env python3
"""Run the Quick, Draw! learning-rate x batch-size search: `python tune_search.py --help`."""

import sys

from quickdraw.cli import main

if __name__ == "__main__":
    sys.exit(main())
