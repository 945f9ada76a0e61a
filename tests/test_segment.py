"""Which LabelMe files a U-Net trains from: its own, and the other background's when shared."""

import json
from pathlib import Path

import numpy as np
import pytest

from hbr import pipeline
from hbr.cli import Context, Options
from hbr.config import load_config
from hbr.errors import HbrError
from hbr.files import write_npy, write_text
from hbr.landmarks import HEAD, LANDMARKS
from hbr.stages.segment import read_training_labels, shared_label_folder

BLACK_IMAGE = np.array([[0, 0, 0], [0, 200, 0], [0, 90, 0]], np.uint8)
WHITE_IMAGE = np.array([[252, 252, 252], [252, 52, 252], [252, 162, 252]], np.uint8)


def _context(workdir, labels, share=True, min_images=2, bak="white"):
    cfg = load_config(None, [f"segmenter.share_backgrounds={str(share).lower()}",
                             f"segmenter.train.min_images={min_images}"])
    options = Options(labels=Path(labels) if labels is not None else None, background=bak)
    return Context(stage=pipeline.stage(7), workdir=workdir, cfg=cfg, device="cpu", options=options)


def _labelme(path, image_id):
    """A LabelMe file for the work directory's image `image_id` (no imageData)."""
    shapes = [{"label": name, "shape_type": "polygon" if name == HEAD else "point",
               "points": [[0, 0], [2, 0], [1, 2]] if name == HEAD else [[1, 1]]} for name in LANDMARKS]
    write_text(path, json.dumps({"shapes": shapes, "imagePath": f"{image_id}.png", "imageData": None}))


@pytest.fixture
def work(tmp_path):
    workdir = tmp_path / "work"
    write_npy(workdir / "1_Total_Body_npy" / "b0.npy", BLACK_IMAGE)
    write_npy(workdir / "1_Total_Body_npy" / "w0.npy", WHITE_IMAGE)
    labels = tmp_path / "labels"
    _labelme(labels / "7_segment_black" / "b0.json", "b0")
    _labelme(labels / "7_segment_white" / "w0.json", "w0")
    return workdir, labels


def test_black_and_white_share_one_unet_trained_in_black_polarity(work):
    workdir, labels = work
    ctx = _context(workdir, labels)
    own = labels / "7_segment_white"
    shared = shared_label_folder(ctx, "white", own)
    assert shared == labels / "7_segment_black"
    items = read_training_labels(ctx, own, shared)
    assert [x.image_id for x in items] == ["w0", "b0"]
    assert items[0].image.tolist() == (252 - WHITE_IMAGE).tolist()  # its own image as a black background shows it
    assert items[1].image.tolist() == BLACK_IMAGE.tolist()  # b0 as it is
    # the black stage reads the same images in the same polarity: one model serves both
    black = read_training_labels(_context(workdir, labels, bak="black"), labels / "7_segment_black",
                                 labels / "7_segment_white")
    assert sorted(x.image.tolist() for x in black) == sorted(x.image.tolist() for x in items)
    assert items[1].shapes.keys() == set(LANDMARKS)  # the landmarks stay where they are
    # --labels naming the folder of files itself, in upstream's layout, finds its sibling too
    upstream = labels / "7_segment_masked_white_direct" / "in"
    _labelme(upstream / "w0.json", "w0")
    _labelme(labels / "7_segment_masked_black_direct" / "in" / "b0.json", "b0")
    ctx = _context(workdir, upstream)
    assert shared_label_folder(ctx, "white", upstream) == labels / "7_segment_masked_black_direct" / "in"


def test_without_sharing_or_other_labels_only_its_own_count(work):
    workdir, labels = work
    own = labels / "7_segment_white"
    ctx = _context(workdir, labels, share=False)
    assert shared_label_folder(ctx, "white", own) is None
    with pytest.raises(HbrError, match=r"7_segment_white: only 1 usable LabelMe file\(s\); at least 2"):
        read_training_labels(ctx, own, None)
    for path in (labels / "7_segment_black").glob("*.json"):
        path.unlink()
    assert shared_label_folder(_context(workdir, labels), "white", own) is None  # an empty folder is no source


def test_a_bad_shared_file_is_skipped_and_counted_out(work, capsys):
    workdir, labels = work
    write_text(labels / "7_segment_black" / "broken.json", "{not json")
    ctx = _context(workdir, labels, min_images=3)
    own = labels / "7_segment_white"
    with pytest.raises(HbrError, match="only 2 usable LabelMe file.*with those of .*7_segment_black"):
        read_training_labels(ctx, own, shared_label_folder(ctx, "white", own))
    assert "broken.json: not valid JSON" in capsys.readouterr().out


def _flag(path, reviewed):
    """Give a LabelMe file the image-level flag a pre-annotation carries."""
    data = json.loads(path.read_text())
    write_text(path, json.dumps({**data, "flags": {"reviewed": reviewed}}))


def test_unreviewed_pre_annotations_are_skipped_and_never_change_the_retrain_key(work, capsys):
    from hbr.stages.model_stage import files_digest
    from hbr.stages.segment import training_label_files

    workdir, labels = work
    own = labels / "7_segment_black"
    ctx = _context(workdir, labels, share=False, min_images=1, bak="black")
    write_npy(workdir / "1_Total_Body_npy" / "b1.npy", BLACK_IMAGE)
    write_npy(workdir / "1_Total_Body_npy" / "b2.npy", BLACK_IMAGE)
    before = files_digest(training_label_files(own, None))
    for image_id in ("b1", "b2"):  # the pre-annotator wrote two files into the label folder
        _labelme(own / f"{image_id}.json", image_id)
        _flag(own / f"{image_id}.json", False)
    assert [p.stem for p in training_label_files(own, None)] == ["b0"]
    assert files_digest(training_label_files(own, None)) == before  # no retraining for them
    assert [x.image_id for x in read_training_labels(ctx, own, None)] == ["b0"]
    out = capsys.readouterr().out
    assert out.count("not yet reviewed") == 1  # one line for the folder, not one per file
    assert f"{own}: 2 pre-annotations not yet reviewed skipped: tick 'reviewed' in LabelMe to train on them" in out
    _flag(own / "b1.json", True)  # ticked in LabelMe: trained on, and the key changes
    assert [x.image_id for x in read_training_labels(ctx, own, None)] == ["b0", "b1"]
    assert files_digest(training_label_files(own, None)) != before
    assert "1 pre-annotation not yet reviewed skipped" in capsys.readouterr().out


def test_the_shared_folder_also_leaves_out_unreviewed_files(work, capsys):
    from hbr.stages.segment import training_label_files

    workdir, labels = work
    ctx = _context(workdir, labels, min_images=1)
    own, other = labels / "7_segment_white", labels / "7_segment_black"
    _flag(other / "b0.json", False)
    assert training_label_files(own, other) == [own / "w0.json"]
    assert [x.image_id for x in read_training_labels(ctx, own, other)] == ["w0"]
    assert f"{other}: 1 pre-annotation not yet reviewed skipped" in capsys.readouterr().out


def test_a_labelme_file_of_the_other_background_is_used_in_its_true_polarity(work, capsys):
    """A LabelMe file of a black-background image in 7_segment_white/: its own corner value
    decides its polarity, and the file is named."""
    workdir, labels = work
    own = labels / "7_segment_white"
    _labelme(own / "b0.json", "b0")
    ctx = _context(workdir, labels, share=False, min_images=1)  # the U-Net trains in white polarity
    items = read_training_labels(ctx, own, None)
    assert {x.image_id: x.image.tolist() for x in items} == {
        "w0": WHITE_IMAGE.tolist(),  # as it is
        "b0": (252 - BLACK_IMAGE).tolist(),  # black: turned to white polarity, not taken for white
    }
    out = capsys.readouterr().out
    assert f"{own}: 1 image(s) listed for the white background have a black background" in out and "b0.json" in out
