#!/usr/bin/env python3
"""Stage 4: split images by background colour (no model). Logic: hbr/stages/background.py; options: -h."""
import sys

from hbr.stages.background import main

if __name__ == "__main__":
    sys.exit(main())
