"""Stage 1 (1_dcm2img.py): real data, every kind of bad input, accounting, resume after a kill."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from hbr.dicom import TABLE_COLUMNS
from hbr.files import TMP_PREFIX, read_npy, read_tsv
from hbr.stages import dcm2img
from hbr.stages.dcm2img import ERROR_COLUMNS, SUMMARY_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLES = (dcm2img.TABLE_FILE, dcm2img.ERRORS_FILE, dcm2img.SUMMARY_FILE)


# ---------------------------------------------------------------- helpers


def run_stage1(input_path: Path, workdir: Path, *overrides: str) -> int:
    """Run `1_dcm2img.py --input ... --workdir ... [--set ...]` in this process; its exit status."""
    argv = ["--input", str(input_path), "--workdir", str(workdir)]
    for override in overrides:
        argv += ["--set", override]
    return dcm2img.main(argv)


def tables(workdir: Path):
    """(dcm_table, 1_errors, 1_summary) as text DataFrames."""
    return tuple(read_tsv(workdir / name) for name in TABLES)


def table_bytes(workdir: Path) -> dict[str, bytes]:
    return {name: (workdir / name).read_bytes() for name in TABLES}


def visit_members(make_dicom, **kwargs) -> dict[str, bytes]:
    """The members of a small synthetic visit: Total Body 11 and 12, plus one AP Spine."""
    return {
        "tissue.dcm": make_dicom(instance=11, **kwargs),
        "bone.dcm": make_dicom(instance=12, **kwargs),
        "spine.dcm": make_dicom(protocol="AP Spine", instance=18),
    }


def good_zip(folder: Path, make_dicom, make_zip, stem: str = "1000001_20158_2_0") -> Path:
    return make_zip(folder / f"{stem}.zip", visit_members(make_dicom))


def assert_good_zip_converted(workdir: Path, stem: str = "1000001_20158_2_0") -> None:
    table = read_tsv(workdir / dcm2img.TABLE_FILE)
    assert {f"{stem}_11", f"{stem}_12"} <= set(table["Image"])
    for image in (f"{stem}_11", f"{stem}_12"):
        assert (workdir / dcm2img.NPY_DIR / f"{image}.npy").is_file()
        assert (workdir / dcm2img.PNG_DIR / f"{image}.png").is_file()


def only_error(workdir: Path) -> dict[str, str]:
    errors = read_tsv(workdir / dcm2img.ERRORS_FILE)
    assert len(errors) == 1, errors.to_string()
    return errors.iloc[0].to_dict()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root (links not followed) with its size and mtime."""
    out = {}
    for path in root.rglob("*"):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


# ---------------------------------------------------------------- real data


def test_real_visit_zip(real_visit_zip, real_dicom_dir, tmp_path):
    work = tmp_path / "work"
    assert run_stage1(real_visit_zip.parent, work) == 0
    table, errors, summary = tables(work)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert list(table["Image"]) == ["1234567_20158_2_0_11", "1234567_20158_2_0_12"]
    assert list(table["InstanceNumber"]) == ["11", "12"]
    for _, row in table.iterrows():
        assert row["folder"] == "1234567_20158_2_0"
        assert row["height"] == "1.77" and row["Sex"] == "M" and row["Age"] == "053Y"
        assert float(row["Weight"]) == 78 and row["Ethnic"] == "White"
        assert row["DeviceSoftware"] == "210419_16.20.059"
        assert float(row["spacing_mm_x"]) == pytest.approx(2.42, abs=0.01)
        assert float(row["spacing_mm_y"]) == pytest.approx(2.43, abs=0.01)
    assert errors.empty and list(errors.columns) == list(ERROR_COLUMNS)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary.iloc[0].to_dict() == {
        "source": "1234567_20158_2_0",
        "file": str(real_visit_zip),
        "members": "8",
        "images": "2",
        "skipped": "AP Spine=1;LVA=1;Left Femur=1;Left Ortho Knee=1;Right Femur=1;Right Ortho Knee=1",
        "errors": "0",
        "other_files": "",
        "missing": "0",
    }
    for instance in (11, 12):
        source = next(real_dicom_dir.glob(f"*.{instance}.12.1.dcm"))
        reference = pydicom.dcmread(source).pixel_array
        image = f"1234567_20158_2_0_{instance}"
        npy = read_npy(work / dcm2img.NPY_DIR / f"{image}.npy")
        png = cv2.imread(str(work / dcm2img.PNG_DIR / f"{image}.png"), cv2.IMREAD_UNCHANGED)
        assert npy.dtype == reference.dtype and png.dtype == np.uint8
        np.testing.assert_array_equal(npy, reference)
        np.testing.assert_array_equal(png, reference)


def test_real_folder_of_dcm_is_read_only(real_dicom_dir, tmp_path):
    before = tree(real_dicom_dir)
    work = tmp_path / "work"
    assert run_stage1(real_dicom_dir, work) == 0
    assert tree(real_dicom_dir) == before
    table, errors, summary = tables(work)
    assert list(table["Image"]) == ["ukb_dxa_examples_11", "ukb_dxa_examples_12"]
    assert set(table["folder"]) == {"ukb_dxa_examples"}
    # The README beside the DICOMs is accounted for, as a non-DICOM file.
    assert list(errors["file"]) == [str(real_dicom_dir / "README.md")]
    assert "not a DICOM file" in errors["reason"][0]
    assert summary.iloc[0][["members", "images", "errors"]].tolist() == ["9", "2", "1"]


def test_single_dcm_named_after_its_folder(real_dicom_dir, tmp_path):
    one = next(real_dicom_dir.glob("*.12.12.1.dcm"))
    assert run_stage1(one, tmp_path / "work") == 0
    table, errors, _ = tables(tmp_path / "work")
    assert list(table["Image"]) == ["ukb_dxa_examples_12"] and errors.empty


def test_single_zip_input(tmp_path, make_dicom, make_zip):
    path = good_zip(tmp_path / "in", make_dicom, make_zip)
    make_zip(tmp_path / "in" / "other_20158_2_0.zip", visit_members(make_dicom))  # not asked for
    assert run_stage1(path, tmp_path / "work") == 0
    table, _, summary = tables(tmp_path / "work")
    assert list(table["Image"]) == ["1000001_20158_2_0_11", "1000001_20158_2_0_12"]
    assert summary.iloc[0]["skipped"] == "AP Spine=1"


# ---------------------------------------------------------------- bad input


def test_table_rows_by_source_name_then_image(tmp_path, make_dicom, make_zip):
    """dcm_table is written as the sources are read back, by source name: for names of one
    length (UK Biobank's) that is image-id order; here a longer name sorts its images apart."""
    for stem in ("x_1", "x", "y"):
        make_zip(tmp_path / "in" / f"{stem}.zip", {"a.dcm": make_dicom(instance=5), "b.dcm": make_dicom(instance=12)})
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    table, _, summary = tables(tmp_path / "work")
    assert list(table["Image"]) == ["x_12", "x_5", "x_1_12", "x_1_5", "y_12", "y_5"]
    assert list(summary["source"]) == ["x", "x_1", "y"]


@pytest.mark.parametrize("damage", ["garbage", "cut in half"])
def test_corrupt_zip(tmp_path, make_dicom, make_zip, damage):
    good = good_zip(tmp_path / "in", make_dicom, make_zip)
    bad = tmp_path / "in" / "bad_20158_2_0.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip" if damage == "garbage" else good.read_bytes()[:300])
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    assert_good_zip_converted(tmp_path / "work")
    error = only_error(tmp_path / "work")
    assert error["file"] == str(bad) and error["member"] == ""
    assert error["reason"].startswith("not a readable zip file (BadZipFile")


def test_member_not_dicom(tmp_path, make_dicom, make_zip):
    members = visit_members(make_dicom) | {"manifest.txt": b"participant,file\n1,bone.dcm\n"}
    make_zip(tmp_path / "in" / "1000001_20158_2_0.zip", members)
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    assert_good_zip_converted(tmp_path / "work")
    error = only_error(tmp_path / "work")
    assert (error["member"], error["reason"]) == ("manifest.txt", "not a DICOM file (no DICM prefix)")


def test_odd_member_name_stays_on_one_line(tmp_path, make_dicom, make_zip):
    make_zip(tmp_path / "in" / "1000001_20158_2_0.zip", visit_members(make_dicom) | {"odd\tname\n.txt": b"x"})
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    assert (tmp_path / "work" / dcm2img.ERRORS_FILE).read_text().count("\n") == 2
    assert only_error(tmp_path / "work")["member"] == "odd name .txt"


def test_truncated_pixel_data(tmp_path, make_dicom, make_zip):
    good_zip(tmp_path / "in", make_dicom, make_zip)
    make_zip(tmp_path / "in" / "cut_20158_2_0.zip", {"bone.dcm": make_dicom(instance=12)[:-500]})
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    assert_good_zip_converted(tmp_path / "work")
    error = only_error(tmp_path / "work")
    assert error["member"] == "bone.dcm" and error["reason"].startswith("truncated pixel data")
    assert not (tmp_path / "work" / dcm2img.NPY_DIR / "cut_20158_2_0_12.npy").exists()


def test_no_protocol_name_is_skipped_as_none(tmp_path, make_dicom, make_zip):
    members = visit_members(make_dicom) | {"unnamed.dcm": make_dicom(protocol=None, instance=3)}
    make_zip(tmp_path / "in" / "1000001_20158_2_0.zip", members)
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    table, errors, summary = tables(tmp_path / "work")
    assert len(table) == 2 and errors.empty
    assert summary.iloc[0]["skipped"] == "(none)=1;AP Spine=1"


def retagged(path: Path, instance: int) -> bytes:
    """A pydicom test file re-tagged as a Total Body image, its compressed PixelData kept."""
    ds = pydicom.dcmread(path)
    ds.ProtocolName = "Total Body"
    ds.InstanceNumber = instance
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


COMPRESSED = {
    "jpeg_lossless_rgb.dcm": ("SC_rgb_jpeg_gdcm.dcm", 1),
    "jpeg2000.dcm": ("MR_small_jp2klossless.dcm", 2),
    "rle.dcm": ("MR_small_RLE.dcm", 3),
    "jpeg_ls.dcm": ("MR_small_jpeg_ls_lossless.dcm", 4),
    "jpeg_extended.dcm": ("JPGExtended.dcm", 5),
    "jpeg2000_broken.dcm": ("JPEG2000-embedded-sequence-delimiter.dcm", 6),
}


def test_compressed_transfer_syntaxes(tmp_path, make_dicom, make_zip, pydicom_test_file):
    good_zip(tmp_path / "in", make_dicom, make_zip)
    members = {name: retagged(pydicom_test_file(file), n) for name, (file, n) in COMPRESSED.items()}
    assert all(pydicom.dcmread(io.BytesIO(m)).file_meta.TransferSyntaxUID.is_compressed for m in members.values())
    make_zip(tmp_path / "in" / "packed_20158_2_0.zip", members)
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    work = tmp_path / "work"
    assert_good_zip_converted(work)
    table, errors, _ = tables(work)
    decoded = sorted(i for i in table["Image"] if i.startswith("packed"))
    assert decoded == ["packed_20158_2_0_2", "packed_20158_2_0_3", "packed_20158_2_0_4", "packed_20158_2_0_5"]
    for name, (_, number) in COMPRESSED.items():
        if f"packed_20158_2_0_{number}" in decoded:
            reference = pydicom.dcmread(io.BytesIO(members[name])).pixel_array
            np.testing.assert_array_equal(read_npy(work / dcm2img.NPY_DIR / f"packed_20158_2_0_{number}.npy"), reference)
            png = cv2.imread(str(work / dcm2img.PNG_DIR / f"packed_20158_2_0_{number}.png"), cv2.IMREAD_UNCHANGED)
            assert png.shape == reference.shape and png.dtype == np.uint16
    reasons = dict(zip(errors["member"], errors["reason"]))
    assert set(reasons) == {"jpeg_lossless_rgb.dcm", "jpeg2000_broken.dcm"}
    assert reasons["jpeg_lossless_rgb.dcm"].startswith("colour image")
    assert reasons["jpeg2000_broken.dcm"].startswith("cannot decode JPEG 2000")


def test_zip_slip_member_names_write_nothing_outside(tmp_path, make_dicom, make_zip):
    inputs = tmp_path / "deep" / "in"
    make_zip(
        inputs / "1000001_20158_2_0.zip",
        {"../../evil.dcm": make_dicom(instance=12), "/tmp/evil2.dcm": make_dicom(instance=11)},
    )
    work = tmp_path / "deep" / "work"
    work.mkdir()  # so that the only change outside it would be the zip-slip's
    before = tree(tmp_path)
    assert run_stage1(inputs, work) == 0
    after = tree(tmp_path)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed and all(p.startswith(os.path.join("deep", "work")) for p in changed), changed
    assert not any("evil" in p for p in after if p not in before or "work" in p)
    assert not Path("/tmp/evil2.dcm").exists()
    assert_good_zip_converted(work)  # read like any member, named by source and InstanceNumber


def test_member_over_size_limit(tmp_path, make_dicom, make_zip):
    members = visit_members(make_dicom) | {"bomb.dcm": bytes(3 * 2**20)}  # zeros: deflates to a few kB
    bomb = make_zip(tmp_path / "in" / "1000001_20158_2_0.zip", members)
    assert bomb.stat().st_size < 100_000
    assert run_stage1(tmp_path / "in", tmp_path / "work", "dicom.max_member_mb=1") == 0
    assert_good_zip_converted(tmp_path / "work")
    error = only_error(tmp_path / "work")
    assert error["member"] == "bomb.dcm" and error["reason"].startswith("over the size limit")


def test_bounded_read_when_declared_size_lies(make_dicom):
    """A member whose header claims a small size is still cut off at the limit."""
    member = dcm2img._Member("x.zip", "liar.dcm", 10, lambda: io.BytesIO(bytes(5000)))
    with pytest.raises(dcm2img.UnreadableDicom, match="over the size limit"):
        dcm2img._read_checked(member, 1000)


def test_empty_input_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_stage1(tmp_path / "empty", tmp_path / "work") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no zip, DICOM file or folder found" in err and "Traceback" not in err
    table, errors, summary = tables(tmp_path / "work")
    assert table.empty and errors.empty and summary.empty
    assert list(table.columns) == list(TABLE_COLUMNS)


def test_missing_input(tmp_path, capsys):
    assert run_stage1(tmp_path / "nowhere", tmp_path / "work") == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_symlinks_in_input_folder_not_followed(tmp_path, make_dicom, make_zip):
    inputs = tmp_path / "in"
    good = good_zip(inputs, make_dicom, make_zip)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(make_dicom(instance=5))
    (inputs / "link_20158_2_0.zip").symlink_to(good)
    (inputs / "link.dcm").symlink_to(outside / "secret.dcm")
    (inputs / "linked_folder").symlink_to(outside, target_is_directory=True)
    assert run_stage1(inputs, tmp_path / "work") == 0
    table, errors, _ = tables(tmp_path / "work")
    assert list(table["Image"]) == ["1000001_20158_2_0_11", "1000001_20158_2_0_12"]
    assert sorted(Path(f).name for f in errors["file"]) == ["link.dcm", "link_20158_2_0.zip", "linked_folder"]
    assert set(errors["reason"]) == {"symbolic link, not followed"}


def test_odd_and_missing_tags(tmp_path, make_dicom, make_zip):
    make_zip(
        tmp_path / "in" / "odd_20158_2_0.zip",
        {
            "no_size.dcm": make_dicom(instance=1, omit=("PatientSize", "ExposedArea")),
            "zero_size.dcm": make_dicom(instance=2, tags={"PatientSize": "0", "PatientAge": "53"}),
        },
    )
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    table, errors, _ = tables(tmp_path / "work")
    assert errors.empty
    rows = table.set_index("Image")
    assert rows.loc["odd_20158_2_0_1", "height"] == "" and rows.loc["odd_20158_2_0_1", "spacing_mm_x"] == ""
    assert rows.loc["odd_20158_2_0_2", "height"] == "0" and rows.loc["odd_20158_2_0_2", "Age"] == "53"


def test_missing_and_duplicate_instance_numbers(tmp_path, make_dicom, make_zip):
    members = visit_members(make_dicom) | {
        "again.dcm": make_dicom(instance=12),
        "anonymous.dcm": make_dicom(instance=None),
    }
    make_zip(tmp_path / "in" / "1000001_20158_2_0.zip", members)
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    assert_good_zip_converted(tmp_path / "work")
    errors = read_tsv(tmp_path / "work" / dcm2img.ERRORS_FILE)
    reasons = dict(zip(errors["member"], errors["reason"]))
    assert reasons["again.dcm"].startswith("duplicate image id 1000001_20158_2_0_12")
    assert reasons["anonymous.dcm"].startswith("missing InstanceNumber")


def test_same_source_name_twice(tmp_path, make_dicom, make_zip):
    first = good_zip(tmp_path / "in" / "a", make_dicom, make_zip)
    second = good_zip(tmp_path / "in" / "b", make_dicom, make_zip)
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    error = only_error(tmp_path / "work")
    assert error["file"] == str(second) and str(first) in error["reason"]
    assert len(read_tsv(tmp_path / "work" / dcm2img.TABLE_FILE)) == 2


def test_workdir_inside_input_is_not_read(tmp_path, make_dicom, make_zip):
    good_zip(tmp_path, make_dicom, make_zip)
    for _ in range(2):
        assert run_stage1(tmp_path, tmp_path / "work") == 0
        table, errors, summary = tables(tmp_path / "work")
        assert len(table) == 2 and errors.empty and len(summary) == 1


def test_every_member_accounted_for(tmp_path, make_dicom, make_zip):
    inputs = tmp_path / "in"
    good_zip(inputs, make_dicom, make_zip)
    make_zip(inputs / "other_20158_2_0.zip", visit_members(make_dicom) | {"lva.dcm": make_dicom(protocol="LVA")})
    make_zip(
        inputs / "mixed_20158_2_0.zip",
        visit_members(make_dicom)
        | {
            "text.txt": b"hello",
            "cut.dcm": make_dicom(instance=5)[:-10],
            "again.dcm": make_dicom(instance=11),
            "unnamed.dcm": make_dicom(protocol=None),
        },
    )
    (inputs / "broken.zip").write_bytes(b"nope")
    (inputs / "loose").mkdir()
    (inputs / "loose" / "a.dcm").write_bytes(make_dicom(instance=1))
    (inputs / "loose" / "notes.md").write_text("notes")
    assert run_stage1(inputs, tmp_path / "work") == 0
    table, errors, summary = tables(tmp_path / "work")
    assert len(summary) == 5
    for _, row in summary.iterrows():
        skipped = sum(int(part.rsplit("=", 1)[1]) for part in row["skipped"].split(";") if part)
        assert row["other_files"] == "" and row["missing"] == "0"
        assert int(row["members"]) == int(row["images"]) + skipped + int(row["errors"]), row.to_dict()
        assert (table["folder"] == row["source"]).sum() == int(row["images"])
    assert len(errors) == summary["errors"].astype(int).sum() == 5
    assert len(table) == summary["images"].astype(int).sum() == 7


def test_no_image_decoded_exits_1_with_the_count(tmp_path, capsys):
    """Input files, but none a DICOM image (a folder of .txt/.csv): exit 1, the count of files
    tried and where the reasons are, in one line; the tables are still written."""
    inputs = tmp_path / "notes"
    inputs.mkdir()
    (inputs / "a.txt").write_text("hello")
    (inputs / "b.csv").write_text("x,y\n1,2\n")
    (inputs / "c.txt").write_text("")
    workdir = tmp_path / "work"
    assert run_stage1(inputs, workdir) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "3 file(s) tried" in err and str(workdir / dcm2img.ERRORS_FILE) in err, err
    table, errors, summary = tables(workdir)
    assert table.empty and len(errors) == 3 and summary.iloc[0]["errors"] == "3"


def test_only_other_protocols_exits_1(tmp_path, make_dicom, make_zip, capsys):
    """Zips holding no Total Body image (only spine, femur, ...): exit 1, pointing at 1_summary.tsv."""
    make_zip(tmp_path / "in" / "1000001_20158_2_0.zip", {"spine.dcm": make_dicom(protocol="AP Spine")})
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 1
    err = capsys.readouterr().err
    assert "no Total Body image in 1 file(s) tried" in err and "1 of other protocols" in err, err
    assert dcm2img.SUMMARY_FILE in err


# A manifest as in UK Biobank's zips: the file list of the visit, named manifest.cvs (sic),
# with dates holding an unquoted comma (column names as the UK Biobank cardiac tools read them).
MANIFEST_HEADER = "filename,patientid,studyid,aetitle,date,numseries,seriesid,series discription\n"


def manifest(*names: str) -> bytes:
    rows = [f"{name},1000001,1.2.3,LUNAR,Jul 19, 2018 14:13:07,8,1.2.3.{i},Total Body\n"
            for i, name in enumerate(names)]
    return (MANIFEST_HEADER + "".join(rows)).encode()


def test_manifest_is_a_known_non_image_member(tmp_path, make_dicom, make_zip):
    """manifest.cvs beside the DICOM files: counted in other_files, not an error; the accounting adds up."""
    from hbr.ledger import funnel, load_run_state, summary_problems

    members = visit_members(make_dicom)
    make_zip(tmp_path / "in" / "1000001_20158_2_0.zip", members | {"manifest.cvs": manifest(*members)})
    workdir = tmp_path / "work"
    assert run_stage1(tmp_path / "in", workdir) == 0
    table, errors, summary = tables(workdir)
    assert errors.empty and len(table) == 2
    row = summary.iloc[0]
    assert (row["members"], row["images"], row["errors"], row["other_files"], row["missing"]) == (
        "4", "2", "0", "manifest.cvs=1", "0")
    state = load_run_state(workdir)
    assert summary_problems(state) == []
    note = funnel(state).iloc[0]["note"]
    assert "0 unreadable files" in note and "1 images of other protocols" in note and "1 known non-image" in note


def test_manifest_listing_a_missing_dicom(tmp_path, make_dicom, make_zip):
    """A DICOM file the manifest lists but the zip lacks: one line in 1_errors.tsv naming it."""
    from hbr.ledger import load_run_state, summary_problems

    members = visit_members(make_dicom)
    zip_path = make_zip(tmp_path / "in" / "1000001_20158_2_0.zip",
                        members | {"manifest.cvs": manifest(*members, "lost.dcm")})
    workdir = tmp_path / "work"
    assert run_stage1(tmp_path / "in", workdir) == 0
    error = only_error(workdir)
    assert error == {"file": str(zip_path), "member": "lost.dcm", "reason": "listed in manifest.cvs but not in the zip"}
    row = read_tsv(workdir / dcm2img.SUMMARY_FILE).iloc[0]
    assert (row["members"], row["errors"], row["missing"]) == ("4", "1", "1")
    assert summary_problems(load_run_state(workdir)) == []


def test_manifest_listing_formats():
    """The filename column (dates with a comma do not shift it), else every cell naming a .dcm."""
    assert dcm2img.manifest_listing(manifest("a.dcm", "sub/b.dcm")) == ["a.dcm", "b.dcm"]
    assert dcm2img.manifest_listing(b"1.2.3.dcm;x\n\nother,4.5.DCM\n") == ["4.5.DCM"]
    assert dcm2img.manifest_listing(b"\x00\xff not a csv") == []
    assert dcm2img.manifest_listing(b"") == []


# ---------------------------------------------------------------- resume, parallelism


def test_rerun_is_identical_and_skips_done_sources(tmp_path, make_dicom, make_zip, capsys):
    for i in range(3):
        good_zip(tmp_path / "in", make_dicom, make_zip, stem=f"100000{i}_20158_2_0")
    (tmp_path / "in" / "broken.zip").write_bytes(b"nope")
    work = tmp_path / "work"
    assert run_stage1(tmp_path / "in", work) == 0
    first = table_bytes(work)
    npy_times = {p.name: p.stat().st_mtime_ns for p in (work / dcm2img.NPY_DIR).iterdir()}
    capsys.readouterr()
    assert run_stage1(tmp_path / "in", work) == 0
    assert "(4 already done earlier)" in capsys.readouterr().out
    assert table_bytes(work) == first
    assert {p.name: p.stat().st_mtime_ns for p in (work / dcm2img.NPY_DIR).iterdir()} == npy_times
    # Another protocol invalidates the recorded results.
    assert run_stage1(tmp_path / "in", work, "dicom.protocol=AP Spine") == 0
    table = read_tsv(work / dcm2img.TABLE_FILE)
    assert sorted(table["InstanceNumber"]) == ["18", "18", "18"]
    assert sorted(p.name for p in (work / dcm2img.NPY_DIR).iterdir()) == [
        f"100000{i}_20158_2_0_18.npy" for i in range(3)
    ]


def test_removed_input_leaves_the_tables_and_image_folders(tmp_path, make_dicom, make_zip):
    keep = good_zip(tmp_path / "in", make_dicom, make_zip, stem="keep_20158_2_0")
    gone = good_zip(tmp_path / "in", make_dicom, make_zip, stem="gone_20158_2_0")
    work = tmp_path / "work"
    assert run_stage1(tmp_path / "in", work) == 0
    gone.unlink()
    assert run_stage1(tmp_path / "in", work) == 0
    assert set(read_tsv(work / dcm2img.TABLE_FILE)["folder"]) == {keep.stem}
    assert sorted(p.name for p in (work / dcm2img.PNG_DIR).iterdir()) == [
        "keep_20158_2_0_11.png",
        "keep_20158_2_0_12.png",
    ]


def test_workers_do_not_change_the_tables(tmp_path, make_dicom, make_zip):
    for i in range(6):
        good_zip(tmp_path / "in", make_dicom, make_zip, stem=f"10000{i}_20158_2_0")
    assert run_stage1(tmp_path / "in", tmp_path / "serial", "dicom.workers=0") == 0
    assert run_stage1(tmp_path / "in", tmp_path / "parallel", "dicom.workers=2") == 0
    assert table_bytes(tmp_path / "serial") == table_bytes(tmp_path / "parallel")


def test_changed_loose_file_beside_a_zip_is_converted_again(tmp_path, make_dicom, make_zip):
    """A folder's loose files are one source, its zips others: changing a loose file makes a
    re-run convert that folder again, even though the zip beside it did not change."""
    visit = tmp_path / "in" / "visit"
    good_zip(visit, make_dicom, make_zip)
    (visit / "a.dcm").write_bytes(make_dicom(instance=11))
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    (visit / "a.dcm").write_bytes(make_dicom(instance=14, pixels=np.zeros((30, 20), np.uint8)))
    assert run_stage1(tmp_path / "in", tmp_path / "work") == 0
    images = set(tables(tmp_path / "work")[0]["Image"])
    assert "visit_14" in images and "visit_11" not in images


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_killed_run_resumes_to_identical_tables(tmp_path, make_dicom, make_zip):
    """SIGKILL a running stage (and its workers), re-run: same tables and images as a clean run."""
    rng = np.random.default_rng(0)
    zips = tmp_path / "zips"
    n_sources = 30
    for i in range(n_sources):
        # Noise images make each source take a few ms, so the kill lands mid-run.
        members = {
            f"{n}.dcm": make_dicom(instance=n, pixels=rng.integers(0, 253, (600, 250), dtype=np.uint8))
            for n in (11, 12)
        } | {"spine.dcm": make_dicom(protocol="AP Spine", instance=18)}
        make_zip(zips / f"{2000000 + i}_20158_2_0.zip", members, compression=zipfile.ZIP_STORED)
    (zips / "broken.zip").write_bytes(b"nope")

    clean = tmp_path / "clean"
    assert run_stage1(zips, clean, "dicom.workers=2") == 0

    killed = tmp_path / "killed"
    states = killed / dcm2img.STATE_DIR
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "1_dcm2img.py"), "--input", str(zips), "--workdir", str(killed),
         "--set", "dicom.workers=2"],
        cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def finished_states() -> int:
        return sum(1 for p in states.glob("*.json") if not p.name.startswith(TMP_PREFIX)) if states.is_dir() else 0

    deadline = time.monotonic() + 60
    while finished_states() < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # the stage and its worker processes
    process.wait()
    done = finished_states()
    assert 0 < done < n_sources + 1 and not (killed / dcm2img.TABLE_FILE).exists(), "the kill missed the run"

    assert run_stage1(zips, killed, "dicom.workers=2") == 0
    assert table_bytes(killed) == table_bytes(clean)
    for folder in (dcm2img.NPY_DIR, dcm2img.PNG_DIR):
        assert _files(killed / folder) == _files(clean / folder)
    assert not [p for p in killed.rglob(f"{TMP_PREFIX}*")], "temporary files left behind"


def test_phantom_zips(tmp_path):
    """The demo generator's zips (when hbr.phantom exists): Total Body 11 and 12 of each, rest skipped."""
    phantom = pytest.importorskip("hbr.phantom")
    if not hasattr(phantom, "generate"):
        pytest.skip("hbr.phantom has no generate()")
    phantom.generate(tmp_path / "demo", 2, 0)
    zips = tmp_path / "demo" / "zips"
    assert run_stage1(zips, tmp_path / "work") == 0
    table, errors, summary = tables(tmp_path / "work")
    assert errors.empty and len(summary) == 2
    assert sorted(table["InstanceNumber"]) == ["11", "11", "12", "12"]
    assert all(row["skipped"] for _, row in summary.iterrows())
