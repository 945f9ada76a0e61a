"""DICOM reading for stage 1: header, metadata row, and pixel decoding with checks.

Everything here works on bytes already in memory (a zip member or a file read with a
size limit), never on member names, so nothing a DICOM or a zip says can make us
touch the file system. A file we cannot use raises `UnreadableDicom` whose message is
the one-line reason that goes into 1_errors.tsv.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

# dcm_table.tsv columns, in this order (SPEC 2, stage 1): the upstream ones, then extras.
TABLE_COLUMNS = (
    "folder",
    "ID",
    "height",
    "Sex",
    "Age",
    "Weight",
    "Ethnic",
    "DeviceSoftware",
    "Image",
    "InstanceNumber",
    "Rows",
    "Columns",
    "ExposedArea",
    "spacing_mm_x",
    "spacing_mm_y",
)

# Table column <- DICOM keyword, copied as the DICOM text (downstream decides what is usable).
_TEXT_COLUMNS = {
    "ID": "SOPInstanceUID",
    "height": "PatientSize",
    "Sex": "PatientSex",
    "Age": "PatientAge",
    "Weight": "PatientWeight",
    "Ethnic": "EthnicGroup",
    "Rows": "Rows",
    "Columns": "Columns",
}

# Headers of the real files end (at the pixel data) after ~1.3 kB; reading only this
# much of each member avoids inflating the pixels of the protocols we skip.
HEADER_PREFIX_BYTES = 8 * 1024
# The tags that decide what happens to a member (skip, or decode as image {stem}_{n}).
DECIDING_TAGS = ("ProtocolName", "InstanceNumber")
NO_PROTOCOL = "(none)"

# What pydicom and its pixel plugins raise on malformed input: parsing errors (EOF,
# bad lengths, bad values), missing handlers, and plugin failures (RuntimeError).
_DICOM_ERRORS = (
    InvalidDicomError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
    OverflowError,
    RuntimeError,
    MemoryError,
    struct.error,
)


class UnreadableDicom(Exception):
    """A DICOM (or would-be DICOM) we cannot use; str(exc) is the reason for 1_errors.tsv."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _dcmread(
    data: bytes, *, with_pixels: bool, tags: Optional[Sequence[str]] = None
) -> tuple[Dataset, int]:
    """Parse bytes as DICOM (only `tags`, if given); return the dataset and where the parser stopped."""
    fp = io.BytesIO(data)
    # pydicom warns about every odd value; the table keeps values as given instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fp, stop_before_pixels=not with_pixels, specific_tags=tags)
    return ds, fp.tell()


def _stopped_at_pixel_data(data: bytes, position: int) -> bool:
    """True when the parser stopped on a (7FE0,xxxx) tag, i.e. the header was complete."""
    return data[position : position + 2] in (b"\xe0\x7f", b"\x7f\xe0")


def read_header(
    data: bytes, *, complete: bool, tags: Optional[Sequence[str]] = None
) -> Optional[Dataset]:
    """The header (everything before the pixel data, or only `tags`) of a DICOM given as bytes.

    `data` is either the whole file (`complete=True`) or its first bytes. For a prefix,
    returns None when the header does not end inside it (pydicom silently returns a
    partial dataset for cut-off input, so we check where it stopped): the caller then
    reads the whole member. Raises UnreadableDicom for a file that is not DICOM.
    Parsing only DECIDING_TAGS is about a quarter faster than the whole header.
    """
    try:
        ds, position = _dcmread(data, with_pixels=False, tags=tags)
    except InvalidDicomError:
        # No 'DICM' prefix at byte 128: more bytes will not change that.
        if complete or len(data) >= 132:
            raise UnreadableDicom("not a DICOM file (no DICM prefix)") from None
        return None
    except _DICOM_ERRORS as exc:
        if complete:
            raise UnreadableDicom(f"unreadable DICOM header ({_first_line(exc)})") from None
        return None
    if complete or _stopped_at_pixel_data(data, position):
        return ds
    return None


def _text(ds: Dataset, keyword: str) -> str:
    """The value of a tag as one line of text; '' when absent or unreadable."""
    try:
        with warnings.catch_warnings():  # odd values are kept as text, no need to warn
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except _DICOM_ERRORS:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        text = "\\".join(str(v) for v in value)  # DICOM's own multi-value separator
    else:
        text = str(value)
    # A tab or newline inside a value would break the TSV row.
    return " ".join(text.split()) if any(c in text for c in "\t\r\n") else text.strip()


def protocol_name(ds: Dataset) -> str:
    """ProtocolName (0018,1030), or '(none)' when absent or empty."""
    return _text(ds, "ProtocolName") or NO_PROTOCOL


def instance_number(ds: Dataset) -> int:
    """InstanceNumber (0020,0013) as an integer; UnreadableDicom when missing or invalid."""
    text = _text(ds, "InstanceNumber")
    if not text:
        raise UnreadableDicom("missing InstanceNumber (0020,0013); cannot name the image")
    try:
        return int(text)
    except ValueError:
        raise UnreadableDicom(f"invalid InstanceNumber {text!r}; cannot name the image") from None


def image_id(source_stem: str, ds: Dataset) -> str:
    """Image id `{source stem}_{InstanceNumber}` (e.g. 1000003_20158_2_0_12)."""
    return f"{source_stem}_{instance_number(ds)}"


def _numbers(ds: Dataset, keyword: str) -> Optional[list[float]]:
    text = _text(ds, keyword)
    if not text:
        return None
    try:
        return [float(v) for v in text.split("\\")]
    except ValueError:
        return None


def exposed_area_text(ds: Dataset) -> str:
    """ExposedArea (0040,0303) as 'width x height' in mm, e.g. '658x1920'; '' when absent."""
    values = _text(ds, "ExposedArea")
    return values.replace("\\", "x")


def pixel_spacing_mm(ds: Dataset) -> Optional[tuple[float, float]]:
    """(x, y) pixel size in mm from ExposedArea / (Columns, Rows); None when not usable.

    The real files have no PixelSpacing; ExposedArea is the scanned field in mm
    ([width, height]), so its ratio to the image size is the scanner's pixel size.
    """
    area = _numbers(ds, "ExposedArea")
    rows, columns = _numbers(ds, "Rows"), _numbers(ds, "Columns")
    if not area or len(area) != 2 or not rows or not columns:
        return None
    if min(area[0], area[1], rows[0], columns[0]) <= 0:
        return None
    return area[0] / columns[0], area[1] / rows[0]


def metadata_row(ds: Dataset, source_stem: str, image: str) -> dict[str, str]:
    """One dcm_table.tsv row (all text, TABLE_COLUMNS order) for an image's header.

    Values are copied as the DICOM gives them (PatientSize in metres, PatientAge like
    '053Y', PatientWeight like '78.00'); a missing tag is an empty cell.
    """
    row = {column: "" for column in TABLE_COLUMNS}
    row["folder"] = source_stem
    row["Image"] = image
    for column, keyword in _TEXT_COLUMNS.items():
        row[column] = _text(ds, keyword)
    serial, software = _text(ds, "DeviceSerialNumber"), _text(ds, "SoftwareVersions")
    row["DeviceSoftware"] = f"{serial}_{software}" if serial or software else ""
    number = _text(ds, "InstanceNumber")
    row["InstanceNumber"] = str(int(number)) if number.lstrip("+-").isdigit() else number
    row["ExposedArea"] = exposed_area_text(ds)
    spacing = pixel_spacing_mm(ds)
    if spacing is not None:
        row["spacing_mm_x"], row["spacing_mm_y"] = (f"{s:.6f}" for s in spacing)
    return row


def _declared_size(ds: Dataset) -> tuple[int, int, int, int, int]:
    """(frames, rows, columns, samples, bits) as the header declares them."""

    def integer(keyword: str, default: int) -> int:
        text = _text(ds, keyword)
        try:
            return int(float(text)) if text else default
        except ValueError:
            raise UnreadableDicom(f"invalid {keyword} {text!r}") from None

    return (
        integer("NumberOfFrames", 1),
        integer("Rows", 0),
        integer("Columns", 0),
        integer("SamplesPerPixel", 1),
        integer("BitsAllocated", 0),
    )


def check_image_layout(ds: Dataset, max_bytes: int) -> tuple[int, int, int, int, int]:
    """Refuse, before decoding, what is not one greyscale frame or would decode too big.

    Returns the declared (frames, rows, columns, samples, bits).
    A compressed member of a few kB can declare 65535 x 65535 pixels; the decoder would
    try to allocate all of it, so the declared size is checked against the limit first.
    """
    if "PixelData" not in ds:
        raise UnreadableDicom("no pixel data (7FE0,0010)")
    frames, rows, columns, samples, bits = _declared_size(ds)
    if frames != 1:
        raise UnreadableDicom(f"{frames} frames; expected a single-frame image")
    if samples != 1:
        raise UnreadableDicom(f"colour image (SamplesPerPixel={samples}); expected greyscale")
    if rows <= 0 or columns <= 0 or bits <= 0:
        raise UnreadableDicom(
            f"invalid image size (Rows={rows}, Columns={columns}, BitsAllocated={bits})"
        )
    decoded = rows * columns * max(bits, 8) // 8
    if decoded > max_bytes:
        raise UnreadableDicom(
            f"image would decode to {decoded / 2**20:.1f} MB, over the limit of "
            f"{max_bytes / 2**20:g} MB (dicom.max_member_mb)"
        )
    return frames, rows, columns, samples, bits


def decode_pixels(data: bytes, max_bytes: int) -> tuple[Dataset, np.ndarray]:
    """Parse a whole DICOM with its pixels and decode them, exactly as stored.

    Returns the dataset and pydicom's pixel_array (dtype kept; no rescale, no LUT, no
    MONOCHROME1 inversion). Compressed transfer syntaxes decode through the installed
    pylibjpeg plugins. Raises UnreadableDicom for truncated or undecodable pixel data,
    colour or multi-frame images, and images over the size limit.
    """
    try:
        ds, _ = _dcmread(data, with_pixels=True)
    except InvalidDicomError:
        raise UnreadableDicom("not a DICOM file (no DICM prefix)") from None
    except _DICOM_ERRORS as exc:
        raise UnreadableDicom(f"unreadable DICOM ({_first_line(exc)})") from None
    _, rows, columns, _, _ = check_image_layout(ds, max_bytes)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    syntax_name = getattr(syntax, "name", str(syntax or "unknown transfer syntax"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except _DICOM_ERRORS as exc:
        if "less than expected" in str(exc):
            raise UnreadableDicom(f"truncated pixel data ({_first_line(exc)})") from None
        raise UnreadableDicom(f"cannot decode {syntax_name} pixel data ({_first_line(exc)})") from None
    expected = (rows, columns)
    if pixels.ndim != 2 or pixels.shape != expected:
        raise UnreadableDicom(f"decoded pixels have shape {pixels.shape}, header says {expected}")
    return ds, pixels


def png_pixels(pixels: np.ndarray) -> np.ndarray:
    """The image to save as PNG: uint8 as is; other integers as 16-bit with the same values.

    Values that do not fit 0..65535 (negative, wider than 16 bits, or floating point)
    are rescaled linearly from their min..max to 0..65535: the PNG is then a viewing
    copy and the .npy stays the exact data.
    """
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.integer) and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        if low >= 0 and high <= 65535:
            return pixels.astype(np.uint16)
    values = pixels.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    scale = 65535.0 / (high - low) if high > low else 0.0
    return np.round((values - low) * scale).astype(np.uint16)
