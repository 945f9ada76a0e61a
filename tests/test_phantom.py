"""The phantom data set: deterministic, real-looking tags, labels that parse, consistent truth."""

import hashlib
import json
import zipfile
from io import BytesIO

import numpy as np
import pandas as pd
import pydicom
import pytest

from hbr.files import read_tsv
from hbr.labels import read_labelme
from hbr.landmarks import LANDMARKS, POINT_LANDMARKS, Box
from hbr.phantom import generate
from hbr.phenotypes import measure, phenotype_columns

N = 12


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    generate(out, N, seed=3)
    return out


def tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(phantom, tmp_path):
    generate(tmp_path / "again", N, seed=3)
    assert tree_digest(tmp_path / "again") == tree_digest(phantom)
    generate(tmp_path / "other", 3, seed=4)
    assert tree_digest(tmp_path / "other") != tree_digest(tmp_path / "again")


def test_dicom_tags_like_the_real_files(phantom):
    zips = sorted((phantom / "zips").glob("*_20158_2_0.zip"))
    assert len(zips) == N
    for path in zips:
        with zipfile.ZipFile(path) as zf:
            datasets = [pydicom.dcmread(BytesIO(zf.read(name))) for name in zf.namelist()]
        total_body = {int(ds.InstanceNumber): ds for ds in datasets if ds.ProtocolName == "Total Body"}
        assert set(total_body) == {11, 12}
        assert len(datasets) >= 3  # plus other protocols for stage 1 to skip
        for ds in total_body.values():
            assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME2"
            assert ds.BitsAllocated == 8 and ds.PatientOrientation == ["L", "F"]
            pixels = ds.pixel_array
            assert pixels.dtype == np.uint8 and pixels.max() <= 252
            assert 1.4 < float(ds.PatientSize) < 2.0
            assert len(ds.PatientAge) == 4 and ds.PatientAge.endswith("Y")
            assert ds.ExposedArea[0] / ds.Columns == pytest.approx(2.42, abs=0.01)
            assert ds.ExposedArea[1] / ds.Rows == pytest.approx(2.43, abs=0.01)
            corner = pixels[:9, :9]
            assert (corner == 0).all() or (corner == 252).all()


def test_labels_parse_and_name_known_images(phantom):
    truth = read_tsv(phantom / "ground_truth.tsv")
    for tsv in (phantom / "labels").glob("*.tsv"):
        table = read_tsv(tsv)
        assert list(table.columns) == ["File_Name", "Label", "File_Name_npy"]
        assert set(table["Label"]) <= {"0", "1"}
        assert set(table["File_Name"]) <= set(truth.loc[truth["split"] == "train", "Image"])
    jsons = list((phantom / "labels").glob("7_segment_*/*.json"))
    assert jsons
    for path in jsons:
        data = json.loads(path.read_text())
        assert {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"} <= set(data)
        assert {s["label"] for s in data["shapes"]} == set(LANDMARKS)
        item = read_labelme(path)  # image from the embedded imageData
        assert item.image.shape == (data["imageHeight"], data["imageWidth"])


def test_truth_phenotypes_recompute(phantom):
    truth = pd.read_csv(phantom / "ground_truth.tsv", sep="\t")
    for row in truth.itertuples(index=False):
        r = row._asdict()
        g = {"head": Box(r["head_x"], r["head_y"], r["head_w"], r["head_h"], r["head_cx"], r["head_cy"])}
        g.update({n: Box(r[f"{n}_cx"], r[f"{n}_cy"], 0, 0, r[f"{n}_cx"], r[f"{n}_cy"]) for n in POINT_LANDMARKS})
        expected = measure(g, r["height_m"], (r["spacing_mm_x"], r["spacing_mm_y"]))
        for col in phenotype_columns():
            assert r[col] == pytest.approx(expected[col], rel=1e-3, abs=1e-3), col
        # height-scaled and scanner-scaled stature agree to a few percent
        assert r["stature_mm"] / 10 == pytest.approx(r["Height_cm"], rel=0.08)


def test_defects_carry_their_truth(tmp_path):
    generate(tmp_path, 40, seed=0)
    truth = pd.read_csv(tmp_path / "ground_truth.tsv", sep="\t")
    bone = truth[truth["kind"] == "bone"]
    assert bone[["bad_crop", "bad_contrast", "bad_pose"]].sum().min() >= 1
    assert (bone[["bad_crop", "bad_contrast", "bad_pose"]].sum(axis=1) <= 1).all()
    crop = bone[bone["bad_crop"] == 1]
    cut = (crop["head_y"] < 0) | (crop["ankle_left_cy"] > crop["Rows"] - 0.02 * crop["Rows"])
    assert cut.all()
    assert ((truth["background"] == "white").sum()) > 0
    left_on_image_right = bone["shoulder_left_cx"] > bone["shoulder_right_cx"]
    assert left_on_image_right.all()
