"""File helpers: kept images are hard links, never copies; writes are atomic; PNGs lossless."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from hbr.files import (
    IMAGE_PNG,
    MASK_PNG,
    TMP_PREFIX,
    encode_png,
    image_folders,
    keep_images,
    link_or_copy,
    write_bytes,
    write_npy,
    write_png,
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


def test_png_settings_are_lossless_for_images_and_masks():
    rng = np.random.default_rng(0)
    image16 = rng.integers(0, 65535, (40, 30)).astype(np.uint16)
    mask = np.zeros((40, 30), np.uint8)
    mask[5:9, 3:7] = 200
    for array, params in ((image16, IMAGE_PNG), (image16.astype(np.uint8), IMAGE_PNG), (mask, MASK_PNG)):
        decoded = cv2.imdecode(np.frombuffer(encode_png(array, params), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == array.dtype and (decoded == array).all()


def test_atomic_write_makes_its_folder_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "new" / "table.tsv"
    write_bytes(target, b"a\tb\n")
    write_bytes(target, b"c\td\n")  # replaces
    assert target.read_bytes() == b"c\td\n"
    with pytest.raises(TypeError):
        write_bytes(target, "not bytes")  # a failed write keeps the old file and no temporary
    assert target.read_bytes() == b"c\td\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.tsv"]


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
