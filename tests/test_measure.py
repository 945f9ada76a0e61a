"""Stage 8: box/centre extraction from masks, the per-background and whole-run tables,
the accounting check, the QC report, and scoring against a ground truth."""

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from hbr.errors import HbrError
from hbr.evaluate import box_iou, format_scores, score_decisions, score_landmarks
from hbr.files import read_tsv, write_png, write_tsv
from hbr.imaging import canvas_to_original_xy, from_canvas, to_canvas
from hbr.landmarks import LANDMARKS, Box
from hbr.masks import box_from_mask, boxes_from_cells, geometry_cells, geometry_columns
from hbr.phenotypes import phenotype_columns
from hbr import ledger
from hbr.stages import measure as stage

# --------------------------------------------------------------------------- box_from_mask


def test_largest_of_two_blobs_wins():
    mask = np.zeros((60, 40), np.uint8)
    mask[5:8, 5:8] = 255  # 9 px
    mask[30:40, 10:25] = 200  # 150 px
    box = box_from_mask(mask, 0.5)
    assert (box.x, box.y, box.w, box.h) == (10, 30, 15, 10)
    assert (box.cx, box.cy) == pytest.approx((17.0, 34.5))


def test_empty_and_below_threshold_masks_give_none():
    assert box_from_mask(np.zeros((20, 10), np.uint8), 0.5) is None
    assert box_from_mask(np.full((20, 10), 100, np.uint8), 0.5) is None  # 100/255 < 0.5
    assert box_from_mask(np.full((20, 10), np.nan), 0.5) is None


def test_float_and_uint8_masks_agree():
    prob = np.zeros((30, 30))
    cv2.circle(prob, (12, 17), 5, 0.9, -1)
    as_uint8 = np.round(prob * 255).astype(np.uint8)
    assert box_from_mask(prob, 0.5) == box_from_mask(as_uint8, 0.5)


def test_diagonal_pixels_are_one_component():
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2] = mask[3, 3] = mask[4, 4] = 255  # 8-connected only
    box = box_from_mask(mask, 0.5)
    assert (box.x, box.y, box.w, box.h) == (2, 2, 3, 3)


def test_blob_touching_the_image_edge():
    mask = np.zeros((20, 12), np.uint8)
    mask[0:4, 9:12] = 255  # top-right corner
    box = box_from_mask(mask, 0.5)
    assert (box.x, box.y, box.w, box.h) == (9, 0, 3, 4)
    assert (box.cx, box.cy) == pytest.approx((10.0, 1.5))


def test_weighted_centre_differs_from_plain_centroid():
    prob = np.zeros((5, 10))
    prob[2, 2:6] = [0.6, 0.6, 0.6, 1.0]  # one strong pixel on the right
    box = box_from_mask(prob, 0.5)
    plain_cx = np.mean([2, 3, 4, 5])
    weighted_cx = (0.6 * 2 + 0.6 * 3 + 0.6 * 4 + 1.0 * 5) / 2.8
    assert box.cx == pytest.approx(weighted_cx)
    assert box.cx > plain_cx
    assert box.cy == pytest.approx(2.0)


def test_below_threshold_pixels_do_not_pull_the_centre():
    prob = np.zeros((5, 10))
    prob[2, 2:5] = 0.9
    prob[2, 5:9] = 0.3  # touching, but below the threshold
    assert box_from_mask(prob, 0.5).cx == pytest.approx(3.0)


@pytest.mark.parametrize("rows, cols", [(90, 50), (150, 110)], ids=["padded", "cropped"])
def test_canvas_masks_map_back_to_original_coordinates(rows, cols):
    canvas_h, canvas_w = 120, 80
    image = np.full((rows, cols), 7, np.uint8)
    canvas, placement = to_canvas(image, canvas_h, canvas_w)
    mask_on_canvas = np.zeros(canvas.shape, np.uint8)
    cv2.rectangle(mask_on_canvas, (30, 50), (39, 59), 255, -1)  # canvas x 30..39, y 50..59
    mask = from_canvas(mask_on_canvas, placement)
    assert mask.shape == (rows, cols)
    box = box_from_mask(mask, 0.5)
    x0, y0 = canvas_to_original_xy(30, 50, placement)
    assert (box.x, box.y, box.w, box.h) == (x0, y0, 10, 10)
    assert (box.cx, box.cy) == pytest.approx(canvas_to_original_xy(34.5, 54.5, placement))
    expected_x0 = 30 - (canvas_w - cols) // 2
    assert box.x == expected_x0  # padded: left > 0 shifts left; cropped: left < 0 shifts right


def test_geometry_cells_round_trip_and_missing_is_minus_one():
    boxes = {lm: None for lm in LANDMARKS}
    boxes["head"] = Box(x=3, y=4, w=10, h=12, cx=7.12345, cy=9.5)
    cells = geometry_cells(boxes)
    assert list(cells) == geometry_columns()
    assert cells["head_x"] == 3 and cells["head_cx"] == 7.123
    assert all(cells[f"ankle_left_{f}"] == -1 for f in ("x", "y", "w", "h", "cx", "cy"))
    back = boxes_from_cells({k: str(v) for k, v in cells.items()})
    assert back["head"] == Box(3, 4, 10, 12, 7.123, 9.5) and back["ankle_left"] is None


# --------------------------------------------------------------------------- stage 8 on a hand-made run

ROWS, COLS = 200, 80
HEAD_BOX = (30, 10, 20, 24)  # x, y, w, h
SPOTS = {  # landmark -> (cx, cy); the patient's left is on the image's right
    "shoulder_left": (60, 50),
    "shoulder_right": (20, 50),
    "hip_left": (52, 100),
    "hip_right": (28, 100),
    "ankle_left": (50, 190),
    "ankle_right": (30, 190),
}
DISC = 3
DCM_COLUMNS = [
    "folder", "ID", "height", "Sex", "Age", "Weight", "Ethnic", "DeviceSoftware", "Image",
    "InstanceNumber", "Rows", "Columns", "ExposedArea", "spacing_mm_x", "spacing_mm_y",
]  # fmt: skip
# A: complete; B: ankle_left mask empty; C: removed by stage 3; D: tissue image removed by stage 2
IMAGES = ["A_12", "B_12", "C_12", "D_11"]


def dcm_row(image, height="1.8"):
    return {
        "folder": "zips", "ID": f"1.2.{image}", "height": height, "Sex": "M", "Age": "053Y", "Weight": "80",
        "Ethnic": "", "DeviceSoftware": "210419_16", "Image": image, "InstanceNumber": image[-2:],
        "Rows": str(ROWS), "Columns": str(COLS), "ExposedArea": "[160, 400]", "spacing_mm_x": "2.0",
        "spacing_mm_y": "2.0",
    }  # fmt: skip


def decisions(rows):
    return pd.DataFrame(
        [{"Image": i, "prob": "0.9", "label": "1", "decision": d, "reason": r} for i, d, r in rows],
        columns=["Image", "prob", "label", "decision", "reason"],
    )


def landmark_mask(name):
    mask = np.zeros((ROWS, COLS), np.uint8)
    if name == "head":
        x, y, w, h = HEAD_BOX
        mask[y : y + h, x : x + w] = 230
    else:
        cv2.circle(mask, SPOTS[name], DISC, 255, -1)
    return mask


def make_run(workdir):
    """The tables and files stages 1-7 would leave for IMAGES (black background only)."""
    write_tsv(workdir / "dcm_table.tsv", pd.DataFrame([dcm_row(i) for i in IMAGES], columns=DCM_COLUMNS))
    write_tsv(workdir / "1_errors.tsv", pd.DataFrame(columns=["file", "member", "reason"]))
    write_tsv(
        workdir / "1_summary.tsv",
        pd.DataFrame([{"source": "A", "file": "A.zip", "members": 5, "images": 2, "skipped": "AP Spine=1;LVA=2", "errors": 0},
                      {"source": "C", "file": "C.zip", "members": 4, "images": 2, "skipped": "Left Femur=2", "errors": 0}]),
    )  # fmt: skip
    write_tsv(workdir / "2_class_pred.tsv", decisions(
        [("A_12", "keep", ""), ("B_12", "keep", ""), ("C_12", "keep", ""), ("D_11", "remove", "not a bone image")]))
    write_tsv(workdir / "3_crop_pred.tsv", decisions(
        [("A_12", "keep", ""), ("B_12", "keep", ""), ("C_12", "remove", "badly cropped (p=0.97)")]))
    write_tsv(workdir / "4_background.tsv", pd.DataFrame(
        [{"Image": i, "corner_value": "0", "background": "black", "oversize": "0", "decision": "black", "reason": ""}
         for i in ("A_12", "B_12")]))
    for name in ("5_contrast_black_pred.tsv", "6_pose_black_pred.tsv"):
        write_tsv(workdir / name, decisions([("A_12", "keep", ""), ("B_12", "keep", "")]))
    npy = workdir / "6_pose_black_predicted_npy"
    npy.mkdir()
    for image in ("A_12", "B_12"):
        np.save(npy / f"{image}.npy", np.zeros((ROWS, COLS), np.uint8))
        for lm in LANDMARKS:
            mask = landmark_mask(lm)
            if image == "B_12" and lm == "ankle_left":
                mask[:] = 0  # the segmenter found nothing
            write_png(workdir / f"7_segment_predicted_{lm}_black" / f"{image}.png", mask)
    for image in IMAGES:
        grey = np.full((ROWS, COLS), 10, np.uint8)
        cv2.rectangle(grey, (20, 10), (60, 195), 150, -1)
        write_png(workdir / "1_Total_Body_png" / f"{image}.png", grey)
    # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A work directory after `8_cal_segment.py black`."""
    workdir = tmp_path_factory.mktemp("run")
    make_run(workdir)
    assert stage.main(["black", "--workdir", str(workdir)]) == 0
    return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run, for tests that break it."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    return workdir


def segment_rows(workdir, bak="black"):
    return read_tsv(workdir / "8_segment_result" / f"segment_table_{bak}.tsv").set_index("Image", drop=False)


def test_segment_table_columns(finished_run):
    table = segment_rows(finished_run)
    assert list(table.columns) == DCM_COLUMNS + geometry_columns() + phenotype_columns() + ["status"]
    assert sorted(table["Image"]) == ["A_12", "B_12"]


def test_segment_table_geometry_and_phenotypes(finished_run):
    a = segment_rows(finished_run).loc["A_12"]
    assert [int(a[f"head_{f}"]) for f in "xywh"] == list(HEAD_BOX)
    for lm, (cx, cy) in SPOTS.items():
        assert (float(a[f"{lm}_cx"]), float(a[f"{lm}_cy"])) == pytest.approx((cx, cy))
        assert (int(a[f"{lm}_x"]), int(a[f"{lm}_w"])) == (cx - DISC, 2 * DISC + 1)
    # head top y=10, ankles at 190: 180 px for 180 cm -> 1 cm per pixel
    assert float(a["cm_per_px"]) == pytest.approx(1.0)
    assert float(a["head_length_cm"]) == pytest.approx(24.0)
    assert float(a["LHR"]) == pytest.approx(24 / 180, abs=1e-6)
    assert float(a["shoulder_width_mm"]) == pytest.approx(80.0)
    assert a["status"] == "ok"


def test_missing_landmark_gives_minus_one_and_empty_phenotypes(finished_run):
    b = segment_rows(finished_run).loc["B_12"]
    assert all(b[f"ankle_left_{f}"] == "-1" for f in ("x", "y", "w", "h", "cx", "cy"))
    assert b["height_px"] == "" and b["LHR"] == "" and b["leg_length_left_cm"] == ""
    assert b["LSR"] != ""  # needs no ankle
    assert b["status"] == "missing: ankle_left"


def test_hbr_table_has_every_image_once_with_its_fate(finished_run):
    hbr = read_tsv(finished_run / "8_segment_result" / "hbr_table.tsv")
    assert sorted(hbr["Image"]) == sorted(IMAGES)
    assert list(hbr.columns[: len(DCM_COLUMNS) + 3]) == DCM_COLUMNS + ["background", "excluded_by", "reason"]
    fate = hbr.set_index("Image")
    assert fate.loc["A_12", "excluded_by"] == "none" and fate.loc["A_12", "background"] == "black"
    assert fate.loc["B_12", "excluded_by"] == "none"
    assert fate.loc["C_12", "excluded_by"] == "3_crop_class"
    assert fate.loc["C_12", "reason"] == "badly cropped (p=0.97)"
    assert fate.loc["D_11", "excluded_by"] == "2_body_class"
    assert fate.loc["C_12", "head_x"] == "" and fate.loc["C_12", "LHR"] == ""  # not measured: empty, not -1
    assert fate.loc["A_12", "head_x"] == str(HEAD_BOX[0])


def test_accounting_passes_on_a_consistent_run(finished_run):
    assert ledger.check_accounting(finished_run) == []


def test_accounting_detects_a_dropped_image(run_copy):
    path = run_copy / "8_segment_result" / "hbr_table.tsv"
    hbr = read_tsv(path)
    write_tsv(path, hbr[hbr["Image"] != "C_12"])
    problems = ledger.check_accounting(run_copy)
    assert len(problems) == 1 and "C_12" in problems[0] and "dcm_table.tsv" in problems[0]


def test_accounting_detects_a_lost_handover_and_bad_summary(run_copy):
    crop = read_tsv(run_copy / "3_crop_pred.tsv")
    write_tsv(run_copy / "3_crop_pred.tsv", crop[crop["Image"] != "B_12"])
    summary = read_tsv(run_copy / "1_summary.tsv")
    summary.loc[0, "members"] = "6"
    write_tsv(run_copy / "1_summary.tsv", summary)
    problems = ledger.check_accounting(run_copy)
    assert "2_class_pred.tsv kept 3 images != 3_crop_pred.tsv saw 2: 1 only in the first (B_12)" in problems
    assert any("members 6 != images 2 + skipped 3 + other files 0 + errors 0 - missing 0" in p for p in problems)


def test_kept_but_not_yet_measured_images_are_not_measured(tmp_path):
    make_run(tmp_path)
    hbr = ledger.build_hbr_table(ledger.load_run_state(tmp_path)).set_index("Image")
    assert hbr.loc["A_12", "excluded_by"] == "not_measured"
    assert "8_cal_segment black has not run" in hbr.loc["A_12", "reason"]
    assert hbr.loc["D_11", "excluded_by"] == "2_body_class"


def test_progress_in_a_pipe_is_clean_lines(run_copy, monkeypatch, capsys):
    """Stage 8 counts the measured images in plain lines when its output is not a terminal."""
    monkeypatch.setenv("HBR_PROGRESS_SECONDS", "0")
    assert stage.main(["black", "--workdir", str(run_copy), "--no-report", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{stage.NAME} black: ")]
    assert [line.split(" images")[0] for line in lines] == [f"{stage.NAME} black: {n}/2" for n in (1, 2, 2)], err
    assert "\r" not in err and lines[-1].startswith(f"{stage.NAME} black: 2/2 images in ")


def test_report_files_exist(finished_run):
    report = finished_run / "8_segment_result" / "report"
    for name in ("index.html", "funnel.png", "distributions.png", "failed_landmarks.tsv", "examples/A_12.png"):
        assert (report / name).is_file(), name
    page = (report / "index.html").read_text()
    assert "B_12" in page and "missing: ankle_left" in page and "Accounting ok" in page
    assert "file://" not in page and "/tmp" not in page  # relative links only


def test_background_without_images_gives_an_empty_table(run_copy):
    assert stage.main(["white", "--workdir", str(run_copy), "--no-report"]) == 0
    assert len(segment_rows(run_copy, "white")) == 0
    hbr = read_tsv(run_copy / "8_segment_result" / "hbr_table.tsv")
    assert len(hbr) == len(IMAGES) and ledger.check_accounting(run_copy) == []


def test_run_without_an_errors_table_is_measured(run_copy, capsys):
    """A work directory whose stage 1 left no 1_errors.tsv (an older run, a table deleted by
    hand): stage 8 measures and says that the removed count is not known."""
    (run_copy / "1_errors.tsv").unlink()
    assert stage.main(["black", "--workdir", str(run_copy), "--no-report", "--workers", "1"]) == 0
    funnel = capsys.readouterr().out
    assert "removed = not known, no (1_errors.tsv)" in funnel, funnel
    assert len(segment_rows(run_copy)) == 2


def test_bad_masks_are_reported_not_fatal(run_copy):
    (run_copy / "7_segment_predicted_head_black" / "A_12.png").write_bytes(b"not a png")
    write_png(run_copy / "7_segment_predicted_hip_left_black" / "A_12.png", np.zeros((10, 10), np.uint8))
    shutil.rmtree(run_copy / "7_segment_predicted_ankle_right_black")  # stage 7 restricted
    assert stage.main(["black", "--workdir", str(run_copy), "--no-report"]) == 0
    status = segment_rows(run_copy).loc["A_12", "status"]
    assert status.startswith("missing: head,hip_left,ankle_right")
    assert "unreadable mask: head" in status and "mask size 10x10" in status and "not segmented: ankle_right" in status


def test_no_height_and_no_spacing_are_in_the_status(run_copy):
    dcm = read_tsv(run_copy / "dcm_table.tsv")
    dcm.loc[dcm["Image"] == "A_12", ["height", "spacing_mm_x"]] = ["0", ""]
    write_tsv(run_copy / "dcm_table.tsv", dcm)
    assert stage.main(["black", "--workdir", str(run_copy), "--no-report"]) == 0
    a = segment_rows(run_copy).loc["A_12"]
    assert a["status"] == "no height; no pixel spacing"
    assert a["LHR"] == "" and a["head_length_cm"] == "" and a["head_length_mm"] == "" and a["LSR"] != ""


def test_missing_or_malformed_tables_name_the_file(run_copy, capsys):
    write_tsv(run_copy / "3_crop_pred.tsv", pd.DataFrame({"Image": ["A_12"], "label": ["0"]}))
    with pytest.raises(HbrError, match="3_crop_pred.tsv: missing column"):
        ledger.load_run_state(run_copy)
    (run_copy / "dcm_table.tsv").unlink()
    assert stage.main(["black", "--workdir", str(run_copy)]) == 1
    assert "dcm_table.tsv: not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- scoring


def truth_from(segment):
    """A ground truth that matches `segment` exactly (the phantom's column names)."""
    truth = segment[["Image"] + [f"head_{f}" for f in "xywh"] + [f"{lm}_{c}" for lm in LANDMARKS for c in ("cx", "cy")]].copy()
    truth["LHR"] = segment["LHR"]
    truth["split"] = "test"
    return truth


def test_score_landmarks_perfect_and_missing(finished_run):
    segment = segment_rows(finished_run).reset_index(drop=True)
    truth = truth_from(segment)
    truth.loc[truth["Image"] == "B_12", "ankle_left_cx"] = "50"
    truth.loc[truth["Image"] == "B_12", "ankle_left_cy"] = "190"
    truth.loc[truth["Image"] == "B_12", "LHR"] = str(24 / 180)
    scores = score_landmarks(segment, truth)
    assert scores["n_images"] == 2
    assert scores["head_iou_median"] == pytest.approx(1.0)
    assert scores["centre_error_median_px"] == pytest.approx(0.0)
    assert scores["missing_by_landmark"]["ankle_left"] == 1
    per = scores["per_image"].set_index("Image")
    assert per.loc["B_12", "ankle_left_error_px"] == np.inf and per.loc["B_12", "LHR_relative_error"] == np.inf
    lines = format_scores(scores)
    assert lines[0] == "head box IoU median 1.00 (goal >= 0.90) on 2 held-out images ok"


def test_score_landmarks_uses_only_test_split(finished_run):
    segment = segment_rows(finished_run).reset_index(drop=True)
    truth = truth_from(segment)
    truth.loc[truth["Image"] == "B_12", "split"] = "train"
    assert score_landmarks(segment, truth)["n_images"] == 1
    assert score_landmarks(segment, truth, split=None)["n_images"] == 2


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [-1, -1, -1, -1]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [0, 0, 10, 10]], float)
    assert box_iou(a, b) == pytest.approx([1.0, 50 / 150, 0.0])


def test_score_decisions_balanced_accuracy():
    table = decisions([("a", "keep", ""), ("b", "keep", ""), ("c", "remove", ""), ("d", "keep", ""), ("e", "remove", "")])
    truth = pd.DataFrame({"Image": list("abcdef"), "bad_crop": ["0", "0", "1", "1", "0", "1"],
                          "split": ["test"] * 5 + ["train"]})  # fmt: skip
    # should keep a, b, e (kept a, b): recall 2/3; should remove c, d (removed c): 1/2
    assert score_decisions(table, truth, "bad_crop", keep_when=0) == pytest.approx((2 / 3 + 1 / 2) / 2)
    truth["oversize"] = ["0", "0", "0", "0", "1", "0"]  # e left out: keep a, b (both kept), remove c, d
    assert score_decisions(table, truth, "bad_crop", 0, unscored="oversize") == pytest.approx((1 + 1 / 2) / 2)
    line = format_scores(decision_scores={"3_crop": (0.99, 5)})[0]
    assert line == "3_crop balanced accuracy 0.990 (goal >= 0.98) on 5 held-out images ok"


def test_evaluate_workdir_scores_a_run(run_copy):
    from hbr.evaluate import evaluate_workdir

    truth = truth_from(segment_rows(run_copy).reset_index(drop=True))
    extra = pd.DataFrame({"Image": ["C_12", "D_11"], "split": ["test", "test"]})
    truth = pd.concat([truth, extra], ignore_index=True).fillna("")
    truth["is_bone"] = ["1", "1", "1", "0"]
    truth["bad_crop"] = ["0", "0", "1", "0"]
    truth["bad_contrast"] = truth["bad_pose"] = "0"
    write_tsv(run_copy / "phantom_truth.tsv", truth)
    lines = evaluate_workdir(run_copy, truth_path=run_copy / "phantom_truth.tsv")
    assert lines[0] == "2_class balanced accuracy 1.000 (goal >= 0.98) on 4 held-out images ok"
    assert lines[1] == "3_crop balanced accuracy 1.000 (goal >= 0.98) on 3 held-out images ok"
    assert any(line.startswith("head box IoU median 1.00") for line in lines)
    truth["oversize"] = ["0", "0", "1", "0"]  # an oversize image is not scored for framing
    write_tsv(run_copy / "phantom_truth.tsv", truth)
    lines = evaluate_workdir(run_copy, truth_path=run_copy / "phantom_truth.tsv")
    assert lines[1] == "3_crop balanced accuracy 1.000 (goal >= 0.98) on 2 held-out images ok"
    with pytest.raises(HbrError, match="ground_truth.tsv: not found"):
        evaluate_workdir(run_copy)
