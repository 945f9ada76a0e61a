"""Labelling tools: the browser page that answers the QC questions and writes the label TSVs.

`python -m hbr.labelling.page -h` starts the page; `hbr.labelling.labelfile` merges answers
into a label file without touching what else is in it.
"""
