"""LabelMe pre-annotations from stage 7's masks: LabelMe's own file rules, the round trip back
into stage 7's reader, missing shapes, and never overwriting what a person labelled."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from hbr import pipeline
from hbr.files import write_png
from hbr.labelling import preannotate
from hbr.labels import read_labelme, review_flag
from hbr.landmarks import HEAD, LANDMARKS, POINT_LANDMARKS

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELME_REFERENCE = REPO_ROOT.parent / "shared" / "labelme_reference" / "labelme-6.3.1_example.json"
# the keys, in order, of a file LabelMe 6.3.1 wrote (../shared/labelme_reference/)
FILE_KEYS = ["version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"]
SHAPE_KEYS = ["label", "points", "group_id", "description", "shape_type", "flags", "mask"]

HEIGHT, WIDTH = 420, 170
HEAD_CENTRE, HEAD_AXES = (84, 58), (27, 38)  # cv2.ellipse: (x, y), half-axes (x, y)
CENTRES = {"shoulder_left": (130.0, 130.0), "shoulder_right": (40.0, 131.0), "hip_left": (115.0, 250.0),
           "hip_right": (55.0, 251.0), "ankle_left": (108.0, 395.0), "ankle_right": (62.0, 396.0)}
BAK = "black"


def check_labelme_rules(data: dict) -> None:
    """The rules LabelMe's loader (labelme/_label_file.py) applies to a file, field by field."""
    assert isinstance(data["imagePath"], str) and not Path(data["imagePath"]).is_absolute()
    assert data["imageData"] is None or isinstance(data["imageData"], str)
    flags = data.get("flags") or {}
    assert isinstance(flags, dict) and all(isinstance(k, str) and isinstance(v, bool) for k, v in flags.items())
    assert type(data["imageHeight"]) is int and type(data["imageWidth"]) is int
    assert isinstance(data["version"], str)
    for shape in data["shapes"]:
        assert isinstance(shape["label"], str)
        points = shape["points"]
        assert isinstance(points, list) and points
        assert all(isinstance(p, list) and len(p) == 2
                   and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in points)
        assert isinstance(shape["shape_type"], str)
        assert shape.get("flags") is None or (isinstance(shape["flags"], dict) and all(
            isinstance(k, str) and isinstance(v, bool) for k, v in shape["flags"].items()))
        assert shape.get("description") is None or isinstance(shape["description"], str)
        assert shape.get("group_id") is None or type(shape["group_id"]) is int
        assert shape.get("mask") is None or isinstance(shape["mask"], str)
        assert len(points) == 1 if shape["shape_type"] == "point" else len(points) >= 3


def _masks(workdir: Path, image_id: str, head=True, skip=()) -> None:
    """Stage-7 masks as stage 7 writes them: uint8 PNG probability x 255 at the original size."""
    for name in LANDMARKS:
        if name in skip:
            continue
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        if name == HEAD and head:
            cv2.ellipse(mask, HEAD_CENTRE, HEAD_AXES, 0, 0, 360, 230, thickness=-1)
            cv2.circle(mask, (20, 20), 3, 250, thickness=-1)  # a stray speck: not the head
        elif name != HEAD:
            cx, cy = CENTRES[name]
            cv2.circle(mask, (int(cx), int(cy)), 6, 255, thickness=-1)
            cv2.circle(mask, (int(cx), int(cy)), 8, 90, thickness=2)  # a faint rim under the threshold
        write_png(pipeline.mask_folder(workdir, name, BAK) / f"{image_id}.png", mask, row_filter="none")


@pytest.fixture
def work(tmp_path):
    """A work directory made by hand: stage 1's PNGs of three images and stage 7's masks of two."""
    workdir = tmp_path / "work"
    png_dir = pipeline.image_folders(workdir, pipeline.TOTAL_BODY)[1]
    rng = np.random.default_rng(3)
    for image_id in ("p1_12", "p2_12", "p3_12"):
        write_png(png_dir / f"{image_id}.png", rng.integers(0, 252, (HEIGHT, WIDTH)).astype(np.uint8))
    _masks(workdir, "p1_12")
    _masks(workdir, "p2_12", head=False, skip=("hip_left",))  # no head mask, one point's mask file gone
    return workdir


def _polygon_box(points):
    pts = np.asarray(points)
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def test_round_trip_labelme_format_and_stage7_reader(work):
    lines = []
    summary = preannotate.run(work, BAK, log=lines.append)
    out = work / "preannotate" / pipeline.stage(7).label_names(BAK)[0]
    assert summary.out == out and summary.written == ["p1_12", "p2_12"]
    data = json.loads((out / "p1_12.json").read_text())
    check_labelme_rules(data)
    assert list(data) == FILE_KEYS and all(list(s) == SHAPE_KEYS for s in data["shapes"])
    if LABELME_REFERENCE.is_file():  # the file LabelMe itself wrote: the same keys in the same order
        reference = json.loads(LABELME_REFERENCE.read_text())
        assert list(data) == list(reference)
        assert {tuple(s) for s in data["shapes"]} == {tuple(s) for s in reference["shapes"]}
    assert data["flags"] == {"reviewed": False} and data["imageData"] is None
    assert (data["imagePath"], data["imageHeight"], data["imageWidth"]) == ("p1_12.png", HEIGHT, WIDTH)
    assert (out / "p1_12.png").read_bytes() == (work / "1_Total_Body_png" / "p1_12.png").read_bytes()
    shapes = {s["label"]: s for s in data["shapes"]}
    assert set(shapes) == set(LANDMARKS)
    head = shapes[HEAD]
    assert head["shape_type"] == "polygon" and 12 <= len(head["points"]) <= 30
    # the drawn ellipse covers pixels centre +/- half-axis: its area spans half a pixel more
    (cx, cy), (ax, ay) = HEAD_CENTRE, HEAD_AXES
    assert np.allclose(_polygon_box(head["points"]), (cx - ax - 0.5, cy - ay - 0.5, cx + ax + 0.5, cy + ay + 0.5),
                       atol=1.5)
    assert head["description"].startswith("hbr confidence 0.902")  # 230 / 255
    for name, xy in CENTRES.items():
        assert shapes[name]["shape_type"] == "point"
        assert np.allclose(shapes[name]["points"][0], xy, atol=0.05)
        assert "confidence 1.000" in shapes[name]["description"]
    # what stage 7 trains from reads it back: same landmarks, the image beside the JSON
    item = read_labelme(out / "p1_12.json", [pipeline.total_body_npy(work)])
    assert item.image_id == "p1_12" and item.image.shape == (HEIGHT, WIDTH)
    assert np.allclose(item.shapes[HEAD], head["points"])
    for name, xy in CENTRES.items():
        assert np.allclose(item.shapes[name], [xy], atol=0.05)
    assert review_flag(out / "p1_12.json") is False  # so stage 7 skips it until ticked


def test_missing_head_and_points_are_written_without_and_reported(work):
    lines = []
    summary = preannotate.run(work, BAK, pick=None, log=lines.append)
    data = json.loads((summary.out / "p2_12.json").read_text())
    check_labelme_rules(data)
    assert {s["label"] for s in data["shapes"]} == set(POINT_LANDMARKS) - {"hip_left"}
    assert summary.missing == {"p2_12": [HEAD, "hip_left"]}
    assert sum("p2_12: head, hip_left not found (head: nothing above 0.5; hip_left: no mask file)" in line
               for line in lines) == 1
    assert any("1 of them lack shapes" in line for line in lines)


def test_pick_list_and_an_image_whose_png_is_gone(work, tmp_path):
    pick = tmp_path / "pick.tsv"
    pick.write_text("Image\treason\np1_12.png\tuncertain\ngone_12\trandom\np3_12\trandom\np1_12\tagain\n")
    lines = []
    summary = preannotate.run(work, BAK, pick=pick, out=tmp_path / "out", log=lines.append)
    assert summary.written == ["p1_12"] and summary.skipped == ["gone_12", "p3_12"]
    assert sum("gone_12: no image at" in line for line in lines) == 1
    assert any(line.startswith("p3_12: no stage-7 black masks") for line in lines)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["p1_12.json"]
    pick.write_text("File_Name\nx\n")
    with pytest.raises(preannotate.HbrError, match=r"pick.tsv: missing column.s. Image"):
        preannotate.run(work, BAK, pick=pick)


def test_nothing_a_person_labelled_is_ever_overwritten(work, tmp_path):
    out = tmp_path / "labels" / "7_segment_black"  # pre-annotating straight into a label folder
    for image_id in ("p3_12", "p4_12", "p5_12"):
        write_png(work / "1_Total_Body_png" / f"{image_id}.png", np.zeros((HEIGHT, WIDTH), np.uint8))
        _masks(work, image_id)
    preannotate.run(work, BAK, out=out, log=lambda line: None)
    hand = out / "p1_12.json"  # replaced by a file made by hand (no reviewed flag)
    hand.write_text(json.dumps({**json.loads(hand.read_text()), "flags": {}}))
    ticked = out / "p2_12.json"
    ticked.write_text(json.dumps({**json.loads(ticked.read_text()), "flags": {"reviewed": True}}))
    edited = out / "p3_12.json"  # moved a point in LabelMe, not ticked yet
    data = json.loads(edited.read_text())
    data["shapes"][-1]["points"] = [[1.0, 2.0]]
    edited.write_text(json.dumps(data))
    untouched = out / "p4_12.json"
    before = {p: p.read_bytes() for p in (hand, ticked, edited, untouched)}
    (out / "p5_12.json").unlink()
    _masks(work, "p4_12", head=False)  # a retrained model: p4's unreviewed file is refreshed
    lines = []
    summary = preannotate.run(work, BAK, out=out, log=lines.append)
    assert summary.kept == ["p1_12", "p2_12", "p3_12"]
    assert summary.refreshed == ["p4_12"] and summary.written == ["p5_12"]
    assert all(p.read_bytes() == before[p] for p in (hand, ticked, edited))
    assert untouched.read_bytes() != before[untouched]
    assert any("3 existing file(s) kept, never overwritten" in line and "p1_12, p2_12, p3_12" in line
               for line in lines)
    assert not any(line.startswith(("p1_12", "p2_12", "p3_12")) for line in lines)  # in the summary only


def test_command_line(work, tmp_path, capsys):
    assert preannotate.main(["-h"]) == 0
    assert "reviewed" in capsys.readouterr().out
    assert preannotate.main(["white", "--workdir", str(work)]) == 1
    assert "run 7_segment.py white" in capsys.readouterr().err
    assert preannotate.main(["black", "--workdir", str(work), "--threshold", "1.5"]) == 2
    assert preannotate.main(["black", "--workdir", str(work), "--out", str(tmp_path / "o")]) == 0
    assert "2 pre-annotation(s) written" in capsys.readouterr().out
