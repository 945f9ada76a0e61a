#!/usr/bin/env python3
"""Stage 3: remove badly framed images (classifier). Logic: hbr/stages/classify.py; options: -h."""
import sys
from pathlib import Path

from hbr.cli import entry

if __name__ == "__main__":
    # the script's name is its stage's name in the registry (hbr/pipeline.py); the stage's
    # module (and torch) is imported only after the command line is parsed: -h is instant
    sys.exit(entry(Path(__file__).stem))
