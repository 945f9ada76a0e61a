"""File helpers: kept images are hard links, never copies; writes are atomic; PNGs lossless."""

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hbr.files import (
    TMP_PREFIX,
    _temporary_name,
    encode_png,
    image_folders,
    keep_images,
    link_or_copy,
    read_npy,
    read_tsv,
    tsv_writer,
    write_bytes,
    write_npy,
    write_png,
    write_tsv,
    write_tsv_rows,
)


def _stage_images(workdir: Path, prefix: str, ids: list[str]) -> None:
    npy, png = image_folders(workdir, prefix)
    for i, image_id in enumerate(ids):
        image = np.full((4, 3), i, np.uint8)
        write_npy(npy / f"{image_id}.npy", image)
        write_png(png / f"{image_id}.png", image)


def test_kept_images_are_hard_links_and_mirror_the_decisions(tmp_path: Path):
    _stage_images(tmp_path, "1_Total_Body", ["a", "b", "c"])
    keep_images(["a", "c"], "1_Total_Body", "2_class_predicted", tmp_path)
    src_npy, src_png = image_folders(tmp_path, "1_Total_Body")
    dst_npy, dst_png = image_folders(tmp_path, "2_class_predicted")
    for src, dst in ((src_npy / "a.npy", dst_npy / "a.npy"), (src_png / "c.png", dst_png / "c.png")):
        assert dst.stat().st_ino == src.stat().st_ino, f"{dst} is a copy, not a hard link"
    assert sorted(p.name for p in dst_npy.iterdir()) == ["a.npy", "c.npy"]

    # a re-run with other decisions: links already there stay, others are added or removed
    keep_images(["b", "c"], "1_Total_Body", "2_class_predicted", tmp_path)
    assert sorted(p.name for p in dst_npy.iterdir()) == ["b.npy", "c.npy"]
    assert sorted(p.name for p in dst_png.iterdir()) == ["b.png", "c.png"]
    assert (dst_npy / "b.npy").stat().st_ino == (src_npy / "b.npy").stat().st_ino


def test_link_replaces_another_file_at_the_destination(tmp_path: Path):
    src, dst = tmp_path / "new.npy", tmp_path / "out" / "x.npy"
    src.write_bytes(b"new")
    dst.parent.mkdir()
    dst.write_bytes(b"old, from an earlier run")
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"new" and dst.stat().st_ino == src.stat().st_ino
    link_or_copy(src, dst)  # already the same file: nothing to do
    assert dst.stat().st_nlink == 2
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_link_creates_the_destination_folder(tmp_path: Path):
    src = tmp_path / "a.png"
    src.write_bytes(b"png")
    link_or_copy(src, tmp_path / "new" / "folder" / "a.png")
    assert (tmp_path / "new" / "folder" / "a.png").stat().st_ino == src.stat().st_ino


@pytest.mark.parametrize("row_filter", ["up", "none"])
def test_png_is_lossless_and_read_alike_by_opencv_and_pillow(row_filter):
    """Our PNG writer: 8- and 16-bit grey and BGR colour, odd sizes, wrapping differences."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image16 = rng.integers(0, 65535, (41, 29)).astype(np.uint16)
    mask = np.zeros((40, 30), np.uint8)
    mask[5:9, 3:7] = 200
    colour = rng.integers(0, 255, (7, 5, 3)).astype(np.uint8)
    for array in (image16, image16.astype(np.uint8), mask, colour, np.full((1, 1), 65535, np.uint16)):
        data = encode_png(array, row_filter)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == array.dtype and decoded.shape == array.shape and (decoded == array).all()
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()  # checks the CRCs and the zlib stream
            rgb = np.asarray(pil)
        assert (rgb == (array[..., ::-1] if array.ndim == 3 else array)).all()


@pytest.mark.parametrize("bad", [np.zeros((0, 4), np.uint8), np.zeros((3, 3), np.float32), np.zeros((3, 3, 2), np.uint8)])
def test_png_refuses_what_it_cannot_store(bad):
    with pytest.raises(ValueError, match="cannot encode"):
        encode_png(bad)


def test_atomic_write_makes_its_folder_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "new" / "table.tsv"
    write_bytes(target, b"a\tb\n")
    write_bytes(target, b"c\td\n")  # replaces
    assert target.read_bytes() == b"c\td\n"
    with pytest.raises(TypeError):
        write_bytes(target, "not bytes")  # a failed write keeps the old file and no temporary
    assert target.read_bytes() == b"c\td\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.tsv"]


def test_a_temporary_left_by_a_killed_run_is_replaced(tmp_path: Path):
    target = tmp_path / "mask.png"
    _temporary_name(target).write_bytes(b"half a file")  # same process id and thread as this write
    write_bytes(target, b"png")
    assert target.read_bytes() == b"png"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_a_write_replaces_a_file_without_touching_its_other_links(tmp_path: Path):
    target = tmp_path / "masks" / "a.png"
    write_bytes(target, b"first")
    snapshot = tmp_path / "snapshot.png"
    snapshot.hardlink_to(target)  # e.g. a user's `cp -al` copy of the work directory
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert snapshot.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["a.png"]


def test_a_failed_write_names_the_file_asked_for(tmp_path: Path):
    target = tmp_path / "table.tsv"
    target.mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(OSError) as failure:
        write_bytes(target, b"x")
    assert failure.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_a_file_name_near_the_length_limit_is_written(tmp_path: Path):
    target = tmp_path / ("x" * 250 + ".png")
    write_bytes(target, b"png")
    assert target.read_bytes() == b"png"


@pytest.mark.parametrize(
    "array",
    [
        np.arange(791 * 272, dtype=np.uint32).reshape(791, 272).astype(np.uint8),
        np.arange(12, dtype=">u2").reshape(3, 4),
        np.arange(5, dtype=np.float32),
        np.array(3.0),
        np.zeros((0, 4), np.uint16),
        np.ones((2, 3, 4), bool),
        np.asfortranarray(np.arange(6).reshape(2, 3)),  # read by np.load
        np.zeros(2, dtype=[("a", "<i4")]),  # read by np.load
    ],
)
def test_read_npy_gives_what_np_save_wrote(tmp_path: Path, array):
    path = tmp_path / "a.npy"
    np.save(path, array)
    got = read_npy(path)
    assert got.dtype == array.dtype and got.shape == array.shape and got.flags.writeable
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("damage", ["truncated", "too long", "not npy", "empty"])
def test_read_npy_names_a_damaged_file(tmp_path: Path, damage):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((10, 10), np.uint8))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-5], "too long": data + b"x", "not npy": b"garbage" * 10, "empty": b""}[damage])
    with pytest.raises(ValueError, match=str(path)):
        read_npy(path)


def test_streamed_rows_are_the_bytes_of_write_tsv(tmp_path):
    """Stages 1 and 8 stream their tables; readers must not see a difference from write_tsv."""
    columns = ["Image", "note", "value"]
    rows = [("a", "plain", "1"), ("b", "tab\there", ""), ("c", 'quote "x"', "2.5"), ("d", "line\nbreak", " "),
            ("e", "", "-")]
    write_tsv(tmp_path / "frame.tsv", pd.DataFrame(rows, columns=columns))
    assert write_tsv_rows(tmp_path / "rows.tsv", columns, iter(rows)) == len(rows)
    assert (tmp_path / "rows.tsv").read_bytes() == (tmp_path / "frame.tsv").read_bytes()
    write_tsv(tmp_path / "empty_frame.tsv", pd.DataFrame([], columns=columns))
    assert write_tsv_rows(tmp_path / "empty_rows.tsv", columns, []) == 0
    assert (tmp_path / "empty_rows.tsv").read_bytes() == (tmp_path / "empty_frame.tsv").read_bytes()
    assert read_tsv(tmp_path / "rows.tsv").values.tolist() == [list(r) for r in rows]
    # row by row, two tables at once (as stage 1 writes dcm_table and 1_summary): the same
    # bytes, and nothing at either path until the block ends
    with tsv_writer(tmp_path / "one.tsv", columns) as one, tsv_writer(tmp_path / "two.tsv", columns) as two:
        for row in rows:
            one(row)
            two(row)
        assert not (tmp_path / "one.tsv").exists() and not (tmp_path / "two.tsv").exists()
    for name in ("one.tsv", "two.tsv"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "frame.tsv").read_bytes()
