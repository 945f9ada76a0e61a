"""Which labels a classifier stage trains from: its own, and the other background's when shared."""

import json
from pathlib import Path

import numpy as np
import pytest

from hbr import pipeline
from hbr.cli import Context, Options
from hbr.config import load_config
from hbr.errors import HbrError
from hbr.files import write_npy, write_text
from hbr.stages.classify import read_training_images, shared_label_path
from hbr.stages.model_stage import metrics_file


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


def test_black_and_white_stages_share_one_model_trained_in_black_polarity(work):
    workdir, labels = work
    ctx = _context(workdir, labels)
    own = labels / "5_contrast_white_label.tsv"
    assert shared_label_path(ctx, own) == labels / "5_contrast_black_label.tsv"
    images, found, _ = read_training_images(ctx, own, shared_label_path(ctx, own))
    assert found == [0, 0, 0, 1]
    assert images[0].tolist() == [[0, 10], [200, 0]]  # its own image as a black background shows it
    assert images[2].tolist() == [[0, 10], [200, 0]]  # b0 as it is
    black_ctx = _context(workdir, labels, bak="black")
    black_images, black_found, _ = read_training_images(black_ctx, labels / "5_contrast_black_label.tsv",
                                                     shared_label_path(black_ctx, labels / "5_contrast_black_label.tsv"))
    assert sorted(map(str, black_images)) == sorted(map(str, images)) and sorted(black_found) == sorted(found)
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


# --------------------------------------------------------------------------- few-label recipe

def test_threshold_maximises_balanced_accuracy_then_keeps_then_takes_the_middle_of_the_gap():
    import math

    from hbr.stages.classify import THRESHOLD_RANGE, choose_threshold

    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # separable: the middle, in log-odds, of the gap between 0.2 and 0.7
    t = choose_threshold([0.05, 0.1, 0.2, 0.7, 0.9], [0, 0, 0, 1, 1], keep_label=0)
    assert logit(t) == pytest.approx((logit(0.2) + logit(0.7)) / 2)
    # calibrated low, as few-label models are: positives at 0.3-0.35 are found (0.5 would miss
    # both), and the threshold sits as far in log-odds from the positives as from the negatives
    t = choose_threshold([0.01, 0.02, 0.05, 0.3, 0.35], [0, 0, 0, 1, 1], keep_label=0)
    assert 0.05 < t < 0.3 and logit(t) == pytest.approx((logit(0.05) + logit(0.3)) / 2)
    # the gap's middle below the range: its floor, which still separates
    t = choose_threshold([1e-7, 2e-7, 1e-6, 0.002, 0.3], [0, 0, 0, 1, 1], keep_label=0)
    assert t == pytest.approx(THRESHOLD_RANGE[0])
    # no separation inside the range at all: 0.5 (nothing is gained by moving away from it)
    assert choose_threshold([1e-6, 2e-6, 1e-5, 1e-4, 2e-4], [0, 0, 0, 1, 1], keep_label=0) == 0.5
    # an overlap: of equally balanced thresholds, the one losing fewer images to keep wins
    prob, truth = [0.1, 0.6, 0.4, 0.9], [0, 0, 1, 1]  # (0.1, 0.4] and (0.6, 0.9] both score 0.75
    keep0 = choose_threshold(prob, truth, keep_label=0)  # label 0 = keep (defect stages)
    keep1 = choose_threshold(prob, truth, keep_label=1)  # label 1 = keep (stage 2)
    assert 0.6 < keep0 <= 0.9 and 0.1 < keep1 <= 0.4


def test_balanced_batches_hold_the_rare_class():
    import torch

    from hbr.training import balanced_sampler

    labels = [1] * 4 + [0] * 196
    drawn = list(balanced_sampler(labels, torch.Generator().manual_seed(0)))
    positives = sum(labels[i] for i in drawn)
    assert len(drawn) == 200 and 70 < positives < 130  # about half, not 2 %
    batches = [drawn[i:i + 16] for i in range(0, 192, 16)]
    assert all(any(labels[i] for i in batch) for batch in batches)


def test_stage_augmentation_never_creates_the_defect():
    from hbr.stages.classify import stage_augment

    c = load_config(None).classifier
    pose = stage_augment(c, c.pose, per_background=True)
    assert pose.rotate_deg == 0 and pose.invert == 0 and pose.shift > 0  # rotation tilts a head
    crop = stage_augment(c, c.crop, per_background=False)
    assert crop.shift == 0 and crop.scale == 0 and crop.rotate_deg > 0 and crop.invert > 0  # a shift cuts a body off
    assert c.crop.region == "bands" and c.pose.region == "head" and c.body.region == "whole"


def test_regions_are_stored_with_the_model_and_show_the_scan_edges():
    from hbr.data import Preprocess

    image = np.zeros((791, 272), np.uint8)
    image[780:785, 100:170] = 200  # feet at the bottom edge
    whole = Preprocess(960, 384, 192, 80).input_image(image)
    bands = Preprocess(960, 384, 192, 80, region="bands").input_image(image)
    assert bands.shape == whole.shape == (192, 80)
    # the feet cover more than twice the input rows in the bands than in the whole image
    assert (bands.max(axis=1) > 0.05).sum() >= 2 * (whole.max(axis=1) > 0.05).sum() > 0
    assert Preprocess(**Preprocess(960, 384, 192, 80, region="head").to_dict()).region == "head"
    saved_before_regions = {k: v for k, v in Preprocess(960, 384, 192, 80).to_dict().items() if k != "region"}
    assert Preprocess(**saved_before_regions).region == "whole"


def test_a_config_threshold_overrides_the_stored_one(work):
    from hbr.stages.classify import decision_threshold

    workdir, labels = work
    assert decision_threshold(_context(workdir, labels), {"threshold": 0.21}) == 0.21
    assert decision_threshold(_context(workdir, labels), {}) == 0.5  # saved before thresholds were chosen
    cfg = load_config(None, ["classifier.contrast.threshold=0.7"])
    ctx = _context(workdir, labels)
    ctx = Context(stage=ctx.stage, workdir=ctx.workdir, cfg=cfg, options=ctx.options)
    assert decision_threshold(ctx, {"threshold": 0.21}) == 0.7


def test_the_other_background_reuses_a_shared_model_and_sees_its_images_in_its_polarity(work, tmp_path):
    from hbr.data import Preprocess
    from hbr.models import create_model, save_checkpoint
    from hbr.stages.model_stage import _reuse_shared, prediction_preprocess

    spec = {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}
    black = tmp_path / "models" / "5_contrast_class_black" / "model.pt"
    white = tmp_path / "models" / "5_contrast_class_white" / "model.pt"
    save_checkpoint(black, create_model(spec), {"spec": spec, "config_hash": "K", "polarity": "black"})
    assert _reuse_shared([black], white, "other labels") is None and not white.exists()
    assert _reuse_shared([black], white, "K")["polarity"] == "black" and white.is_file()
    workdir, labels = work
    meta = {"preprocess": Preprocess(960, 384, 192, 80).to_dict(), "polarity": "black"}
    prep = prediction_preprocess(_context(workdir, labels, bak="white"), meta)
    white_image = np.full((40, 20), 252, np.uint8)
    white_image[10:20, 5:15] = 52
    np.testing.assert_array_equal(prep.input_image(white_image),
                                  Preprocess(960, 384, 192, 80).input_image(252 - white_image))
    assert prediction_preprocess(_context(workdir, labels, bak="black"), meta).swap_polarity == ()
    assert prediction_preprocess(_context(workdir, labels, bak="white"), {**meta, "polarity": None}).swap_polarity == ()


def test_training_scores_out_of_fold_stores_the_threshold_and_trains_on_every_label(tmp_path, capsys, monkeypatch):
    import torch

    from hbr.models import read_checkpoint
    from hbr.stages import classify
    from hbr.stages.classify import _train_classifier

    def small_network(spec, pretrained=False):  # the recipe under test, at a test's speed
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))

    monkeypatch.setattr(classify, "create_model", small_network)

    workdir, rng = tmp_path / "work", np.random.default_rng(0)
    rows = []
    for i in range(18):
        image = rng.integers(0, 40, size=(48, 24)).astype(np.uint8)
        label = int(i % 3 == 0)  # 6 positives: a bright block at the top (a "defect")
        image[2:10, 4:20] += 200 * label
        write_npy(workdir / "1_Total_Body_npy" / f"i{i}.npy", image)
        rows.append((f"i{i}", label))
    labels = tmp_path / "labels" / "3_crop_label.tsv"
    _label_file(labels, rows)
    cfg = load_config(None, ["runtime.cpu_bf16=false", "runtime.threads=1", "classifier.arch=resnet18",
                             "classifier.crop.input_height=32", "classifier.crop.input_width=32",
                             "classifier.crop.region=whole", "canvas.height=48", "canvas.width=24",
                             "classifier.augment.invert=0", "classifier.augment.hflip=0",
                             "classifier.train.epochs=25", "classifier.train.batch_size=4",
                             "classifier.train.min_images=4", "classifier.train.workers=0", "classifier.folds=3"])
    ctx = Context(stage=pipeline.stage(3), workdir=workdir, cfg=cfg, device="cpu", options=Options(labels=labels))
    path = tmp_path / "models" / "3_crop_class" / "model.pt"
    _train_classifier(ctx, labels, None)(path, "key", torch.device("cpu"))
    out = capsys.readouterr().out
    assert [f"fold {k}/3" in out for k in (1, 2, 3)] == [True] * 3 and "out-of-fold balanced accuracy" in out
    ckpt = read_checkpoint(path)
    assert 0.05 <= ckpt["threshold"] <= 0.95 and ckpt["preprocess"]["region"] == "whole"
    assert {"oof_balanced_accuracy", "oof_auc", "threshold"} <= set(ckpt["metrics"])
    assert ckpt["metrics"]["oof_auc"] > 0.8  # a block this bright is learned from 4 positives per fold
    # every label's out-of-fold probability is listed beside the model, and kept out of the model file
    listed = json.loads(metrics_file(path).read_text())["out_of_fold"]
    assert [(r["image"], r["label"]) for r in listed] == rows and all(0 <= r["prob"] <= 1 for r in listed)
    assert "out_of_fold" not in ckpt["metrics"] and "out_of_fold" not in ckpt


def test_a_model_at_chance_is_reported_naming_the_file_and_the_rare_class(work, capsys):
    from hbr.stages.classify import warn_if_useless

    workdir, labels = work
    ctx = _context(workdir, labels)
    path = labels / "5_contrast_white_label.tsv"
    warn_if_useless(ctx, {"oof_balanced_accuracy": 0.95, "oof_auc": 0.99}, [0, 0, 0, 1], path)
    assert capsys.readouterr().err == ""
    warn_if_useless(ctx, {"oof_balanced_accuracy": 0.5, "oof_auc": float("nan")}, [0, 0, 0, 1], path)
    err = capsys.readouterr().err
    assert "WARNING" in err and "Label 1 (abnormal contrast)" in err and str(path) in err


def test_an_image_of_the_other_background_is_used_in_its_true_polarity_and_reported(work, capsys):
    """A black-background image in a _white_ label file: its own corner value decides; the
    file and image are named once."""
    workdir, labels = work
    own = labels / "5_contrast_white_label.tsv"
    _label_file(own, [("w0", 0), ("b1", 1)])
    ctx = _context(workdir, labels, share=False)  # the model trains in white polarity
    images, found, _ = read_training_images(ctx, own, None)
    assert found == [0, 1]
    assert images[0].tolist() == [[252, 242], [52, 252]]  # a white image as it is
    assert images[1].tolist() == [[252, 162], [162, 252]]  # b1 is black: turned to white polarity
    out = capsys.readouterr().out
    assert f"{own}: 1 image(s) listed for the white background have a black background" in out and "b1" in out
