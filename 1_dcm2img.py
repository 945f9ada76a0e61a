#!/usr/bin/env python3
"""Stage 1: DICOM zips -> Total Body images, dcm_table.tsv and 1_errors.tsv. Logic: hbr/stages/dcm2img.py; options: -h."""
import sys

from hbr.stages.dcm2img import main

if __name__ == "__main__":
    sys.exit(main())
