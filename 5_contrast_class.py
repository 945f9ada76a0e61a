#!/usr/bin/env python3
"""Stage 5: remove images of abnormal contrast, per background (classifier). Logic: hbr/stages/classify.py; options: -h."""
import sys

from hbr.stages.classify import main

if __name__ == "__main__":
    sys.exit(main("contrast"))
