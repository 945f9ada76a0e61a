#!/usr/bin/env python3
"""Stage 6: remove images of non-standard head pose, per background (classifier). Logic: hbr/stages/classify.py; options: -h."""
import sys

from hbr.stages.classify import main

if __name__ == "__main__":
    sys.exit(main("pose"))
