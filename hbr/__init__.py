"""hbr: head-body-ratio phenotypes from whole-body DXA DICOM scans."""

__version__ = "0.1.0"
