"""File helpers: atomic writes, hard links, TSV tables and image folders.

Every output is written to a temporary name in the same folder and renamed, so a
killed run never leaves a half-written file that a re-run or a user would trust.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import struct
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from isal import isal_zlib

from hbr.pipeline import image_folders

TMP_PREFIX = ".tmp-"


def _temporary_name(path: Path) -> Path:
    """A name beside `path` that no other process or thread writing `path` uses meanwhile.

    Only the end of the file name is kept, so a long name stays within the file system's limit.
    """
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name[-96:]}")


def _discard(tmp: Path, path: Path, exc: BaseException) -> None:
    """Remove a failed write's temporary; an OSError then names the file the user asked for."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
    if isinstance(exc, OSError) and exc.filename == str(tmp):
        exc.filename = str(path)


@contextlib.contextmanager
def atomic_path(path: str | Path, make_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` (not created); rename it onto `path` if the block succeeds.

    `make_folder` False: the block makes the folder itself when missing (see _write_new_file).
    """
    path = Path(path)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp, path, exc)
        raise


def _write_new_file(path: Path, data: bytes) -> None:
    """Write `data` into a new file at `path` (write_bytes' temporary), the folder made when
    missing; a file already there (a temporary of a killed run) is unlinked first, never
    rewritten in place.

    os.open/os.write and a folder made only when missing: on tmpfs a 3.5 KB file took 18 us
    instead of 30 us with open().write and 46 us with an unconditional mkdir first.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows only
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        path.unlink()
        fd = os.open(path, flags, 0o666)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write bytes to `path` (through a temporary renamed onto it); the folder is
    made when missing."""
    with atomic_path(path, make_folder=False) as tmp:
        _write_new_file(tmp, data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write text (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    """Atomically write JSON, indented."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically save an array as .npy."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getvalue())


# PNG is written here rather than by cv2.imencode, which spends most of its time in zlib:
# ISA-L's deflate (python-isal) encodes a real DXA image 3.3x faster (0.37 vs 1.24 ms) and a
# landmark mask 7x faster (0.05 vs 0.38 ms). Row filters, chosen by measurement: "up" (each
# byte minus the one above) for DXA images, none for masks, which are zero almost everywhere.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW_FILTERS = {"none": 0, "up": 2}
# ISA-L level 0 (one pass, fixed Huffman codes): the same bytes for the same pixels, every
# time. Levels 1-3 choose matches with the help of memory they do not always initialise, so
# identical masks came out as different (equally valid) files: in repeated stage-7 runs, 5 of
# ~44,000 masks differed from the first run's at level 1, none of ~48,000 at level 0. A
# resumed run must write the same files as an uninterrupted one. Level 1 made files a fifth
# smaller (a real DXA image 57.6 against 70.4 KiB, beside its 211 KiB npy) at the same speed.
PNG_DEFLATE_LEVEL = 0
_COLOUR_TYPES = {2: 0, 3: 2}  # array dimensions -> PNG colour type (grey, RGB)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray, row_filter: str = "up") -> bytes:
    """PNG bytes of a grey (H, W) or OpenCV-ordered BGR (H, W, 3) image of uint8 or uint16."""
    if (image.dtype not in (np.uint8, np.uint16) or image.ndim not in _COLOUR_TYPES or image.size == 0
            or (image.ndim == 3 and image.shape[2] != 3)):
        raise ValueError(f"cannot encode an image of shape {image.shape} and type {image.dtype} as PNG")
    height, width = image.shape[:2]
    if image.ndim == 3:
        image = image[..., ::-1]  # PNG stores RGB
    # PNG samples are big-endian; filters work on the bytes of a row
    rows = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder(">")).view(np.uint8).reshape(height, -1)
    scanlines = np.empty((height, rows.shape[1] + 1), np.uint8)
    scanlines[:, 0] = ROW_FILTERS[row_filter]
    if row_filter == "up":  # the first row's "row above" is zeros; uint8 differences wrap modulo 256 as PNG's
        scanlines[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])
    else:
        scanlines[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, 8 * image.itemsize, _COLOUR_TYPES[image.ndim], 0, 0, 0)
    pixels = isal_zlib.compress(scanlines, PNG_DEFLATE_LEVEL)
    return b"".join((PNG_SIGNATURE, _png_chunk(b"IHDR", header), _png_chunk(b"IDAT", pixels), _png_chunk(b"IEND", b"")))


def write_png(path: str | Path, image: np.ndarray, row_filter: str = "up") -> None:
    """Atomically save an image as PNG (`row_filter` "none" for masks, see encode_png)."""
    write_bytes(path, encode_png(image, row_filter))


# The header np.save writes for a plain, C-ordered array, parsed here: np.load parses it with
# Python's ast, and a DXA image took 0.14-0.15 ms with np.load against 0.07 ms here. Any
# other header goes through np.load.
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEAD_BYTES = 128  # np.save pads magic + header to a multiple of 64 bytes: 128 for up to 4-D
_NPY_HEADER = re.compile(rb"\{'descr': '([<>|][a-z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \} *\n")


def read_npy(path: str | Path) -> np.ndarray:
    """Load a .npy image without pickles."""
    with open(path, "rb", buffering=0) as fh:
        head = fh.read(_NPY_HEAD_BYTES)
        if not head.startswith(_NPY_MAGIC[:6]):  # any version
            raise ValueError(f"{path}: not a .npy file ({len(head)} bytes)")
        end = 10 + int.from_bytes(head[8:10], "little")
        header = _NPY_HEADER.fullmatch(head, 10, end) if head[:8] == _NPY_MAGIC else None
        if header is not None:
            dtype, shape = np.dtype(header[1].decode()), tuple(int(v) for v in header[2].split(b",") if v.strip())
            array = np.empty(shape, dtype)
            pixels = memoryview(array.reshape(-1)).cast("B")
            first = head[end:]
            pixels[: len(first)] = first
            got = len(first) + (fh.readinto(pixels[len(first):]) if len(pixels) > len(first) else 0)
            if got != len(pixels) or fh.read(1):
                raise ValueError(f"{path}: the pixels do not fill the header's shape {shape} and type {dtype} "
                                 "(truncated file?)")
            return array
    return np.load(path, allow_pickle=False)  # another header version, Fortran order, a structured type...


def write_tsv(path: str | Path, table: pd.DataFrame) -> None:
    """Atomically write a DataFrame as a tab-separated table without index (streamed: the
    table's text is never whole in memory)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, lineterminator="\n", encoding="utf-8")


@contextlib.contextmanager
def tsv_writer(path: str | Path, columns: Sequence[str]) -> Iterator[Callable[[Sequence], None]]:
    """Atomically write a tab-separated table row by row: yields a function that writes one
    row (its cells in `columns` order). The file appears, complete, when the block ends.

    The same bytes as `write_tsv` of the same table (the csv module quotes as pandas does),
    without building the table or its text in memory first.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        yield writer.writerow


def write_tsv_rows(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Atomically stream rows (cells in `columns` order) to a tab-separated table; the number of rows."""
    n = 0
    with tsv_writer(path, columns) as write_row:
        for row in rows:
            write_row(row)
            n += 1
    return n


def read_tsv(path: str | Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a tab-separated table with every column as text (no type guessing); only the
    `columns` that it has when they are given."""
    usecols = None if columns is None else set(columns).__contains__
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, usecols=usecols)


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to `dst` (replacing another file there); copy when linking is impossible.

    A new link appears atomically, so the usual case (nothing at `dst` yet) is a single
    system call; only another file already at `dst` is replaced through a temporary name.
    """
    src, dst = Path(src), Path(dst)
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        if os.path.samefile(src, dst):  # linked by an earlier run: the same bytes already
            return
    except OSError:
        pass  # another file system, links not supported, or no folder yet: below
    with atomic_path(dst) as tmp:
        tmp.unlink(missing_ok=True)  # left by a killed run of the same process id
        try:
            os.link(src, tmp)
        except OSError:  # other file system, or links not supported
            tmp.write_bytes(src.read_bytes())


def remove_stale(folder: str | Path, keep: Iterable[str]) -> int:
    """Delete files in `folder` whose names are not in `keep` (left by an earlier run); count them."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    keep = set(keep)
    removed = 0
    for p in folder.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink()
            removed += 1
    return removed


def list_images(npy_dir: str | Path) -> list[str]:
    """Image ids (file stems) of the .npy files in a folder, sorted; temporaries ignored."""
    npy_dir = Path(npy_dir)
    if not npy_dir.is_dir():
        return []
    return sorted(
        p.stem for p in npy_dir.iterdir() if p.suffix == ".npy" and not p.name.startswith(TMP_PREFIX)
    )


def keep_images(ids: Sequence[str], src_prefix: str, dst_prefix: str, workdir: Path) -> None:
    """Hard-link the npy and png of `ids` from one stage's folders into another's.

    Files of the destination not in `ids` (from an earlier run with other decisions)
    are removed, so the folder always mirrors the decision table.
    """
    src_npy, src_png = image_folders(workdir, src_prefix)
    dst_npy, dst_png = image_folders(workdir, dst_prefix)
    for folder in (dst_npy, dst_png):
        folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        link_or_copy(src_npy / f"{image_id}.npy", dst_npy / f"{image_id}.npy")
        png = src_png / f"{image_id}.png"
        if png.exists():
            link_or_copy(png, dst_png / f"{image_id}.png")
    remove_stale(dst_npy, {f"{i}.npy" for i in ids})
    remove_stale(dst_png, {f"{i}.png" for i in ids})
