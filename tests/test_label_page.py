"""The browser labelling page without a browser: label-file merging, the chain of questions,
the session built from a work directory, the command line and the HTTP API (urllib, port 0).

Every test builds a tiny work directory by hand (no other stage runs).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hbr import pipeline
from hbr.errors import HbrError
from hbr.files import write_png
from hbr.labelling import labelfile, page
from hbr.labelling.labelfile import LabelWriter, parse_label_text, read_label_file, with_label
from hbr.labels import read_class_labels

HEADER = "File_Name\tLabel\tFile_Name_npy\n"
CORNER = {"black": 0, "white": 252, "other": 128}


def label_name(number: int, bak=None) -> str:
    return pipeline.stage(number).label_names(bak)[0]


def make_image(corner: int, seed: int, shape=(40, 20)) -> np.ndarray:
    """A small uint8 image 0..252 whose corner block has the value `corner`."""
    image = np.random.default_rng(seed).integers(0, 253, size=shape, dtype=np.uint8)
    image[:12, :12] = corner
    return image


def make_workdir(root: Path, images: dict[str, str], instance: dict[str, int] | None = None,
                 table: bool = True) -> Path:
    """A work directory as stage 1 leaves it: npy + png per image and dcm_table.tsv."""
    workdir = root / "work"
    npy_dir, png_dir = pipeline.image_folders(workdir, pipeline.TOTAL_BODY)
    npy_dir.mkdir(parents=True)
    png_dir.mkdir()
    for seed, (image_id, bak) in enumerate(images.items()):
        pixels = make_image(CORNER[bak], seed)
        np.save(npy_dir / f"{image_id}.npy", pixels)
        write_png(png_dir / f"{image_id}.png", pixels)
    if table:
        instance = instance or {}
        rows = [f"{i}\t{instance.get(i, '')}" for i in images]
        (workdir / pipeline.DCM_TABLE).write_text("Image\tInstanceNumber\n" + "\n".join(rows) + "\n")
    return workdir


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return make_workdir(
        tmp_path,
        {"p1_12": "black", "p1_11": "black", "p2_12": "white", "p3_12": "other"},
        {"p1_12": 12, "p1_11": 11, "p2_12": 12, "p3_12": 12},
    )


def session_for(workdir: Path, tmp_path: Path, **kwargs) -> page.Session:
    return page.build_session(workdir, tmp_path / "labels", log=lambda line: None, **kwargs)


# --- label files ------------------------------------------------------------------------------


def test_merge_changes_only_the_answered_row_keeps_others_and_appends_new(tmp_path):
    text = HEADER + "a_12\t1\ta_12.npy\nb_12\t0\tb_12.npy\nc_12\t1\tc_12.npy\n"
    labels = parse_label_text(text, tmp_path / "x.tsv")
    assert with_label(labels, "b_12", 0) is None  # the same answer changes nothing
    changed = with_label(labels, "b_12", 1)
    assert changed == HEADER + "a_12\t1\ta_12.npy\nb_12\t1\tb_12.npy\nc_12\t1\tc_12.npy\n"
    appended = with_label(parse_label_text(changed, tmp_path / "x.tsv"), "d_11", 0)
    assert appended == changed + "d_11\t0\td_11.npy\n"
    # undo of an appended row removes it again
    assert with_label(parse_label_text(appended, tmp_path / "x.tsv"), "d_11", None) == changed


def test_merge_keeps_other_columns_line_ends_and_odd_rows(tmp_path):
    text = "File_Name\tLabel\tFile_Name_npy\tnote\r\na.npy\t0\ta.npy\tmine\r\n\r\nb\tx\tb.npy\t\r\n"
    labels = parse_label_text(text, tmp_path / "x.tsv")
    assert labels.labels == {"a": 0}  # File_Name's .npy ending dropped, as read_class_labels does
    new = with_label(labels, "a", 1)
    assert new == "File_Name\tLabel\tFile_Name_npy\tnote\r\na.npy\t1\ta.npy\tmine\r\n\r\nb\tx\tb.npy\t\r\n"
    assert with_label(labels, "c", 1).endswith("b\tx\tb.npy\t\r\nc\t1\tc.npy\t\r\n")


def test_a_new_file_gets_the_readme_format(tmp_path):
    labels = read_label_file(tmp_path / "none.tsv")
    assert with_label(labels, "1000003_20158_2_0_12", 1) == HEADER + "1000003_20158_2_0_12\t1\t1000003_20158_2_0_12.npy\n"


def test_duplicate_with_two_labels_is_reported_with_both_lines_and_the_first_row_counts(tmp_path):
    path = tmp_path / "3_crop_label.tsv"
    path.write_text(HEADER + "a\t0\ta.npy\nb\t1\tb.npy\na\t1\ta.npy\nb\t1\tb.npy\n")
    labels = read_label_file(path)
    assert labels.labels == {"a": 0, "b": 1}
    conflict = [p for p in labels.problems if "a is labelled" in p]
    assert len(conflict) == 1 and "lines 2 and 4" in conflict[0] and "\n" not in conflict[0]
    assert any("line 5" in p and "listed twice" in p for p in labels.problems)
    # an answer changes the row that counts (line 2) only
    assert with_label(labels, "a", 1) == HEADER + "a\t1\ta.npy\nb\t1\tb.npy\na\t1\ta.npy\nb\t1\tb.npy\n"


def test_rows_read_as_read_class_labels_reads_them(tmp_path):
    npy_dir = tmp_path / "npy"
    npy_dir.mkdir()
    for name in "abcd":
        np.save(npy_dir / f"{name}.npy", np.zeros((2, 2), np.uint8))
    path = tmp_path / "labels.tsv"
    path.write_text(HEADER + "a.npy\t1\ta.npy\nb\t2\tb.npy\nc\t0\tc.npy\na\t0\ta.npy\nd\t1\t\nb\t0\tb.npy\n")
    ours = read_label_file(path).labels
    theirs = read_class_labels(path, npy_dir, min_images=0, warn=lambda m: None, both_classes=False)
    assert ours == dict(zip(theirs.ids, theirs.labels))


def test_a_file_without_the_columns_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "2_class_label.tsv"
    path.write_text("Image\tclass\na\t1\n")
    with pytest.raises(HbrError, match="missing column.*File_Name"):
        LabelWriter(path).set("b", 1)
    assert path.read_text() == "Image\tclass\na\t1\n"


def test_backup_once_per_session_before_the_first_change(tmp_path):
    path = tmp_path / "3_crop_label.tsv"
    original = HEADER + "old\t0\told.npy\n"
    path.write_text(original)
    writer = LabelWriter(path, warn=lambda m: None)
    assert writer.set("old", 0) == 0  # no change: no backup
    assert list(tmp_path.glob("*.bak")) == []
    assert writer.set("new", 1) is None
    assert writer.set("old", 1) == 0
    backups = list(tmp_path.glob("3_crop_label.tsv.*.bak"))
    assert len(backups) == 1 and backups[0] == writer.backup
    assert backups[0].read_text() == original
    assert path.read_text() == HEADER + "old\t1\told.npy\nnew\t1\tnew.npy\n"
    # a second session backs up again, under another name
    LabelWriter(path, warn=lambda m: None).set("new", 0)
    assert len(list(tmp_path.glob("3_crop_label.tsv.*.bak"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".bak")) == ["3_crop_label.tsv"]


def test_no_backup_of_a_file_that_did_not_exist(tmp_path):
    writer = LabelWriter(tmp_path / "labels" / "2_class_label.tsv", warn=lambda m: None)
    writer.set("a", 1)
    assert writer.backup is None
    assert (tmp_path / "labels" / "2_class_label.tsv").read_text() == HEADER + "a\t1\ta.npy\n"


def test_a_failed_write_leaves_the_label_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "2_class_label.tsv"
    path.write_text(HEADER + "a\t1\ta.npy\n")

    def fail(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr("hbr.files.os.replace", fail)
    with pytest.raises(OSError):
        LabelWriter(path, warn=lambda m: None).set("b", 0)
    assert path.read_text() == HEADER + "a\t1\ta.npy\n"
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".bak")] == ["2_class_label.tsv"]


def test_writer_reports_each_problem_once_and_keeps_hand_edits(tmp_path):
    path = tmp_path / "2_class_label.tsv"
    path.write_text(HEADER + "a\t0\ta.npy\na\t1\ta.npy\n")
    said = []
    writer = LabelWriter(path, warn=said.append)
    writer.set("b", 1)
    with path.open("a") as fh:  # the user edits the file while the page runs
        fh.write("c\t0\tc.npy\n")
    writer.set("d", 0)
    assert len(said) == 1 and "lines 2 and 3" in said[0]
    assert path.read_text() == HEADER + "a\t0\ta.npy\na\t1\ta.npy\nb\t1\tb.npy\nc\t0\tc.npy\nd\t0\td.npy\n"


def test_backup_names_never_collide(tmp_path):
    from datetime import datetime

    path = tmp_path / "x.tsv"
    path.write_text("x")
    when = datetime(2026, 12, 3, 9, 15, 0)
    first = labelfile.make_backup(path, when)
    second = labelfile.make_backup(path, when)
    assert first.name == "x.tsv.2026-12-03T091500.bak" and second != first and second.read_text() == "x"


# --- the chain of questions ----------------------------------------------------------------------


def states(item: page.Item, asked=None) -> dict[int, str]:
    return {q["stage"]: q["state"] for q in page.question_states(item, asked or page.qc_stages())}


def test_all_mode_asks_in_chain_order_and_an_answer_that_removes_skips_the_rest():
    assert [s.number for s in page.qc_stages()] == [2, 3, 5, 6]
    item = page.Item("a", "black")
    assert states(item) == {2: "open", 3: "open", 5: "open", 6: "open"}
    item.answers = {2: 0}  # not a bone image
    assert states(item) == {2: "answered", 3: "skipped", 5: "skipped", 6: "skipped"}
    item.answers = {2: 1, 3: 1}  # cut off
    assert states(item) == {2: "answered", 3: "answered", 5: "skipped", 6: "skipped"}
    item.answers = {2: 1, 3: 0, 5: 1}  # abnormal contrast
    assert states(item) == {2: "answered", 3: "answered", 5: "answered", 6: "skipped"}
    item.answers = {2: 1, 3: 0, 5: 0, 6: 1}
    assert not page.has_open_question(item, page.qc_stages())
    why = {q["stage"]: q["why"] for q in page.question_states(page.Item("a", "black", answers={2: 0}), page.qc_stages())}
    assert "stage 2" in why[3] and pipeline.stage(2).meaning[0] in why[3]


def test_images_of_neither_background_skip_stages_5_and_6():
    item = page.Item("a", None, "stage 4 removes it: unexpected background value 128")
    assert states(item) == {2: "open", 3: "open", 5: "skipped", 6: "skipped"}
    item.answers = {2: 1, 3: 0}
    assert not page.has_open_question(item, page.qc_stages())


def test_single_stage_mode_asks_one_question_and_follows_earlier_answers():
    crop = [pipeline.stage(3)]
    assert states(page.Item("a", "black"), crop) == {3: "open"}
    assert states(page.Item("a", "black", answers={2: 0}), crop) == {3: "skipped"}
    # the InstanceNumber suggestion of a stage that is not asked counts as its answer
    assert states(page.Item("a", "black", prefill={2: 0}), crop) == {3: "skipped"}
    # ... but when stage 2 is asked it stays a suggestion to confirm
    assert states(page.Item("a", "black", prefill={2: 0})) == {2: "open", 3: "open", 5: "open", 6: "open"}


# --- the session built from a work directory -------------------------------------------------------


def test_prefill_from_instance_number_and_backgrounds(workdir, tmp_path):
    session = session_for(workdir, tmp_path)
    items = {item.image: item for item in session.items}
    assert list(items) == sorted(items)
    assert items["p1_12"].prefill == {2: 1} and items["p1_11"].prefill == {2: 0}
    assert items["p1_12"].background == "black" and items["p2_12"].background == "white"
    assert items["p3_12"].background is None and "128" in items["p3_12"].background_note
    assert any("neither background" in note and "p3_12" in note for note in session.notes)
    view = session.item_view(items["p1_12"])
    assert view["questions"][0] == {"stage": 2, "state": "open", "label": None, "prefill": 1, "why": "",
                                    "file": label_name(2)}


def test_no_instance_number_column_means_no_prefill(tmp_path):
    workdir = make_workdir(tmp_path, {"a": "black"}, table=False)
    session = session_for(workdir, tmp_path)
    assert [item.image for item in session.items] == ["a"] and session.items[0].prefill == {}


def test_images_labelled_for_every_question_that_applies_are_not_shown(workdir, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / label_name(2)).write_text(HEADER + "p1_11\t0\tp1_11.npy\np1_12\t1\tp1_12.npy\n")
    (labels / label_name(3)).write_text(HEADER + "p1_12\t0\tp1_12.npy\n")
    assert [i.image for i in session_for(workdir, tmp_path).items] == ["p1_12", "p2_12", "p3_12"]
    assert [i.image for i in session_for(workdir, tmp_path, stage="3").items] == ["p2_12", "p3_12"]
    # the black file's answer does not count for a white image
    (labels / label_name(5, "black")).write_text(HEADER + "p1_12\t1\tp1_12.npy\np2_12\t1\tp2_12.npy\n")
    session = session_for(workdir, tmp_path, stage="5")
    assert [i.image for i in session.items] == ["p2_12"]


def test_a_duplicate_in_a_label_file_is_reported_on_the_page_and_the_first_row_counts(workdir, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / label_name(2)).write_text(HEADER + "p1_12\t0\tp1_12.npy\np1_12\t1\tp1_12.npy\n")
    said = []
    session = page.build_session(workdir, labels, log=said.append)
    reports = [n for n in session.notes if "p1_12 is labelled 0 and 1" in n]
    assert len(reports) == 1 and "lines 2 and 3" in reports[0] and reports[0] in said
    assert "p1_12" not in session.by_image  # bone = 0 (the first row) answers everything for it


def test_pick_list_with_a_vanished_image(workdir, tmp_path):
    pick = tmp_path / "pick.tsv"
    pick.write_text("Image\treason\tstage\tprob\np2_12\tuncertain\t3\t0.48\ngone_12\trandom\t3\t0.9\n"
                    "p1_12\trandom\t3\t\n")
    session = session_for(workdir, tmp_path, pick=pick)
    assert [s.number for s in session.asked] == [3]  # the pick list's one stage
    assert [(i.image, i.reason, i.prob) for i in session.items] == [("p2_12", "uncertain", 0.48),
                                                                    ("p1_12", "random", None)]
    assert any("gone_12" in note and "no longer" in note for note in session.notes)
    assert [s.number for s in session_for(workdir, tmp_path, pick=pick, stage="all").asked] == [2, 3, 5, 6]


@pytest.mark.parametrize("text, message", [
    ("File_Name\treason\na\tx\n", "missing column.*Image"),
    ("Image\treason\tstage\np1_12\tx\t4\n", "line 2: stage '4' is not one of 2, 3, 5, 6"),
    ("Image\treason\tprob\np1_12\tx\thigh\n", "line 2: prob 'high' is not a number"),
])
def test_bad_pick_lists(workdir, tmp_path, text, message):
    pick = tmp_path / "pick.tsv"
    pick.write_text(text)
    with pytest.raises(HbrError, match=message):
        session_for(workdir, tmp_path, pick=pick)


# --- the command line -------------------------------------------------------------------------------


def test_help_is_fast_and_exits_0(capsys):
    assert page.main(["-h"]) == 0
    assert "--pick" in capsys.readouterr().out


@pytest.mark.parametrize("make, expect", [
    (lambda tmp: tmp / "missing", "not found: run stage 1 first"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "stage 1 has not run"),
])
def test_bad_work_directories_give_one_line_naming_stage_1(tmp_path, capsys, make, expect):
    assert page.main(["--workdir", str(make(tmp_path)), "--labels", str(tmp_path / "labels")]) == 1
    err = capsys.readouterr().err
    assert expect in err and pipeline.stage(1).script in err and len(err.strip().splitlines()) == 1


def test_bad_stage_is_a_usage_error(workdir, capsys):
    assert page.main(["--workdir", str(workdir), "--stage", "4"]) == 2


def test_nothing_to_label_exits_0_without_a_server(tmp_path, capsys):
    workdir = make_workdir(tmp_path, {"a": "black"})
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / label_name(2)).write_text(HEADER + "a\t0\ta.npy\n")
    assert page.main(["--workdir", str(workdir), "--labels", str(labels), "--port", "0"]) == 0
    assert "nothing to label" in capsys.readouterr().out


def test_a_pick_list_problem_is_one_line(workdir, tmp_path, capsys):
    assert page.main(["--workdir", str(workdir), "--pick", str(tmp_path / "nope.tsv"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "nope.tsv: not found" in err and len(err.strip().splitlines()) == 1


# --- the HTTP API ------------------------------------------------------------------------------------


@pytest.fixture
def server(workdir, tmp_path):
    session = session_for(workdir, tmp_path)
    with page.running_server(session) as url:
        yield url, session


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def post(url: str, body, content_type="application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_serves_the_page_its_files_and_the_images(server):
    url, session = server
    assert url.startswith("http://127.0.0.1:")
    status, body, headers = get(url)
    assert status == 200 and b"/static/label.js" in body and headers["Content-Type"].startswith("text/html")
    for name in ("label.js", "label.css"):
        assert get(f"{url}static/{name}")[0] == 200
    assert get(f"{url}static/../page.py")[0] == 404
    status, body, headers = get(f"{url}image/p1_12.png")
    assert status == 200 and body.startswith(b"\x89PNG") and headers["Content-Type"] == "image/png"
    assert get(f"{url}image/..%2F..%2Fdcm_table.tsv.png")[0] == 404
    status, body, _ = get(f"{url}api/session")
    view = json.loads(body)
    assert view["mode"] == "all" and [s["number"] for s in view["stages"]] == [2, 3, 5, 6]
    assert view["stages"][1]["question"] == pipeline.stage(3).question
    assert [i["image"] for i in view["items"]] == ["p1_11", "p1_12", "p2_12", "p3_12"]


def test_png_is_made_from_the_npy_when_stage_1_wrote_none(server, workdir):
    url, _ = server
    (workdir / "1_Total_Body_png" / "p1_12.png").unlink()
    status, body, _ = get(f"{url}image/p1_12.png")
    assert status == 200 and body.startswith(b"\x89PNG")


def test_answers_are_written_at_once_per_background_and_undone(server, tmp_path):
    url, session = server
    labels = tmp_path / "labels"
    status, reply = post(f"{url}api/answer", {"image": "p2_12", "stage": 2, "label": 1})
    assert status == 200 and (labels / label_name(2)).read_text() == HEADER + "p2_12\t1\tp2_12.npy\n"
    assert [q["state"] for q in reply["item"]["questions"]] == ["answered", "open", "open", "open"]
    post(f"{url}api/answer", {"image": "p2_12", "stage": 3, "label": 0})
    status, reply = post(f"{url}api/answer", {"image": "p2_12", "stage": 5, "label": 1})
    assert reply["item"]["questions"][3]["state"] == "skipped"
    assert (labels / label_name(5, "white")).read_text() == HEADER + "p2_12\t1\tp2_12.npy\n"
    assert not (labels / label_name(5, "black")).exists()
    # a question that an earlier answer removed cannot be answered
    status, reply = post(f"{url}api/answer", {"image": "p2_12", "stage": 6, "label": 0})
    assert status == 409 and "removed at stage 5" in reply["error"]
    status, reply = post(f"{url}api/undo", {})
    assert status == 200 and (reply["image"], reply["stage"]) == ("p2_12", 5)
    assert (labels / label_name(5, "white")).read_text() == HEADER
    assert reply["item"]["questions"][2]["state"] == "open"
    # the download is the file as it is now
    status, body, headers = get(f"{url}labels.tsv?stage=3")
    assert status == 200 and body.decode() == HEADER + "p2_12\t0\tp2_12.npy\n"
    assert label_name(3) in headers["Content-Disposition"]
    assert get(f"{url}labels.tsv?stage=6&bak=black")[1].decode() == HEADER
    assert get(f"{url}labels.tsv?stage=5")[0] == 400
    assert get(f"{url}labels.tsv?stage=4")[0] == 400


def test_undo_restores_a_label_the_file_had(server, tmp_path):
    url, session = server
    labels = tmp_path / "labels"
    labels.mkdir(exist_ok=True)
    (labels / label_name(3)).write_text(HEADER + "other\t1\tother.npy\np1_12\t1\tp1_12.npy\n")
    post(f"{url}api/answer", {"image": "p1_12", "stage": 2, "label": 1})
    post(f"{url}api/answer", {"image": "p1_12", "stage": 3, "label": 0})
    assert (labels / label_name(3)).read_text() == HEADER + "other\t1\tother.npy\np1_12\t0\tp1_12.npy\n"
    post(f"{url}api/undo", {})
    assert (labels / label_name(3)).read_text() == HEADER + "other\t1\tother.npy\np1_12\t1\tp1_12.npy\n"
    assert len(list(labels.glob(f"{label_name(3)}.*.bak"))) == 1
    post(f"{url}api/undo", {})
    post(f"{url}api/undo", {})  # nothing left: no error
    assert post(f"{url}api/undo", {}) == (200, {"image": None, "stage": None, "item": None})


def test_bad_requests_are_refused_with_a_message(server):
    url, _ = server
    assert post(f"{url}api/answer", {"image": "p1_12", "stage": 2, "label": 1}, "text/plain")[0] == 415
    assert post(f"{url}api/answer", {"image": "nope", "stage": 2, "label": 1})[0] == 404
    assert post(f"{url}api/answer", {"image": "p1_12", "stage": 4, "label": 1})[0] == 404
    status, reply = post(f"{url}api/answer", {"image": "p1_12", "stage": 2, "label": 2})
    assert status == 409 and "not 0 or 1" in reply["error"]
    # stages 5 and 6 do not apply to an image of neither background
    post(f"{url}api/answer", {"image": "p3_12", "stage": 2, "label": 1})
    post(f"{url}api/answer", {"image": "p3_12", "stage": 3, "label": 0})
    status, reply = post(f"{url}api/answer", {"image": "p3_12", "stage": 5, "label": 0})
    assert status == 409 and "128" in reply["error"]
    assert get(f"{url}nowhere")[0] == 404


def test_the_command_serves_on_the_printed_url_until_ctrl_c(workdir, tmp_path):
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "hbr.labelling.page", "--workdir", str(workdir), "--labels", str(tmp_path / "labels"),
         "--port", "0"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as a terminal delivers it: a test run started in the background (a shell's `&`)
        # would otherwise hand the page SIGINT ignored, and it could not be stopped this way
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = None
        for line in process.stdout:  # notes first, then the line with the address
            url = next((word for word in line.split() if word.startswith("http://127.0.0.1:")), None)
            if url:
                break
        assert url, process.stderr.read()
        assert get(url)[0] == 200
        assert post(f"{url}api/answer", {"image": "p1_12", "stage": 2, "label": 1})[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped; 1 answer(s) written" in out and "Traceback" not in err


def test_requests_for_another_host_name_are_refused(server):
    """DNS rebinding: a page of another site whose name points at 127.0.0.1 gets nothing."""
    url, _ = server
    port = url.rstrip("/").rsplit(":", 1)[1]
    request = urllib.request.Request(f"{url}api/session", headers={"Host": f"evil.example:{port}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 403
    # through ssh -L the browser names localhost, on any local port
    request = urllib.request.Request(f"{url}api/session", headers={"Host": "localhost:9999"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_a_label_that_is_not_the_integer_0_or_1_is_refused(server):
    url, _ = server
    for label in (True, 1.0, "1"):
        assert post(f"{url}api/answer", {"image": "p1_12", "stage": 2, "label": label})[0] == 409
