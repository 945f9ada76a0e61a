"""Picking what to label next: spread-out random first, then the uncertain, failed or implausible."""

from pathlib import Path

import numpy as np
import pytest

from hbr import pipeline
from hbr.config import load_config
from hbr.files import read_tsv, write_text
from hbr.labelling import pick
from test_label_page import HEADER, label_name, make_workdir

CFG = load_config(None)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    images = {f"b{i}_12": "black" for i in range(30)} | {f"w{i}_12": "white" for i in range(6)}
    return make_workdir(tmp_path, images)


def test_spread_sample_reaches_small_strata_and_is_seeded():
    images = [f"b{i}" for i in range(90)] + ["w0", "w1"]
    strata = {i: ("white" if i[0] == "w" else "black", (40, 20), float(k)) for k, i in enumerate(images)}
    sample = pick.spread_sample(images, strata, 6, seed=3)
    assert len(sample) == len(set(sample)) == 6
    assert any(i.startswith("w") for i in sample)  # 2 of 92 images, still sampled
    assert sample == pick.spread_sample(images, strata, 6, seed=3)
    assert sample != pick.spread_sample(images, strata, 6, seed=4)


def test_uncertain_first_then_some_random():
    probs = {f"i{k}": p for k, p in enumerate([0.01, 0.02, 0.48, 0.55, 0.97, 0.3, 0.7, 0.05, 0.9, 0.1])}
    chosen = pick.uncertain_first(probs, 0.5, 5, seed=0)
    reasons = dict(chosen)
    assert len(chosen) == 5 and sum(r.startswith("random") for r in reasons.values()) == 1
    assert {"i2", "i3"} <= set(reasons) and reasons["i2"].startswith("uncertain")
    # nearest a threshold that is not 0.5
    assert pick.uncertain_first(probs, 0.1, 1, seed=0)[0][0] == "i9"


def test_implausible_landmarks():
    good = {"head_y": 10, "head_h": 40, "shoulder_left_cy": 80, "shoulder_right_cy": 81, "hip_left_cy": 300,
            "hip_right_cy": 300, "ankle_left_cy": 600, "ankle_right_cy": 601, "height_px": 600, "LHR": 0.13}
    medians, spreads = {"LHR": 0.13}, {"LHR": 0.005}
    assert pick.implausible(good, medians, spreads) == ""
    assert "ankles above the hips" in pick.implausible({**good, "ankle_left_cy": 200, "ankle_right_cy": 200},
                                                       medians, spreads)
    assert "shoulders above the head" in pick.implausible({**good, "shoulder_left_cy": 5, "shoulder_right_cy": 5},
                                                          medians, spreads)
    assert "shoulders far apart" in pick.implausible({**good, "shoulder_right_cy": 130}, medians, spreads)
    assert "LHR" in pick.implausible({**good, "LHR": 0.2}, medians, spreads)


def test_no_model_yet_picks_spread_out_unlabelled_images_of_the_background(workdir, tmp_path):
    labels = tmp_path / "labels"
    write_text(labels / label_name(6, "white"), HEADER + "w0_12\t0\tw0_12.npy\n")
    rows = pick.pick(workdir, pipeline.stage(6), "white", labels, 10, 0, CFG)
    assert sorted(r["Image"] for r in rows) == [f"w{i}_12" for i in range(1, 6)]  # labelled w0 never picked
    assert all("no model output yet" in r["reason"] for r in rows)


def test_with_a_decision_table_the_uncertain_come_first(workdir, tmp_path):
    stage = pipeline.stage(2)
    probs = {f"b{i}_12": 0.02 + i / 40 for i in range(30)}  # b19 (0.495) nearest 0.5
    write_text(workdir / stage.table_name(), "Image\tprob\tlabel\tdecision\treason\n"
               + "".join(f"{i}\t{p}\t0\tremove\t\n" for i, p in probs.items()))
    rows = pick.pick(workdir, stage, None, tmp_path / "labels", 5, 0, CFG)
    assert rows[0]["Image"] == "b19_12" and rows[0]["prob"] == pytest.approx(0.495)
    assert sum(r["reason"].startswith("uncertain") for r in rows) == 4


def test_stage_7_picks_failed_landmarks_first(workdir, tmp_path):
    result = pipeline.segment_table_path(workdir, "black")
    rows = ["Image\tstatus\thead_y\thead_h\tshoulder_left_cy\tshoulder_right_cy\thip_left_cy\thip_right_cy\t"
            "ankle_left_cy\tankle_right_cy\theight_px\tLHR"]
    for i in range(30):
        status = "missing: head" if i == 7 else "ok"
        rows.append(f"b{i}_12\t{status}\t10\t40\t80\t80\t300\t300\t600\t600\t600\t{0.13 + i * 1e-4}")
    write_text(result, "\n".join(rows) + "\n")
    picked = pick.pick(workdir, pipeline.stage(7), "black", tmp_path / "labels", 3, 0, CFG)
    assert picked[0]["Image"] == "b7_12" and picked[0]["reason"].startswith("landmarks failed")
    assert len(picked) == 3


def test_command_writes_the_pick_list_and_never_touches_labels(workdir, tmp_path, capsys):
    labels = tmp_path / "labels"
    assert pick.main(["3", "--workdir", str(workdir), "--labels", str(labels), "--n", "4"]) == 0
    out = pick.pick_path(workdir, pipeline.stage(3), None)
    table = read_tsv(out)
    assert list(table.columns) == pick.PICK_COLUMNS and len(table) == 4
    assert not labels.exists()
    assert "hbr.labelling.page" in capsys.readouterr().out


def test_command_errors(tmp_path, capsys):
    assert pick.main(["3", "--workdir", str(tmp_path / "nowhere")]) == 1
    assert "run stage 1 first" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pick.main(["5", "--workdir", str(tmp_path)])  # no background
    assert "needs a background" in capsys.readouterr().err
    np.testing.assert_equal(pick.uncertainty(0.5, 0.5), 0.0)
