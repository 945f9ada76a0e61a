"""Label parsing: classifier TSVs and LabelMe JSON (shapes by name, any order)."""

import base64
import json
import random

import cv2
import numpy as np
import pytest

from hbr.errors import HbrError
from hbr.files import write_npy
from hbr.labels import canonical_landmark, read_class_labels, read_labelme
from hbr.landmarks import LANDMARKS

HEAD_POLY = [[120.0, 20.0], [150.0, 22.0], [158.0, 60.0], [136.0, 95.0], [112.0, 60.0]]
POINTS = {
    "shoulder_left": (190.0, 160.0), "shoulder_right": (80.0, 161.0),
    "hip_left": (170.0, 380.0), "hip_right": (100.0, 381.0),
    "ankle_left": (160.0, 740.0), "ankle_right": (110.0, 741.0),
}


def labelme_dict(image, order_seed=0, labels=None, image_data=True):
    shapes = [{"label": "head", "points": HEAD_POLY, "group_id": None, "description": "",
               "shape_type": "polygon", "flags": {}, "mask": None}]
    shapes += [{"label": n, "points": [list(p)], "group_id": None, "description": "",
                "shape_type": "point", "flags": {}, "mask": None} for n, p in POINTS.items()]
    if labels:
        for shape, new in zip(shapes, labels):
            shape["label"] = new
    random.Random(order_seed).shuffle(shapes)
    png = cv2.imencode(".png", image)[1].tobytes()
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": "img.png",
            "imageData": base64.b64encode(png).decode() if image_data else None,
            "imageHeight": image.shape[0], "imageWidth": image.shape[1]}


@pytest.fixture
def image():
    return np.random.default_rng(1).integers(0, 252, (791, 272)).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shapes_found_by_name_in_any_order(tmp_path, image, seed):
    path = tmp_path / "p_12.json"
    path.write_text(json.dumps(labelme_dict(image, seed)))
    item = read_labelme(path)
    assert set(item.shapes) == set(LANDMARKS)
    assert np.allclose(item.shapes["head"], HEAD_POLY)
    for name, xy in POINTS.items():
        assert np.allclose(item.shapes[name], [xy])
    assert (item.image == image).all()  # decoded from the embedded imageData


def test_image_taken_from_work_directory_npy(tmp_path, image):
    write_npy(tmp_path / "npy" / "p_12.npy", image)
    path = tmp_path / "p_12.json"
    path.write_text(json.dumps(labelme_dict(image, image_data=False)))
    item = read_labelme(path, [tmp_path / "npy"])
    assert item.image_id == "p_12" and (item.image == image).all()


def test_label_aliases():
    assert canonical_landmark("Left Shoulder") == "shoulder_left"
    assert canonical_landmark("ankle-right") == "ankle_right"
    assert canonical_landmark(" Head ") == "head"
    assert canonical_landmark("knee_left") is None


def test_missing_landmark_names_file(tmp_path, image):
    data = labelme_dict(image)
    data["shapes"] = [s for s in data["shapes"] if s["label"] != "hip_left"]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HbrError, match=r"x\.json: missing landmark\(s\) hip_left"):
        read_labelme(path)


def test_rectangle_head_and_bad_json(tmp_path, image):
    data = labelme_dict(image)
    for s in data["shapes"]:
        if s["label"] == "head":
            s.update(shape_type="rectangle", points=[[110, 20], [160, 95]])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert read_labelme(path).shapes["head"].shape == (4, 2)
    path.write_text("{not json")
    with pytest.raises(HbrError, match=r"r\.json: not valid JSON"):
        read_labelme(path)


@pytest.mark.parametrize("moved", ["/home/someone/old_run/1_Total_Body_png/p_12.png",
                                   "C:\\Users\\someone\\scans\\p_12.png", "../elsewhere/p_12.png"])
def test_a_moved_image_path_still_loads_by_name(tmp_path, image, moved):
    """imagePath written on another machine or before a folder moved: the image is found by its
    name in the work directory, else beside the JSON; a JSON renamed by hand still finds it."""
    data = labelme_dict(image, image_data=False)
    data["imagePath"] = moved
    write_npy(tmp_path / "npy" / "p_12.npy", image)
    (tmp_path / "labels").mkdir()
    renamed = tmp_path / "labels" / "copy of p_12.json"
    renamed.write_text(json.dumps(data))
    item = read_labelme(renamed, [tmp_path / "npy"])  # by imagePath's name
    assert item.image_id == "p_12" and (item.image == image).all()
    beside = tmp_path / "labels" / "p_12.json"
    beside.write_text(json.dumps(data))
    cv2.imwrite(str(tmp_path / "labels" / "p_12.png"), image)  # no work directory: the PNG beside the JSON
    item = read_labelme(beside, [tmp_path / "no_npy"])
    assert item.image_id == "p_12" and (item.image == image).all()
    (tmp_path / "labels" / "p_12.png").unlink()
    with pytest.raises(HbrError, match=r"p_12\.json: image not found \(no p_12\.npy in the work directory"):
        read_labelme(beside, [tmp_path / "no_npy"])


def test_review_flag_separates_unreviewed_pre_annotations(tmp_path, image):
    from hbr.labels import review_flag, trainable_labelme_files, unreviewed_note

    for name, flags in (("hand", {}), ("ticked", {"reviewed": True}), ("pre", {"reviewed": False}),
                        ("other_flag", {"occluded": False})):
        (tmp_path / f"{name}.json").write_text(json.dumps({**labelme_dict(image, image_data=False), "flags": flags}))
    (tmp_path / "broken.json").write_text('{"flags": {"reviewed": fal')  # reported when trained on, not here
    assert [review_flag(tmp_path / f"{n}.json") for n in ("hand", "ticked", "pre", "other_flag", "broken")] == \
        [None, True, False, None, None]
    used, unreviewed = trainable_labelme_files(tmp_path)
    assert [p.stem for p in used] == ["broken", "hand", "other_flag", "ticked"]
    assert [p.stem for p in unreviewed] == ["pre"]
    assert unreviewed_note(tmp_path, 3) == (f"{tmp_path}: 3 pre-annotations not yet reviewed skipped: "
                                            "tick 'reviewed' in LabelMe to train on them")


def _write_tsv(path, rows, header="File_Name\tLabel\tFile_Name_npy"):
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def test_class_labels_skip_bad_rows_with_line_numbers(tmp_path):
    npy = tmp_path / "npy"
    for i in range(4):
        write_npy(npy / f"im{i}.npy", np.zeros((4, 4), np.uint8))
    tsv = tmp_path / "l.tsv"
    _write_tsv(tsv, [("im0", 0, "im0.npy"), ("im1", 1, "im1.npy"), ("im2", 2, ""), ("nope", 1, ""),
                     ("im0", 1, ""), ("im3.npy", 1, "")])
    warnings = []
    labels = read_class_labels(tsv, npy, min_images=3, warn=warnings.append)
    assert labels.ids == ["im0", "im1", "im3"] and labels.labels == [0, 1, 1]
    assert any("line 4" in w and "'2' is not 0 or 1" in w for w in warnings)
    assert any("line 5" in w and "unknown image 'nope'" in w for w in warnings)
    assert any("line 6" in w and "listed twice" in w for w in warnings)


def test_class_labels_fatal_problems(tmp_path):
    npy = tmp_path / "npy"
    for i in range(3):
        write_npy(npy / f"im{i}.npy", np.zeros((4, 4), np.uint8))
    tsv = tmp_path / "l.tsv"
    _write_tsv(tsv, [("im0", 0)], header="File_Name\tLab")
    with pytest.raises(HbrError, match="missing column.*Label"):
        read_class_labels(tsv, npy)
    _write_tsv(tsv, [(f"im{i}", 1, "") for i in range(3)])
    with pytest.raises(HbrError, match="both classes"):
        read_class_labels(tsv, npy, min_images=2)
    with pytest.raises(HbrError, match="at least 10"):
        read_class_labels(tsv, npy, min_images=10)
    with pytest.raises(HbrError, match="not found"):
        read_class_labels(tmp_path / "absent.tsv", npy)
