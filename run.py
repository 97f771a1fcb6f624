#!/usr/bin/env python3
"""Newsdesk command line. `python run.py --help` lists the commands; each takes --config PATH."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT))

from pipeline.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
