"""hbr.dicom: header reading, the dcm_table row, pixel decoding and its checks."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from hbr import dicom
from hbr.dicom import UnreadableDicom

LIMIT = 64 * 2**20


def real_file(folder, instance: int):
    return next(p for p in sorted(folder.glob("*.dcm")) if p.name.endswith(f".{instance}.12.1.dcm"))


def test_real_header_row_and_pixels(real_dicom_dir):
    data = real_file(real_dicom_dir, 12).read_bytes()
    header = dicom.read_header(data[: dicom.HEADER_PREFIX_BYTES], complete=False)
    assert header is not None, "the real header fits in the prefix"
    assert dicom.protocol_name(header) == "Total Body"
    assert dicom.image_id("1234567_20158_2_0", header) == "1234567_20158_2_0_12"
    ds, pixels = dicom.decode_pixels(data, LIMIT)
    row = dicom.metadata_row(ds, "1234567_20158_2_0", "1234567_20158_2_0_12")
    assert list(row) == list(dicom.TABLE_COLUMNS)
    assert row["height"] == "1.77" and row["Sex"] == "M" and row["Age"] == "053Y"
    assert float(row["Weight"]) == 78 and row["Ethnic"] == "White"
    assert row["DeviceSoftware"] == "210419_16.20.059"
    assert row["ExposedArea"] == "658x1920" and (row["Rows"], row["Columns"]) == ("791", "272")
    assert float(row["spacing_mm_x"]) == pytest.approx(658 / 272) == pytest.approx(2.42, abs=0.01)
    assert float(row["spacing_mm_y"]) == pytest.approx(1920 / 791, abs=1e-6)
    reference = pydicom.dcmread(real_file(real_dicom_dir, 12)).pixel_array
    assert pixels.dtype == reference.dtype == np.uint8
    np.testing.assert_array_equal(pixels, reference)


def test_other_protocol_read_from_prefix_only(real_dicom_dir):
    data = real_file(real_dicom_dir, 7).read_bytes()  # LVA, 1.4 MB
    header = dicom.read_header(data[:4096], complete=False)
    assert dicom.protocol_name(header) == "LVA"


def test_prefix_cut_inside_header_asks_for_more(make_dicom):
    data = make_dicom(tags={"StudyDescription": "x" * 60, "ImageComments": "y" * 9000})
    assert dicom.read_header(data[:2000], complete=False) is None  # pydicom would return a partial header
    assert dicom.protocol_name(dicom.read_header(data, complete=True)) == "Total Body"


def test_not_dicom():
    with pytest.raises(UnreadableDicom, match="not a DICOM file"):
        dicom.read_header(b"hello, this is a text file\n" * 20, complete=True)


def test_no_protocol_name_is_none(make_dicom):
    header = dicom.read_header(make_dicom(protocol=None), complete=True)
    assert dicom.protocol_name(header) == dicom.NO_PROTOCOL == "(none)"


def with_invalid_instance_number(data: bytes) -> bytes:
    """pydicom refuses to write an invalid IS value, so patch the bytes of a valid one."""
    assert data.count(b"7654321 ") == 1
    return data.replace(b"7654321 ", b"abc1234 ")


@pytest.mark.parametrize(
    ("instance", "expected"),
    [("12", "s_12"), ("012", "s_12"), (None, "missing InstanceNumber"), ("bad", "invalid InstanceNumber 'abc1234'")],
)
def test_image_id(make_dicom, instance, expected):
    if instance == "bad":
        data = with_invalid_instance_number(make_dicom(instance=7654321))
    else:
        data = make_dicom(instance=instance)
    header = dicom.read_header(data, complete=True)
    if expected.startswith("s_"):
        assert dicom.image_id("s", header) == expected
    else:
        with pytest.raises(UnreadableDicom, match=expected):
            dicom.image_id("s", header)


def test_odd_and_missing_tags_written_as_given(make_dicom):
    ds = dicom.read_header(make_dicom(tags={"PatientSize": "0", "PatientAge": "53"}), complete=True)
    row = dicom.metadata_row(ds, "s", "s_12")
    assert (row["height"], row["Age"]) == ("0", "53")
    ds = dicom.read_header(
        make_dicom(omit=("PatientSize", "PatientSex", "ExposedArea", "DeviceSerialNumber", "SoftwareVersions")),
        complete=True,
    )
    row = dicom.metadata_row(ds, "s", "s_12")
    assert row["height"] == row["Sex"] == row["ExposedArea"] == row["spacing_mm_x"] == row["DeviceSoftware"] == ""
    assert row["Weight"] == "64.00"


@pytest.mark.parametrize("area", [[0, 1920], [658]])
def test_spacing_empty_when_exposed_area_unusable(make_dicom, area):
    ds = dicom.read_header(make_dicom(tags={"ExposedArea": area}), complete=True)
    assert dicom.pixel_spacing_mm(ds) is None
    assert dicom.metadata_row(ds, "s", "s_12")["spacing_mm_y"] == ""


def test_value_with_tab_stays_on_one_cell(make_dicom):
    ds = dicom.read_header(make_dicom(tags={"EthnicGroup": "White\tBritish"}), complete=True)
    assert dicom.metadata_row(ds, "s", "s_12")["Ethnic"] == "White British"


def test_truncated_pixel_data(make_dicom):
    data = make_dicom()
    with pytest.raises(UnreadableDicom, match="truncated"):
        dicom.decode_pixels(data[:-100], LIMIT)


def test_declared_size_over_limit_refused_before_decoding(make_dicom):
    data = make_dicom(tags={"Rows": 60000, "Columns": 60000})
    with pytest.raises(UnreadableDicom, match="over the limit"):
        dicom.decode_pixels(data, LIMIT)


def test_no_pixel_data(make_dicom):
    with pytest.raises(UnreadableDicom, match="no pixel data"):
        dicom.decode_pixels(make_dicom(omit=("PixelData",)), LIMIT)


def test_rle_written_by_pydicom_round_trips(make_dicom, tmp_path):
    """RLE compression of our own synthetic image: decoded pixels equal the originals."""
    original = (np.arange(40 * 30) % 251).astype(np.uint8).reshape(40, 30)
    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels=original)))
    ds.compress(RLELossless)
    path = tmp_path / "rle.dcm"
    ds.save_as(path)
    _, pixels = dicom.decode_pixels(path.read_bytes(), LIMIT)
    np.testing.assert_array_equal(pixels, original)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",  # RLE Lossless, int16
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (openjpeg plugin)
        "JPGExtended.dcm",  # JPEG extended 12-bit (libjpeg plugin)
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (libjpeg plugin)
    ],
)
def test_compressed_greyscale_decodes(pydicom_test_file, name):
    path = pydicom_test_file(name)
    _, pixels = dicom.decode_pixels(path.read_bytes(), LIMIT)
    np.testing.assert_array_equal(pixels, pydicom.dcmread(path).pixel_array)


def test_jpeg_lossless_colour_refused(pydicom_test_file):
    """The only JPEG lossless file pydicom ships is RGB: decodable, but not a DXA image."""
    path = pydicom_test_file("SC_rgb_jpeg_gdcm.dcm")
    assert pydicom.dcmread(path).pixel_array.shape == (100, 100, 3)  # the libjpeg plugin decodes it
    with pytest.raises(UnreadableDicom, match="colour image"):
        dicom.decode_pixels(path.read_bytes(), LIMIT)


def test_undecodable_compressed_data(pydicom_test_file):
    path = pydicom_test_file("JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(UnreadableDicom, match="cannot decode JPEG 2000"):
        dicom.decode_pixels(path.read_bytes(), LIMIT)


def test_png_pixels():
    u8 = np.array([[0, 252]], np.uint8)
    assert dicom.png_pixels(u8) is u8
    u16 = dicom.png_pixels(np.array([[0, 4095]], np.int16))
    assert u16.dtype == np.uint16 and u16.tolist() == [[0, 4095]]
    signed = dicom.png_pixels(np.array([[-100, 0, 100]], np.int16))
    assert signed.dtype == np.uint16 and signed.tolist() == [[0, 32768, 65535]]
