#!/usr/bin/env python3
"""Stage 2: keep whole-body bone images (classifier). Logic: hbr/stages/classify.py; options: -h."""
import sys

from hbr.stages.classify import main

if __name__ == "__main__":
    sys.exit(main("body"))
