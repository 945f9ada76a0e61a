#!/usr/bin/env python3
"""Stage 7: U-Net masks of the head and six body landmarks, per background. Logic: hbr/stages/segment.py; options: -h."""
import sys

from hbr.stages.segment import main

if __name__ == "__main__":
    sys.exit(main())
