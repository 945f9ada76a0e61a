"""The phantom data set: deterministic, real-looking tags, labels that parse, consistent truth."""

import base64
import hashlib
import json
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from hbr.files import read_tsv
from hbr.labels import read_labelme
from hbr.landmarks import LANDMARKS, POINT_LANDMARKS, Box
from hbr.evaluate import DECISION_TRUTH
from hbr.phantom import (DEFECT_RATES, QC_DEFECTS, VARIANTS, defect_rates, generate, main, make_participant,
                         plan_categories)
from hbr.phenotypes import compute_phenotypes, phenotype_columns

N = 12
REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "ukb_dxa_examples"
LABEL_TSVS = ["2_class_label.tsv", "3_crop_label.tsv", "5_contrast_black_label.tsv", "5_contrast_white_label.tsv",
              "6_pose_black_label.tsv", "6_pose_white_label.tsv"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    generate(out, N, seed=3)
    return out


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    """40 participants: every defect and both backgrounds occur."""
    out = tmp_path_factory.mktemp("phantom40")
    summary = generate(out, 40, seed=0)
    return out, summary


@pytest.fixture(scope="module")
def real_bone():
    path = REAL_DIR / "1.2.840.113619.2.110.210419.20180719141313.1.12.12.1.dcm"
    if not path.exists():
        pytest.skip(f"../shared/ukb_dxa_examples not found: {path} (real UK Biobank example files)")
    return pydicom.dcmread(path)


def tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def total_body(zip_path):
    """{InstanceNumber: dataset} of the Total Body members, and the number of members."""
    with zipfile.ZipFile(zip_path) as zf:
        datasets = [pydicom.dcmread(BytesIO(zf.read(name))) for name in zf.namelist()]
    return {int(ds.InstanceNumber): ds for ds in datasets if ds.ProtocolName == "Total Body"}, datasets


def bone_pixels(folder, row):
    """The bone image of a ground-truth row, as a black-background array."""
    pixels = total_body(folder / "zips" / f"{row['eid']}_20158_2_0.zip")[0][12].pixel_array.astype(int)
    return 252 - pixels if row["background"] == "white" else pixels


# What the default generator wrote for (N, seed 3) before the variants existed: the zips'
# members (not the zip containers, whose deflate bytes depend on the zlib build), the
# ground truth, the label files and the LabelMe JSON. A change here changes every demo
# and benchmark set; update it only on purpose. (Rendering uses OpenCV blurs on floats: a
# different OpenCV build may round a pixel differently and fail this test.)
DEFAULT_CONTENT_SHA256 = "0e800e2305a1588673088fdd6dfec84450dc13524b239f752934e484fbeb4047"


def content_digest(folder):
    """SHA-256 over every file's name and content, zips by their members' names and bytes."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        h.update(str(p.relative_to(folder)).encode())
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                for name in zf.namelist():
                    h.update(name.encode())
                    h.update(zf.read(name))
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def test_default_variant_writes_what_it_always_wrote(phantom):
    assert content_digest(phantom) == DEFAULT_CONTENT_SHA256


def test_same_seed_same_bytes(phantom, tmp_path):
    generate(tmp_path / "again", N, seed=3)
    assert tree_digest(tmp_path / "again") == tree_digest(phantom)
    generate(tmp_path / "other", 3, seed=4)
    generate(tmp_path / "again3", 3, seed=3)
    assert tree_digest(tmp_path / "other") != tree_digest(tmp_path / "again3")
    zips = lambda d: sorted(p.name for p in (d / "zips").iterdir())  # noqa: E731
    assert zips(tmp_path / "other") == zips(tmp_path / "again3")  # same names, other contents


def test_rerun_into_same_folder_drops_stale_files(tmp_path):
    generate(tmp_path, 4, seed=1)
    assert main(["--out", str(tmp_path), "--n", "2", "--seed", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "zips").iterdir()) == ["1000000_20158_2_0.zip", "1000001_20158_2_0.zip"]
    truth = read_tsv(tmp_path / "ground_truth.tsv")
    assert {p.stem for p in (tmp_path / "labels").glob("7_segment_*/*.json")} <= set(truth["Image"])


def test_dicom_tags_like_the_real_files(phantom):
    zips = sorted((phantom / "zips").glob("*_20158_2_0.zip"))
    assert [z.name for z in zips] == [f"{1000000 + i}_20158_2_0.zip" for i in range(N)]
    uids = set()
    for path in zips:
        tb, datasets = total_body(path)
        assert set(tb) == {11, 12}
        assert 3 <= len(datasets) <= 5  # plus 1-3 other protocols for stage 1 to skip
        with zipfile.ZipFile(path) as zf:
            assert all(n.startswith("1.2.840.") and n.endswith(".dcm") for n in zf.namelist())
        for ds in datasets:
            uids.add(ds.SOPInstanceUID)
            assert ds.preamble == b"\0" * 128 and ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1" and ds.Modality == "CR"
        for ds in tb.values():
            assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
            assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
            assert ds.PatientOrientation == ["L", "F"] and ds.DeviceSerialNumber == "210419"
            pixels = ds.pixel_array
            assert pixels.dtype == np.uint8 and pixels.max() <= 252 and pixels.shape == (ds.Rows, ds.Columns)
            assert 1.5 <= float(ds.PatientSize) <= 1.95 and ds.PatientSex in ("M", "F")
            assert len(ds.PatientAge) == 4 and ds.PatientAge[:3].isdigit() and ds.PatientAge.endswith("Y")
            assert 35 < float(ds.PatientWeight) < 160 and ds.SoftwareVersions.startswith("16.")
            assert ds.ExposedArea[0] / ds.Columns == pytest.approx(2.42, abs=0.01)
            assert ds.ExposedArea[1] / ds.Rows == pytest.approx(2.43, abs=0.01)
            corner = pixels[:9, :9]
            assert (corner == 0).all() or (corner == 252).all()
    assert len(uids) == sum(len(total_body(z)[1]) for z in zips)  # every SOP Instance UID unique


def test_tags_and_intensities_match_the_real_bone_image(phantom, real_bone):
    ds = total_body(phantom / "zips" / "1000000_20158_2_0.zip")[0][12]
    wanted = {e.keyword for e in real_bone if e.keyword and not e.VR == "SQ"} - {
        "ReferringPhysicianName", "TotalNumberOfExposures", "EntranceDoseInmGy",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"}
    missing = sorted(k for k in wanted if k not in ds)
    assert not missing, f"tags of the real file missing in the phantom: {missing}"
    for key in ("Rows", "Columns", "ExposedArea", "Modality", "PatientOrientation", "BitsStored", "ProtocolName"):
        assert ds[key].value == real_bone[key].value, key
    truth = pd.read_csv(phantom / "ground_truth.tsv", sep="\t")
    normal = truth[(truth["kind"] == "bone") & (truth[["bad_crop", "bad_contrast", "oversize"]].sum(axis=1) == 0)]
    real = real_bone.pixel_array.astype(int)
    for _, row in normal.iterrows():
        img = bone_pixels(phantom, row)
        assert abs((img == 0).mean() - (real == 0).mean()) < 0.2  # body covers a like share of the image
        assert abs(np.percentile(img[img > 0], 99) - np.percentile(real[real > 0], 99)) < 30  # bright bone
        assert abs(np.median(img[img > 0]) - np.median(real[real > 0])) < 30  # soft tissue


def test_labels_parse_and_name_known_images(phantom):
    truth = read_tsv(phantom / "ground_truth.tsv")
    assert sorted(p.name for p in (phantom / "labels").glob("*.tsv")) == sorted(LABEL_TSVS)
    for tsv in (phantom / "labels").glob("*.tsv"):
        assert tsv.read_text().splitlines()[0] == "File_Name\tLabel\tFile_Name_npy"
        table = read_tsv(tsv)
        assert set(table["Label"]) <= {"0", "1"}
        assert (table["File_Name_npy"] == table["File_Name"] + ".npy").all()
        assert set(table["File_Name"]) <= set(truth.loc[truth["split"] == "train", "Image"])
    jsons = list((phantom / "labels").glob("7_segment_*/*.json"))
    assert jsons
    by_image = truth.set_index("Image")
    for path in jsons:
        data = json.loads(path.read_text())
        assert list(data) == ["version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"]
        assert data["version"] == "5.4.1" and data["imagePath"] == f"{path.stem}.png"
        assert base64.b64decode(data["imageData"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert {s["label"] for s in data["shapes"]} == set(LANDMARKS)
        for shape in data["shapes"]:
            assert list(shape) == ["label", "points", "group_id", "description", "shape_type", "flags", "mask"]
            kind, count = ("polygon", len(shape["points"])) if shape["label"] == "head" else ("point", 1)
            assert shape["shape_type"] == kind and len(shape["points"]) == count
        row = by_image.loc[path.stem]
        assert row["kind"] == "bone" and row["bad_crop"] == row["bad_contrast"] == row["bad_pose"] == "0"
        assert path.parent.name == f"7_segment_{row['background']}"
        item = read_labelme(path)  # image from the embedded imageData
        assert item.image.shape == (data["imageHeight"], data["imageWidth"])
        assert 12 <= len(item.shapes["head"]) <= 24
        assert float(row["head_y"]) == pytest.approx(item.shapes["head"][:, 1].min(), abs=0.02)
        for name in POINT_LANDMARKS:
            assert item.shapes[name][0].tolist() == pytest.approx([float(row[f"{name}_cx"]), float(row[f"{name}_cy"])],
                                                                  abs=0.02)
    orders = {tuple(s["label"] for s in json.loads(p.read_text())["shapes"]) for p in jsons}
    assert len(orders) > 1 or len(jsons) == 1  # shape order is shuffled: consumers must use labels


def test_label_files_list_the_right_images(larger):
    out, _ = larger
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t")
    train = truth[truth["split"] == "train"]
    bone = train[train["kind"] == "bone"]
    framed = bone[(bone["bad_crop"] == 0) & (bone["oversize"] == 0)]

    def listed(name):
        table = pd.read_csv(out / "labels" / name, sep="\t")
        return dict(zip(table["File_Name"], table["Label"]))

    assert listed("2_class_label.tsv") == dict(zip(train["Image"], train["is_bone"]))
    sized = bone[bone["oversize"] == 0]
    assert listed("3_crop_label.tsv") == dict(zip(sized["Image"], sized["bad_crop"]))
    for bak in ("black", "white"):
        mine = framed[framed["background"] == bak]
        assert listed(f"5_contrast_{bak}_label.tsv") == dict(zip(mine["Image"], mine["bad_contrast"]))
        calm = mine[mine["bad_contrast"] == 0]
        assert listed(f"6_pose_{bak}_label.tsv") == dict(zip(calm["Image"], calm["bad_pose"]))
        segment = {p.stem for p in (out / "labels" / f"7_segment_{bak}").glob("*.json")}
        assert segment == set(calm.loc[calm["bad_pose"] == 0, "Image"])
    assert set(truth["split"]) == {"train", "test"}
    assert 0.6 < (truth["split"] == "train").mean() < 0.8


def test_truth_phenotypes_recompute(phantom):
    truth = pd.read_csv(phantom / "ground_truth.tsv", sep="\t")
    assert len(truth) == 2 * N and set(truth["kind"]) == {"bone", "tissue"}
    for row in truth.itertuples(index=False):
        r = row._asdict()
        g = {"head": Box(r["head_x"], r["head_y"], r["head_w"], r["head_h"], r["head_cx"], r["head_cy"])}
        g.update({n: Box(r[f"{n}_cx"], r[f"{n}_cy"], 0, 0, r[f"{n}_cx"], r[f"{n}_cy"]) for n in POINT_LANDMARKS})
        expected = compute_phenotypes(g, r["height_m"], (r["spacing_mm_x"], r["spacing_mm_y"]))
        for col in phenotype_columns():
            assert r[col] == pytest.approx(expected[col], rel=1e-3, abs=1e-3), col
        # height-scaled and scanner-scaled stature agree to a few percent (vertex to ankle ~ 96 % of height)
        assert r["stature_mm"] / 10 == pytest.approx(r["Height_cm"], rel=0.06)
        assert r["head_cx"] == pytest.approx(r["head_x"] + r["head_w"] / 2, abs=1e-3)
        assert r["shoulder_left_cx"] > r["shoulder_right_cx"]  # patient's left on the image right (L\F)
        assert r["hip_left_cx"] > r["hip_right_cx"] and r["ankle_left_cx"] > r["ankle_right_cx"]


def test_phenotypes_vary_like_people(larger):
    out, _ = larger
    bone = pd.read_csv(out / "ground_truth.tsv", sep="\t").query("kind == 'bone'")
    for col, low, high in (("LHR", 0.11, 0.16), ("WHR", 0.07, 0.11), ("LSR", 0.5, 0.85), ("LLeR", 0.2, 0.33)):
        assert bone[col].between(low, high).all(), col
        assert bone[col].std() / bone[col].mean() > 0.03, f"{col} barely varies"
    assert bone["height_m"].std() > 0.05


def test_defects_carry_their_truth(larger):
    out, summary = larger
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t")
    bone = truth[truth["kind"] == "bone"]
    defects = bone[["bad_crop", "bad_contrast", "bad_pose", "oversize"]]
    assert (defects.sum() >= 1).all() and (defects.sum(axis=1) <= 1).all()
    assert summary.counts == {**defects.sum().to_dict(), "white": int((bone["background"] == "white").sum()),
                              "labelme": summary.counts["labelme"]}
    crop = bone[bone["bad_crop"] == 1]
    assert ((crop["head_y"] < 0) | (crop[["ankle_left_cy", "ankle_right_cy"]].max(axis=1) > crop["Rows"] - 15)).all()
    for _, row in crop.iterrows():
        img = bone_pixels(out, row)
        assert (img[0] > 0).any() or (img[-1] > 0).any(), f"{row['Image']} is not cut off"
    fine = bone[bone["bad_crop"] == 0]
    assert (fine["head_y"] > 2).all()
    big = bone["oversize"] == 1
    assert ((bone["Rows"] > 960) | (bone["Columns"] > 384)).eq(big).all()
    # a tilted head turns about the neck: its centre leaves the body axis (shoulder to hip midpoints)
    top = np.stack([bone[["shoulder_left_cx", "shoulder_right_cx"]].mean(axis=1),
                    bone[["shoulder_left_cy", "shoulder_right_cy"]].mean(axis=1)], axis=1)
    axis = np.stack([bone[["hip_left_cx", "hip_right_cx"]].mean(axis=1),
                     bone[["hip_left_cy", "hip_right_cy"]].mean(axis=1)], axis=1) - top
    head = bone[["head_cx", "head_cy"]].to_numpy() - top
    off_axis = np.abs(axis[:, 0] * head[:, 1] - axis[:, 1] * head[:, 0]) / np.linalg.norm(axis, axis=1)
    tilted = bone["bad_pose"].to_numpy() == 1
    assert off_axis[tilted].min() > 8 > 4 > off_axis[~tilted].max()
    for i, (defect, white, train) in enumerate(plan_categories(40, 0)):
        roll = abs(make_participant(i, 0, defect, white, train).body.head_roll_deg)
        assert (20 <= roll <= 35) if defect == "bad_pose" else roll <= 4
    for _, row in bone[bone["bad_crop"] == 0].iterrows():
        body = bone_pixels(out, row)
        body = body[body > 0]
        saturated, p99 = (body >= 250).mean(), np.percentile(body, 99)
        assert (saturated > 0.2 or p99 < 200) == bool(row["bad_contrast"]), row["Image"]
    white = truth[truth["background"] == "white"]
    assert 0 < len(white) < len(truth) / 2 and set(white.groupby("eid").size()) == {2}  # both images of a participant
    for _, row in white.iterrows():
        pixels = total_body(out / "zips" / f"{row['eid']}_20158_2_0.zip")[0][row["InstanceNumber"]].pixel_array
        assert (pixels[:9, :9] == 252).all()


# ---------------------------------------------------------------- the alt variant and the defect rate
ALT_N, ALT_RATE = 60, 0.15


@pytest.fixture(scope="module")
def alt(tmp_path_factory):
    """An alt set with 9 participants of each QC defect: every kind occurs."""
    out = tmp_path_factory.mktemp("phantom_alt")
    summary = generate(out, ALT_N, seed=1, variant="alt", defect_rate=ALT_RATE)
    return out, summary


def head_width_ratio(bone):
    return (bone["head_w"] / bone["head_h"]).to_numpy()


def trunk_share(bone):
    """Vertex-to-hip over vertex-to-ankle: smaller for longer legs."""
    hip = bone[["hip_left_cy", "hip_right_cy"]].mean(axis=1)
    ankle = bone[["ankle_left_cy", "ankle_right_cy"]].mean(axis=1)
    return ((hip - bone["head_y"]) / (ankle - bone["head_y"])).to_numpy()


def test_alt_has_the_same_truth_columns_plus_the_defect_kind(alt, larger):
    out, summary = alt
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t", keep_default_na=False)
    default = pd.read_csv(larger[0] / "ground_truth.tsv", sep="\t")
    assert [c for c in truth.columns if c != "defect_kind"] == list(default.columns)
    for column, _, unscored in DECISION_TRUTH.values():  # hbr.evaluate scores it unchanged
        assert column in truth.columns and (unscored is None or unscored in truth.columns)
    bone = truth[truth["kind"] == "bone"]
    expected = {d: round(ALT_N * ALT_RATE) for d in QC_DEFECTS}
    assert {d: int(bone[d].sum()) for d in QC_DEFECTS} == expected
    assert summary.counts["oversize"] == round(ALT_N * DEFECT_RATES["oversize"])
    for defect in QC_DEFECTS:
        kinds = set(bone.loc[bone[defect] == 1, "defect_kind"])
        assert kinds == set(VARIANTS["alt"][defect]), defect  # every kind of the variant, and only those
    assert set(bone.loc[bone[[*QC_DEFECTS, "oversize"]].sum(axis=1) == 0, "defect_kind"]) == {""}
    tissue = truth[truth["kind"] == "tissue"]
    assert set(tissue.loc[tissue["bad_contrast"] == 0, "defect_kind"]) <= {"", "head_cut", "feet_cut", "tilted",
                                                                            "turned", "oversize"}
    # label files as for the default set
    assert sorted(p.name for p in (out / "labels").glob("*.tsv")) == sorted(LABEL_TSVS)


def test_alt_kinds_are_not_the_defaults():
    for defect in ("bad_contrast", "bad_pose"):
        assert set(VARIANTS["alt"][defect]) - set(VARIANTS["default"][defect])
    assert not set(VARIANTS["alt"]["bad_contrast"]) & set(VARIANTS["default"]["bad_contrast"])


def test_alt_defects_look_like_their_kind(alt, larger):
    out, _ = alt
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t", keep_default_na=False)
    bone = truth[truth["kind"] == "bone"]
    clean = bone[bone[[*QC_DEFECTS, "oversize"]].sum(axis=1) == 0]
    # a turned head is squeezed sideways: narrower than any head facing up
    turned = bone[bone["defect_kind"] == "turned"]
    assert head_width_ratio(turned).max() < head_width_ratio(clean).min()
    # a tilted head leaves the body axis, as in the default set (there: > 8 px)
    tilted = bone[bone["defect_kind"] == "tilted"]
    shoulders = tilted[["shoulder_left_cx", "shoulder_right_cx"]].mean(axis=1).to_numpy()
    assert (np.abs(tilted["head_cx"].to_numpy() - shoulders) > 8).all()
    # framing: the head reaches above the image, or the ankles near or below its bottom edge
    crop = bone[bone["bad_crop"] == 1]
    head = crop["defect_kind"] == "head_cut"
    assert (crop.loc[head, "head_y"] < 0).all()
    ankles = crop.loc[~head, ["ankle_left_cy", "ankle_right_cy"]].max(axis=1)
    assert (ankles > crop.loc[~head, "Rows"] - 20).all()
    for _, row in crop.iterrows():
        img = bone_pixels(out, row)
        assert (img[0] > 0).any() if row["defect_kind"] == "head_cut" else (img[-1] > 0).any(), row["Image"]
    for _, row in clean.iterrows():
        img = bone_pixels(out, row)
        assert not (img[:3] > 0).any() and not (img[-3:] > 0).any(), f"{row['Image']} is cut off"
    # contrast: a gamma curve moves the soft tissue far from normal; a bone window blanks it
    normal_median = np.median([np.median(bone_pixels(out, r)[bone_pixels(out, r) > 0]) for _, r in clean.iterrows()])
    for _, row in bone[bone["bad_contrast"] == 1].iterrows():
        body = bone_pixels(out, row)
        body = body[body > 0]
        if row["defect_kind"] == "gamma":
            assert abs(np.median(body) - normal_median) > 40, row["Image"]
        else:
            assert (body <= 5).mean() > 0.3, row["Image"]
    # other proportions: longer legs (shorter trunk) and relatively wider heads than the default's
    default = pd.read_csv(larger[0] / "ground_truth.tsv", sep="\t")
    default_clean = default[(default["kind"] == "bone") & (default[[*QC_DEFECTS, "oversize"]].sum(axis=1) == 0)]
    assert trunk_share(clean).mean() < trunk_share(default_clean).mean() - 0.015
    assert head_width_ratio(clean).mean() > head_width_ratio(default_clean).mean() + 0.03


def test_alt_same_seed_same_bytes_and_other_than_default(tmp_path):
    generate(tmp_path / "a", 5, seed=2, variant="alt", defect_rate=0.2)
    generate(tmp_path / "b", 5, seed=2, variant="alt", defect_rate=0.2)
    generate(tmp_path / "c", 5, seed=2, defect_rate=0.2)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a")["zips/1000000_20158_2_0.zip"] != tree_digest(tmp_path / "c")[
        "zips/1000000_20158_2_0.zip"]


def test_defect_rate_and_train_share():
    assert defect_rates() == DEFECT_RATES and defect_rates(None) == DEFECT_RATES
    assert defect_rates(0.03) == {**{d: 0.03 for d in QC_DEFECTS}, "oversize": DEFECT_RATES["oversize"]}
    for bad in (-0.1, 0.4):
        with pytest.raises(ValueError):
            defect_rates(bad)
    plan = plan_categories(200, 0, defect_rates(0.03), train_share=0.3)
    defects = [d for d, _, _ in plan]
    assert {d: defects.count(d) for d in QC_DEFECTS} == {d: 6 for d in QC_DEFECTS}
    assert 0.25 < np.mean([t for _, _, t in plan]) < 0.35
    for d in QC_DEFECTS:  # still stratified: every defect in both splits
        assert {t for dd, _, t in plan if dd == d} == {True, False}
    assert plan_categories(40, 0, None) == plan_categories(40, 0)


def test_kind_is_checked_and_forced():
    with pytest.raises(ValueError):
        make_participant(0, 0, "bad_pose", False, True, "default", "turned")
    with pytest.raises(ValueError):
        make_participant(0, 0, None, False, True, "sideways")
    p = make_participant(0, 0, "bad_pose", False, True, "alt", "turned")
    assert p.defect_kind == "turned" and 0.2 <= abs(p.body.head_turn) <= 0.35 and abs(p.body.head_roll_deg) <= 4
    # forcing the kind the default would draw anyway changes nothing
    drawn = make_participant(3, 0, "bad_crop", False, True)
    assert make_participant(3, 0, "bad_crop", False, True, kind=drawn.defect_kind) == drawn


def test_command_line_variant_rate_and_preview(tmp_path):
    assert main(["--out", str(tmp_path / "set"), "--n", "4", "--seed", "0", "--variant", "alt", "--defect-rate",
                 "0.25", "--train-share", "0.5", "--preview", str(tmp_path / "alt.png")]) == 0
    truth = read_tsv(tmp_path / "set" / "ground_truth.tsv")
    assert "defect_kind" in truth.columns and set(truth["defect_kind"]) - {""}
    assert (tmp_path / "alt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in (["--variant", "nope"], ["--defect-rate", "0.5"], ["--train-share", "1"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "x"), "--n", "2", *bad])
    assert not (tmp_path / "x").exists()
