"""Shards (issue 23): the --shard value, the stable partition, stage 1 on a shard, and the
merge's checks and table order. The whole sharded pipeline against a one-machine run is in
tests/test_pipeline.py; on a real SLURM in tests/slurm."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hbr import pipeline, shards
from hbr.errors import HbrError
from hbr.shards import Shard, parse_shard, shard_index
from hbr.stages import dcm2img

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE1_TABLES = (pipeline.DCM_TABLE, pipeline.ERRORS_TABLE, pipeline.SUMMARY_TABLE)


# ---------------------------------------------------------------- the --shard value


@pytest.mark.parametrize("text, environ, expected", [
    ("0/4", {}, Shard(0, 4)),
    (" 3/4 ", {}, Shard(3, 4)),
    ("0/1", {}, Shard(0, 1)),
    ("4", {"SLURM_ARRAY_TASK_ID": "2"}, Shard(2, 4)),
    ("1/4", {"SLURM_ARRAY_TASK_ID": "2"}, Shard(1, 4)),  # an explicit index wins
])  # fmt: skip
def test_shard_values(text, environ, expected):
    assert parse_shard(text, environ) == expected


@pytest.mark.parametrize("text, environ, message", [
    ("5/4", {}, "shard index 5 is not in 0..3"),
    ("4/4", {}, "shard index 4 is not in 0..3"),
    ("-1/4", {}, "shard index -1 is not in 0..3"),
    ("0/0", {}, "at least 1"),
    ("a/4", {}, "whole numbers"),
    ("1/b", {}, "whole numbers"),
    ("", {}, "SLURM_ARRAY_TASK_ID is not set"),
    ("4", {}, "SLURM_ARRAY_TASK_ID is not set"),
    ("4", {"SLURM_ARRAY_TASK_ID": "7"}, "shard index 7 is not in 0..3"),  # a task beyond the count
])  # fmt: skip
def test_bad_shard_values_are_usage_errors(text, environ, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_shard(text, environ)


def test_shard_folder_names_sort_in_shard_order(tmp_path):
    assert Shard(3, 200).name == "003_of_200" and Shard(0, 1).name == "0_of_1" and Shard(9, 10).name == "9_of_10"
    assert Shard(2, 4).folder(tmp_path) == tmp_path / pipeline.SHARDS_DIR / "2_of_4"
    assert str(Shard(2, 4)) == "2/4"


def test_partition_is_fixed_for_every_machine():
    """sha256 of the name, not Python's per-process hash(): these values may never change,
    or a resumed shard would hold other zips than before."""
    assert [shard_index("1000001_20158_2_0", n) for n in (2, 3, 4, 500)] == [1, 1, 3, 79]
    assert [shard_index("5999999_20158_3_0", n) for n in (2, 3, 4, 500)] == [1, 0, 1, 413]


def test_every_source_is_in_exactly_one_shard():
    names = [f"{1000000 + i}_20158_2_0" for i in range(400)]
    count = 4
    owners = [[s for s in range(count) if Shard(s, count).holds(name)] for name in names]
    assert all(len(found) == 1 for found in owners)
    sizes = [sum(found == [s] for found in owners) for s in range(count)]
    assert min(sizes) > 70 and max(sizes) < 130, sizes  # about 100 each


# ---------------------------------------------------------------- stage 1 on shards


def make_input(folder: Path, make_dicom, make_zip) -> Path:
    """Zips (one of them broken), two zips of one name in two folders (their ids would
    clash) and a folder of loose DICOM files."""
    for i in range(7):
        make_zip(folder / f"100000{i}_20158_2_0.zip",
                 {"tissue.dcm": make_dicom(instance=11), "bone.dcm": make_dicom(instance=12)})
    (folder / "1000009_20158_2_0.zip").write_bytes(b"not a zip")
    for sub in ("a", "b"):
        make_zip(folder / sub / "1000008_20158_2_0.zip", {"bone.dcm": make_dicom(instance=12)})
    loose = folder / "loose"
    loose.mkdir()
    (loose / "x.dcm").write_bytes(make_dicom(instance=12))
    return folder


def stage1(input_path: Path, workdir: Path, *extra: str) -> int:
    return dcm2img.main(["--input", str(input_path), "--workdir", str(workdir), "--set", "dicom.workers=0", *extra])


def test_stage1_shards_merge_to_the_one_machine_tables(tmp_path, make_dicom, make_zip):
    zips = make_input(tmp_path / "in", make_dicom, make_zip)
    assert stage1(zips, tmp_path / "one") == 0
    workdir = tmp_path / "sharded"
    count = 3
    for index in range(count):
        assert stage1(zips, workdir, "--shard", f"{index}/{count}") == 0
    every = [Shard(i, count) for i in range(count)]
    for name in STAGE1_TABLES:
        shards.merge_table(workdir, every, name)
        assert (workdir / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    # the clash is found as on one machine: both zips of that name are in one shard
    assert "also used by" in (workdir / pipeline.ERRORS_TABLE).read_text()
    shards.write_shard_map(workdir, every)
    placed = (workdir / pipeline.SHARD_MAP).read_text().splitlines()
    assert placed[0] == "source\tfile\tImage\tshard"
    rows = [line.split("\t") for line in placed[1:]]
    for source, _, image, folder in rows:
        assert Shard(int(folder.split("/")[-1].split("_of_")[0]), count).holds(source)
        if image:
            assert (workdir / folder / "1_Total_Body_npy" / f"{image}.npy").is_file()
    images = sorted(row[2] for row in rows if row[2])
    one = (tmp_path / "one" / pipeline.DCM_TABLE).read_text().splitlines()[1:]
    assert len(images) == len(one) == 16


def test_empty_shard_writes_empty_tables_and_succeeds(tmp_path, make_dicom, make_zip, capsys):
    zips = make_input(tmp_path / "in", make_dicom, make_zip)
    count = 40
    names = [p.stem for p in zips.rglob("*.zip")] + ["loose"]
    empty = min(set(range(count)) - {shard_index(name, count) for name in names})
    assert stage1(zips, tmp_path / "w", "--shard", f"{empty}/{count}") == 0
    assert f"shard {empty}/{count}: 0 of the input's 11 sources" in capsys.readouterr().out
    folder = Shard(empty, count).folder(tmp_path / "w")
    for name in STAGE1_TABLES:
        assert len((folder / name).read_text().splitlines()) == 1, name  # the header only
    assert (folder / "1_Total_Body_npy").is_dir()


def test_shard_of_unreadable_files_warns_and_succeeds(tmp_path, capsys):
    """A task whose files give no image succeeds (a failed task would stop the merge of all
    the others); the merge fails instead when no shard decoded an image."""
    zips = tmp_path / "in"
    zips.mkdir()
    (zips / "1000001_20158_2_0.zip").write_bytes(b"not a zip")
    index = shard_index("1000001_20158_2_0", 2)
    assert stage1(zips, tmp_path / "w", "--shard", f"{index}/2") == 0
    assert "WARNING" in capsys.readouterr().out
    assert stage1(zips, tmp_path / "one") == 1  # one machine: an error, as before


# ---------------------------------------------------------------- the merge's checks


def finished_shard(workdir: Path, shard: Shard, config: dict, model_sha: str = "a" * 64) -> Path:
    """Stage records of a shard that finished every stage, as finish_stage writes them."""
    folder = shard.folder(workdir)
    for stage, bak in pipeline.run_order():
        path = shards.record_path(folder, stage.run_name(bak))
        path.parent.mkdir(parents=True, exist_ok=True)
        model = {"path": "/models/x", "sha256": model_sha} if stage.has_model else None
        path.write_text(json.dumps({"shard": str(shard), "config": config, "model": model}))
    return folder


def test_merge_refuses_missing_mixed_and_unfinished_shards(tmp_path):
    with pytest.raises(HbrError, match="no shard folders"):
        shards.find_shards(tmp_path)
    config = {"canvas.height": 960}
    for index in (0, 2):
        finished_shard(tmp_path, Shard(index, 4), config)
    with pytest.raises(HbrError, match=r"2 of 4 shards have not run \(no folder\): 1, 3"):
        shards.find_shards(tmp_path)
    finished_shard(tmp_path, Shard(0, 5), config)
    with pytest.raises(HbrError, match="split 4 and 5 ways are mixed"):
        shards.find_shards(tmp_path)
    (tmp_path / pipeline.SHARDS_DIR / Shard(0, 5).name).rename(tmp_path / "elsewhere")
    for index in (1, 3):
        finished_shard(tmp_path, Shard(index, 4), config)
    assert shards.find_shards(tmp_path) == [Shard(i, 4) for i in range(4)]
    shards.check_same_work(tmp_path, shards.find_shards(tmp_path))  # nothing differs
    killed = shards.record_path(Shard(3, 4).folder(tmp_path), "7_segment_white")
    killed.unlink()
    with pytest.raises(HbrError, match=r"shard 3/4 .* has not finished: 7_segment_white not done"):
        shards.check_same_work(tmp_path, shards.find_shards(tmp_path))


def test_merge_refuses_other_settings_or_models_naming_them(tmp_path):
    finished_shard(tmp_path, Shard(0, 3), {"canvas.height": 960, "segmenter.threshold": 0.5})
    finished_shard(tmp_path, Shard(1, 3), {"canvas.height": 960, "segmenter.threshold": 0.6})
    finished_shard(tmp_path, Shard(2, 3), {"canvas.height": 960, "segmenter.threshold": 0.5}, model_sha="b" * 64)
    with pytest.raises(HbrError) as caught:
        shards.check_same_work(tmp_path, shards.find_shards(tmp_path))
    message = str(caught.value)
    assert "shard 1/3: segmenter.threshold 0.6 (not 0.5)" in message
    assert "shard 2/3: model of 2_body_class" in message and "canvas.height" not in message
    assert "\n" not in message


def test_merge_sorts_each_table_by_its_own_key(tmp_path):
    """Rows of several shards come out in the order one machine writes them."""
    every = [Shard(0, 2), Shard(1, 2)]
    tables = {
        # by source, then image: source x's images before those of x_1 (by image id alone: between them)
        pipeline.DCM_TABLE: ("folder\tImage", [["x_1", "x_1_12"], ["x_1", "x_1_5"]], [["x", "x_12"], ["x", "x_5"]]),
        pipeline.ERRORS_TABLE: ("file\tmember\treason", [["z.zip", "", "bad"]], [["a.zip", "m", "bad"]]),
        "2_class_pred.tsv": ("Image\tprob", [["c_12", "0.5"]], [["a_12", "0.1"], ["b_12", "0.2"]]),
    }
    for name, (header, rows0, rows1) in tables.items():
        for shard, rows in zip(every, (rows0, rows1)):
            path = shard.folder(tmp_path) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join([header, *("\t".join(r) for r in rows)]) + "\n")
        shards.merge_table(tmp_path, every, name)
    assert [r.split("\t")[1] for r in (tmp_path / pipeline.DCM_TABLE).read_text().splitlines()[1:]] == [
        "x_12", "x_5", "x_1_12", "x_1_5"]
    assert (tmp_path / pipeline.ERRORS_TABLE).read_text().splitlines()[1:] == ["a.zip\tm\tbad", "z.zip\t\tbad"]
    assert [r.split("\t")[0] for r in (tmp_path / "2_class_pred.tsv").read_text().splitlines()[1:]] == [
        "a_12", "b_12", "c_12"]
    (every[1].folder(tmp_path) / "2_class_pred.tsv").write_text("Image\tp\n")
    with pytest.raises(HbrError, match="other columns"):
        shards.merge_table(tmp_path, every, "2_class_pred.tsv")


# ---------------------------------------------------------------- the driver


def driver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO_ROOT / "0_pipeline.sh"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=60)


@pytest.mark.parametrize("args, message", [
    (["--shard", "5/4", "--models", "m"], "--shard 5/4: shard index 5 is not in 0..3"),
    (["--shard", "x", "--models", "m"], "SLURM_ARRAY_TASK_ID is not set"),
    (["--shard", "0/4"], "--shard needs --models DIR"),
])  # fmt: skip
def test_driver_refuses_bad_shards_before_any_work(tmp_path, args, message):
    result = driver("--input", str(tmp_path), "--workdir", str(tmp_path / "w"), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "w").exists()


def test_driver_merge_of_nothing_says_what_to_do(tmp_path):
    result = driver("--merge", "--workdir", str(tmp_path))
    assert result.returncode == 1 and "no shard folders" in result.stdout + result.stderr
