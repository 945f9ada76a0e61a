"""Which labels a classifier stage trains from: its own, and the other background's when shared."""

from pathlib import Path

import numpy as np
import pytest

from hbr import pipeline
from hbr.cli import Context, Options
from hbr.config import load_config
from hbr.errors import HbrError
from hbr.files import write_npy, write_text
from hbr.stages.classify import read_training_images, shared_label_path


def _context(workdir, labels, task="contrast", share=True, bak="white"):
    cfg = load_config(None, [f"classifier.share_backgrounds={str(share).lower()}", "classifier.train.min_images=2"])
    stage = pipeline.stage(task)
    options = Options(labels=Path(labels) if labels is not None else None, background=bak if stage.per_background else None)
    return Context(stage=stage, workdir=workdir, cfg=cfg, device="cpu", options=options)


def _label_file(path, rows):
    write_text(path, "File_Name\tLabel\tFile_Name_npy\n" + "".join(f"{i}\t{v}\t{i}.npy\n" for i, v in rows))


@pytest.fixture
def work(tmp_path):
    npy = tmp_path / "work" / "1_Total_Body_npy"
    write_npy(npy / "b0.npy", np.array([[0, 10], [200, 0]], np.uint8))
    write_npy(npy / "b1.npy", np.array([[0, 90], [90, 0]], np.uint8))
    write_npy(npy / "w0.npy", np.array([[252, 242], [52, 252]], np.uint8))
    labels = tmp_path / "labels"
    _label_file(labels / "5_contrast_black_label.tsv", [("b0", 0), ("b1", 1)])
    _label_file(labels / "5_contrast_white_label.tsv", [("w0", 0), ("b1", 0)])  # one class only: fine when shared
    return tmp_path / "work", labels


def test_white_stage_learns_from_black_labels_with_polarity_swapped(work):
    workdir, labels = work
    ctx = _context(workdir, labels)
    own = labels / "5_contrast_white_label.tsv"
    assert shared_label_path(ctx, own) == labels / "5_contrast_black_label.tsv"
    images, found = read_training_images(ctx, own, shared_label_path(ctx, own))
    assert found == [0, 0, 0, 1]
    assert images[0].tolist() == [[252, 242], [52, 252]]  # its own image as it is
    assert images[2].tolist() == [[252, 242], [52, 252]]  # b0 seen on a white background
    # an explicit --labels file finds its sibling of the other background
    ctx = _context(workdir, own)
    assert shared_label_path(ctx, own) == labels / "5_contrast_black_label.tsv"


def test_without_sharing_a_single_class_file_is_refused(work):
    workdir, labels = work
    ctx = _context(workdir, labels, share=False)
    own = labels / "5_contrast_white_label.tsv"
    assert shared_label_path(ctx, own) is None
    with pytest.raises(HbrError, match="5_contrast_white_label.tsv.*both classes"):
        read_training_images(ctx, own, shared_label_path(ctx, own))


def test_stages_that_run_once_share_nothing(work):
    workdir, labels = work
    ctx = _context(workdir, labels, task="crop")
    assert shared_label_path(ctx, labels / "3_crop_label.tsv") is None
