#!/usr/bin/env python3
"""Stage 8: landmark boxes, centres and HBR phenotypes, per background. Logic: hbr/stages/measure.py; options: -h."""
import sys

from hbr.stages.measure import main

if __name__ == "__main__":
    sys.exit(main())
