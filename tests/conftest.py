"""Shared test fixtures: the real example DICOMs, and small synthetic DICOMs and zips.

The real files live outside the repository (../shared/ukb_dxa_examples, read-only);
tests that need them are skipped with a reason when they are absent. Synthetic
DICOMs are built with pydicom in memory, so no test needs the network.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DICOM_DIR = REPO_ROOT.parent / "shared" / "ukb_dxa_examples"
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="session")
def real_dicom_dir() -> Path:
    """The folder of the 8 real UK Biobank example DICOMs (read-only: never write into it)."""
    if not any(REAL_DICOM_DIR.glob("*.dcm")):
        pytest.skip(f"real example DICOMs not found in {REAL_DICOM_DIR}")
    return REAL_DICOM_DIR


@pytest.fixture
def real_visit_zip(tmp_path: Path, real_dicom_dir: Path) -> Path:
    """The 8 real DICOMs zipped as one participant visit, tmp_path/zips/1234567_20158_2_0.zip."""
    path = tmp_path / "zips" / "1234567_20158_2_0.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for dcm in sorted(real_dicom_dir.glob("*.dcm")):
            archive.write(dcm, dcm.name)
    return path


def build_dicom(
    *,
    protocol: Optional[str] = "Total Body",
    instance: Optional[int | str] = 12,
    pixels: Optional[np.ndarray] = None,
    rows: int = 32,
    columns: int = 64,
    tags: Optional[Mapping[str, object]] = None,
    omit: tuple[str, ...] = (),
) -> bytes:
    """A small valid DICOM file (Implicit VR Little Endian, 8-bit grey) as bytes.

    Tags look like the real UK Biobank files; `tags` adds or replaces any by keyword,
    `omit` removes some, `protocol=None` / `instance=None` leave those tags out.
    """
    if pixels is None:
        pixels = (np.arange(rows * columns, dtype=np.uint32).reshape(rows, columns) % 253).astype(np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientSex = "F"
    ds.PatientAge = "061Y"
    ds.PatientSize = "1.65"
    ds.PatientWeight = "64.00"
    ds.EthnicGroup = "White"
    ds.DeviceSerialNumber = "210419"
    ds.SoftwareVersions = "16.20.059"
    if protocol is not None:
        ds.ProtocolName = protocol
    if instance is not None:
        ds.InstanceNumber = instance
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.ExposedArea = [658, 1920]
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # odd values (age '53') are wanted here
        warnings.simplefilter("ignore")
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        for keyword in omit:
            delattr(ds, keyword)
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_zip(path: Path, members: Mapping[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write a zip of `members` (name -> bytes) at `path`; names are stored as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compression)
    return path


@pytest.fixture
def make_dicom() -> Callable[..., bytes]:
    """Factory of small synthetic DICOM files (see build_dicom)."""
    return build_dicom


@pytest.fixture
def make_zip() -> Callable[..., Path]:
    """Factory writing a zip of synthetic members (see build_zip)."""
    return build_zip


@pytest.fixture
def pydicom_test_file() -> Callable[[str], Path]:
    """Path of a file pydicom ships in pydicom/data/test_files; skips when not installed locally.

    (pydicom's get_testdata_file may try to download missing files; there is no network.)
    """

    def find(name: str) -> Path:
        path = PYDICOM_TEST_FILES / name
        if not path.is_file():
            pytest.skip(f"pydicom test file {name} not installed locally")
        return path

    return find
