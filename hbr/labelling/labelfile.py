"""Merge answers into a classifier label TSV (labels/README.md) without losing anything in it.

A label file is read with the rules of `hbr.labels.read_class_labels`: a header row with
`File_Name` and `Label` (`File_Name_npy` optional), the image id is `File_Name` without a
`.npy`/`.png`/`.dcm` ending, a label is 0 or 1, and of two rows for one image the first
wins (later ones are reported with their line number and skipped). An answer changes the
label of the row that counts for its image, or appends a row; every other line stays as
it was, in its place. Before the first change of a session the file is copied to a dated
backup beside it, and every write goes through a temporary file renamed onto the label
file (`hbr.files.write_text`), so a killed server never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from hbr.errors import HbrError
from hbr.files import write_bytes, write_text

COLUMNS = ("File_Name", "Label", "File_Name_npy")  # the format of labels/README.md, in this order
BOM = "\ufeff"  # spreadsheet programs may start a saved TSV with one


def image_id(file_name: str) -> str:
    """The image id a `File_Name` cell names (as read_class_labels reads it: ending dropped)."""
    return re.sub(r"\.(npy|png|dcm)$", "", file_name.strip())


def _split(line: str) -> list[str]:
    """The cells of one TSV line (quotes as pandas reads them)."""
    return next(csv.reader([line], delimiter="\t"), [])


def _join(cells: list[str]) -> str:
    """One TSV line from cells, quoted only where a cell needs it (as hbr.files' writers do)."""
    out = io.StringIO()
    csv.writer(out, delimiter="\t", lineterminator="").writerow(cells)
    return out.getvalue()


@dataclass
class LabelFile:
    """A label TSV as lines, with the label that counts for each image and where it is."""

    path: Path
    lines: list[str]  # every line of the file without its line end, the header first
    columns: list[str]
    labels: dict[str, int]  # image id -> the label that counts (the first valid row's)
    rows: dict[str, int]  # image id -> index in `lines` of that row
    problems: list[str]  # rows skipped, one line each, with their line numbers
    newline: str = "\n"
    bom: str = ""

    def text(self) -> str:
        """The file's text as it would be written."""
        return self.bom + "".join(line + self.newline for line in self.lines)


def parse_label_text(text: str, path: Path) -> LabelFile:
    """Parse the text of a label file (empty text: a new file with the standard header)."""
    path = Path(path)
    bom = BOM if text.startswith(BOM) else ""
    text = text[len(bom):]
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        return LabelFile(path, ["\t".join(COLUMNS)], list(COLUMNS), {}, {}, [], newline, bom)
    header_at = next(i for i, line in enumerate(lines) if line.strip())
    columns = [c.strip() for c in _split(lines[header_at])]
    missing = [c for c in COLUMNS[:2] if c not in columns]
    if missing:
        raise HbrError(
            f"{path} line {header_at + 1}: missing column(s) {', '.join(missing)}; expected "
            f"{', '.join(COLUMNS)} (found: {', '.join(columns) or 'none'}); the file was not changed"
        )
    name_at, label_at = columns.index("File_Name"), columns.index("Label")
    labels: dict[str, int] = {}
    rows: dict[str, int] = {}
    problems: list[str] = []
    for index in range(header_at + 1, len(lines)):
        if not lines[index].strip():
            continue
        cells = _split(lines[index]) + [""] * len(columns)
        image, label = image_id(cells[name_at]), cells[label_at].strip()
        number = index + 1
        if not image:
            problems.append(f"{path} line {number}: no File_Name; row skipped")
        elif label not in ("0", "1"):
            problems.append(f"{path} line {number}: Label {label!r} of {image} is not 0 or 1; row skipped")
        elif image in labels:
            first = rows[image] + 1
            if labels[image] == int(label):
                problems.append(f"{path} line {number}: {image} is listed twice (also line {first}); row skipped")
            else:
                problems.append(
                    f"{path} lines {first} and {number}: {image} is labelled {labels[image]} and {label}; "
                    f"the first row counts (line {first}, label {labels[image]}), line {number} is skipped"
                )
        else:
            labels[image], rows[image] = int(label), index
    return LabelFile(path, lines, columns, labels, rows, problems, newline, bom)


def read_label_file(path: Path) -> LabelFile:
    """Read a label file; a missing file reads as an empty one with the standard header."""
    path = Path(path)
    if not path.exists():
        return parse_label_text("", path)
    try:
        return parse_label_text(path.read_bytes().decode("utf-8"), path)
    except UnicodeDecodeError as exc:
        raise HbrError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file was not changed") from None


def with_label(labels: LabelFile, image: str, label: Optional[int]) -> Optional[str]:
    """The file's new text with `image` labelled `label` (None: its counting row removed),
    or None when that changes nothing.

    Only the row that counts for the image changes; a new image is appended as
    `File_Name, Label, File_Name_npy` (other columns empty); every other line is kept.
    """
    if labels.labels.get(image) == label:
        return None
    lines = list(labels.lines)
    index = labels.rows.get(image)
    if label is None:
        del lines[index]
    elif index is not None:
        cells = _split(lines[index])
        cells += [""] * (len(labels.columns) - len(cells))
        cells[labels.columns.index("Label")] = str(label)
        lines[index] = _join(cells)
    else:
        new = {"File_Name": image, "Label": str(label), "File_Name_npy": f"{image}.npy"}
        lines.append(_join([new.get(column, "") for column in labels.columns]))
    return LabelFile(labels.path, lines, labels.columns, {}, {}, [], labels.newline, labels.bom).text()


def backup_path(path: Path, when: datetime) -> Path:
    """A dated name beside `path` that is not taken: `3_crop_label.tsv.2026-12-03T091500.bak`."""
    stamp = when.strftime("%Y-%m-%dT%H%M%S")
    candidate = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while candidate.exists():  # two sessions within one second: never overwrite a backup
        n += 1
        candidate = path.with_name(f"{path.name}.{stamp}-{n}.bak")
    return candidate


def make_backup(path: Path, when: Optional[datetime] = None) -> Optional[Path]:
    """Copy the file as it is to a dated backup beside it; None when there is no file yet."""
    path = Path(path)
    if not path.exists():
        return None
    backup = backup_path(path, when or datetime.now())
    write_bytes(backup, path.read_bytes())
    return backup


class LabelWriter:
    """Writes one label file for a labelling session: re-reads it before every change (so an
    edit made meanwhile by hand is kept), backs it up before the session's first change,
    and reports each problem of the file once through `warn`."""

    def __init__(self, path: Path, warn: Callable[[str], None] = print):
        self.path = Path(path)
        self.warn = warn
        self.backup: Optional[Path] = None
        self._changed = False
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def read(self) -> LabelFile:
        """The file as it is now; new problems in it are reported."""
        labels = read_label_file(self.path)
        for problem in labels.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self.warn(problem)
        return labels

    def set(self, image: str, label: Optional[int]) -> Optional[int]:
        """Label `image` (None: remove its row, for an undo); returns the label it had before."""
        with self._lock:
            labels = self.read()
            previous = labels.labels.get(image)
            text = with_label(labels, image, label)
            if text is not None:
                if not self._changed:
                    self.backup = make_backup(self.path)
                    self._changed = True
                write_text(self.path, text)
            return previous
