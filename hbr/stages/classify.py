"""Stages 2, 3, 5 and 6: one parameterised two-class QC classifier stage.

Each stage reads the previous stage's image folders, predicts P(label 1) for every
image, writes a decision table listing every image (probability, label, keep or
remove, and why) and hard-links the kept images into its own folders.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hbr import cli, pipeline
from hbr.cli import Context
from hbr.config import AugmentConfig, ClassifierConfig, QcStageConfig, fixed_threshold, training_values
from hbr.data import ClassifierSet, PredictionSet
from hbr.errors import HbrError
from hbr.files import keep_images, read_npy
from hbr.imaging import swap_background
from hbr.labels import read_class_labels
from hbr.models import create_model
from hbr.pipeline import Stage, image_folders, other_background, total_body_npy
from hbr.prediction import predict_batches
from hbr.stages.background import BackgroundCheck
from hbr.stages.model_stage import (
    Prediction,
    Training,
    label_location,
    prediction_preprocess,
    preprocess_for,
    run_model_stage,
    save_trained,
    shared_model_files,
    training_polarity,
)
from hbr.training import seed_everything, train

COLUMNS = ["Image", "prob", "label", "decision", "reason"]
MANY_IMAGES = 10  # a stage that removes every one of this many images is almost certainly wrong


def shared_label_path(ctx: Context, label_path: Path) -> Optional[Path]:
    """The other background's label file that a per-background stage also learns from, if any.

    Next to an explicit --labels file it is the same name with the other background;
    otherwise it is looked up like the stage's own labels.
    """
    bak = ctx.options.background
    if not ctx.stage.per_background or not ctx.cfg.classifier.share_backgrounds:
        return None
    other = other_background(bak)
    given = ctx.options.labels
    if given is not None and given.is_file():
        name = given.name.replace(f"_{bak}_", f"_{other}_")
        path = given.with_name(name) if name != given.name else None
    else:
        path = label_location(ctx, ctx.stage.label_names(other))
    return path if path is not None and path.is_file() else None


def read_training_images(
    ctx: Context, label_path: Path, shared: Optional[Path]
) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Labelled images, labels and image ids of a stage: its own, plus those of `shared` (the other
    background's label file, see shared_label_path), all in the polarity the model trains in
    (see model_stage.training_polarity); an image listed under the wrong background is
    taken in its true one and reported (see background.BackgroundCheck)."""
    c, npy_dir, bg = ctx.cfg.classifier, total_body_npy(ctx.workdir), ctx.cfg.background
    bak = ctx.options.background
    polarity = training_polarity(bak, shared is not None)
    check = BackgroundCheck(bg)

    def in_polarity(path: Path, image_id: str, listed: Optional[str], source: Path) -> np.ndarray:
        image = read_npy(path)
        of = check(image, listed, image_id, source)
        return image if of == polarity else swap_background(image, bg.black, bg.white)

    # with shared labels the minimum count and both classes apply to the pooled set
    own = read_class_labels(label_path, npy_dir, 1 if shared else c.train.min_images, both_classes=shared is None)
    images, labels = [in_polarity(p, i, bak, label_path) for p, i in zip(own.paths, own.ids)], list(own.labels)
    ids = list(own.ids)
    if shared is not None:
        try:
            extra = read_class_labels(shared, npy_dir, 1, both_classes=False)
        except HbrError as exc:
            print(f"not sharing labels across backgrounds: {exc}")
        else:
            images += [in_polarity(p, i, other_background(bak), shared) for p, i in zip(extra.paths, extra.ids)]
            labels += extra.labels
            ids += extra.ids
            print(f"{shared}: {len(extra.ids)} images of the other background added; black and white share "
                  f"one model, trained in {polarity} polarity (classifier.share_backgrounds)")
    check.report()
    if len(labels) < c.train.min_images:
        raise HbrError(f"{label_path}: only {len(labels)} usable labelled image(s) with those of {shared}; "
                       f"at least {c.train.min_images} are needed to train")
    if len(set(labels)) < 2:
        found = f"only Label {labels[0]}" if labels else "no usable rows"
        raise HbrError(f"{label_path}: {found}; both classes (0 and 1) are needed to train")
    return images, labels, ids


def score_probabilities(prob: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Balanced accuracy at `threshold` and ROC AUC (NaN with one class) of label-1 probabilities."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score  # only when training

    both = len(set(np.asarray(truth).tolist())) == 2
    bal_acc = float(balanced_accuracy_score(truth, prob >= threshold)) if both else float("nan")
    auc = float(roc_auc_score(truth, prob)) if both else float("nan")
    return {"balanced_accuracy": bal_acc, "auc": auc}


class ClassifierObjective:
    """Cross-entropy, class-weighted unless the batches are balanced; validation balanced accuracy and AUC."""

    def __init__(self, labels: list[int], weighted: bool = True):
        counts = np.bincount(labels, minlength=2).astype(np.float32)
        self.weight = torch.from_numpy(len(labels) / (2 * np.maximum(counts, 1))) if weighted else None

    def loss(self, outputs, targets):
        weight = self.weight.to(outputs.device) if self.weight is not None else None
        return F.cross_entropy(outputs, targets, weight=weight)

    def metrics(self, outputs, targets):
        out = score_probabilities(outputs.softmax(1)[:, 1].numpy(), targets.numpy(), 0.5)
        # balanced accuracy picks the epoch; AUC breaks ties
        return {**out, "score": np.nan_to_num(out["balanced_accuracy"]) + 0.01 * np.nan_to_num(out["auc"])}


# Thresholds are chosen in this range. With few positives a model is far surer of the many
# label-0 images (probabilities of 1e-6) than of a label-1 image it has not seen (1e-3 to
# 0.5), so the best threshold often lies far below 0.5; under 0.001 the fold models'
# separation is too fine to carry over to the final model.
THRESHOLD_RANGE = (0.001, 0.999)


def _log_odds(prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def choose_threshold(prob: Sequence[float], truth: Sequence[int], keep_label: int) -> float:
    """The decision threshold in THRESHOLD_RANGE that maximises balanced accuracy on
    out-of-fold probabilities.

    Among equally good thresholds it takes those that lose the fewest images to keep
    (label `keep_label`), then the one farthest, in log-odds, from every out-of-fold
    probability: the middle of the gap between the classes, on the scale the model's
    outputs spread on, so an image a little less typical than the labelled ones still
    falls on its own side.
    """
    prob, truth = np.asarray(prob, float), np.asarray(truth, int)
    odds = _log_odds(prob)
    values = np.unique(odds)
    # 0.5, the middle of every gap, and just beyond either end (removing everything or nothing)
    candidates = np.concatenate([[0.0, values[0] - 1, values[-1] + 1], (values[1:] + values[:-1]) / 2])
    candidates = np.unique(np.clip(candidates, *_log_odds(np.asarray(THRESHOLD_RANGE))))

    def rank(z: float) -> tuple:
        label = (odds >= z).astype(int)
        rates = [np.mean(label[truth == k] == k) for k in (0, 1) if np.any(truth == k)]
        lost = int(np.sum((truth == keep_label) & (label != keep_label)))
        return round(float(np.mean(rates)), 9), -lost, float(np.min(np.abs(odds - z)))

    return float(1 / (1 + math.exp(-max(candidates, key=rank))))


def stage_augment(c: ClassifierConfig, stage_cfg: QcStageConfig, per_background: bool) -> AugmentConfig:
    """The stage's augmentation: classifier.augment without what could create or remove its defect."""
    aug = c.augment
    if not stage_cfg.rotate:
        aug = replace(aug, rotate_deg=0.0)
    if not stage_cfg.shift:
        aug = replace(aug, shift=0.0, scale=0.0)
    # a per-background stage only ever sees one polarity (the other background's labels
    # arrive already swapped, see read_training_images): inverting would only add noise
    return replace(aug, invert=0.0) if per_background else aug


def _fit(ctx: Context, images, labels, prep, aug, device, log=print, log_progress=None) -> tuple[torch.nn.Module, dict]:
    """One classifier trained on `images` with the stage's recipe: (model with its last weights, result);
    `log` takes the epoch lines, `log_progress` the lines within an epoch (default: `log`)."""
    c = ctx.cfg.classifier
    seed_everything(c.train.seed)
    model = create_model({"kind": "classifier", "arch": c.arch, "num_outputs": 2}, pretrained=c.pretrained)
    bg = (ctx.cfg.background.black, ctx.cfg.background.white)
    result = train(model, ClassifierSet(images, labels, prep, aug, c.train.seed, bg), None,
                   ClassifierObjective(labels, weighted=not c.balance), c.train, device, ctx.cfg.runtime,
                   log=log, balance=labels if c.balance else None, log_progress=log_progress)
    model.load_state_dict(result.state_dict)
    return model, result


def out_of_fold(ctx: Context, images, labels, prep, aug, device) -> Optional[np.ndarray]:
    """P(label 1) of every labelled image from a model that did not train on it (k-fold,
    classifier.folds), or None when the labels are too few to fold."""
    from sklearn.model_selection import StratifiedKFold

    c = ctx.cfg.classifier
    folds = min(c.folds, int(np.bincount(labels, minlength=2).min()))
    if folds < 2:
        if c.folds:
            print(f"{ctx.run_name}: too few images of one class for {c.folds}-fold scores; threshold 0.5")
        return None
    prob = np.zeros(len(labels))
    splits = StratifiedKFold(folds, shuffle=True, random_state=c.train.seed).split(np.zeros(len(labels)), labels)
    for k, (train_idx, held_idx) in enumerate(splits, start=1):
        start = time.monotonic()
        pick = lambda idx, seq: [seq[i] for i in idx]  # noqa: E731
        # a fold's epoch lines would triple the log; its progress lines show it is moving
        model, _ = _fit(ctx, pick(train_idx, images), pick(train_idx, labels), prep, aug, device, log=lambda _: None,
                        log_progress=lambda line, k=k: print(f"{ctx.run_name}: fold {k}/{folds}: {line}"))
        held = ClassifierSet(pick(held_idx, images), pick(held_idx, labels), prep, None, c.train.seed)
        outputs = [out for out, _ in predict_batches(model, held, c.train.batch_size, 0, device, ctx.cfg.runtime,
                                                     postprocess=lambda o: o.softmax(1)[:, 1])]
        prob[held_idx] = torch.cat(outputs).numpy()
        print(f"{ctx.run_name}: fold {k}/{folds} trained on {len(train_idx)} images, "
              f"predicted {len(held_idx)} ({time.monotonic() - start:.0f} s)")
    return prob


def _train_classifier(ctx: Context, label_path: Path, shared: Optional[Path]) -> Callable[[Path, str, torch.device], None]:
    """The training step of the stage (see model_stage.Training): read the labels, score the
    recipe out of fold and choose the threshold, train on every label, save the checkpoint."""
    def train_into(path: Path, wanted_hash: str, device: torch.device) -> None:
        c, stage = ctx.cfg.classifier, ctx.stage
        stage_cfg = c.stage(stage.task)
        images, labels, ids = read_training_images(ctx, label_path, shared)
        prep = replace(preprocess_for(ctx, *c.input_size(stage.task)), region=stage_cfg.region)
        aug = stage_augment(c, stage_cfg, stage.per_background)
        print(f"{ctx.run_name}: {len(labels)} labelled images ({sum(labels)} with label 1); the model sees "
              f"region {stage_cfg.region} at {prep.input_h}x{prep.input_w}")
        oof = out_of_fold(ctx, images, labels, prep, aug, device)
        threshold = 0.5 if oof is None else choose_threshold(oof, labels, stage.keep_label)
        model, result = _fit(ctx, images, labels, prep, aug, device)
        scores = {}
        if oof is not None:
            scores = {f"oof_{k}": v for k, v in score_probabilities(oof, np.asarray(labels), threshold).items()}
            print(f"{ctx.run_name}: out-of-fold balanced accuracy {scores['oof_balanced_accuracy']:.3f}, "
                  f"AUC {scores['oof_auc']:.3f} at threshold {threshold:.3f}")
            warn_if_useless(ctx, scores, labels, label_path)
        result.metrics = {**result.metrics, **scores, "threshold": threshold}
        # every label's probability from a model that did not see it: the first places to look
        # for a label mistake are the label-0 images it scores highest and vice versa. Kept out
        # of the checkpoint: a model file shared with others holds no participant ids.
        per_image = {} if oof is None else {"out_of_fold": [
            {"image": i, "label": int(y), "prob": round(float(q), 6)} for i, y, q in zip(ids, labels, oof)]}
        meta = {
            "spec": {"kind": "classifier", "arch": c.arch, "num_outputs": 2},
            "preprocess": prep.to_dict(),
            "task": {"stage": ctx.run_name, "labels": {"0": stage.meaning[0], "1": stage.meaning[1]},
                     "keep_label": stage.keep_label, "label_file": str(label_path)},
            "threshold": threshold,
            "polarity": training_polarity(ctx.options.background, shared is not None),
            "config_hash": wanted_hash,
        }
        save_trained(path, model, result, meta, per_image)

    return train_into


USELESS_BELOW = 0.6  # out-of-fold balanced accuracy or AUC this close to chance: the model learned nothing


def warn_if_useless(ctx: Context, scores: dict, labels: Sequence[int], label_path: Path) -> None:
    """A loud line when out-of-fold scores say the model cannot tell the classes apart,
    naming the label file and the class it needs more of."""
    values = [scores.get("oof_balanced_accuracy"), scores.get("oof_auc")]
    if any(v is None or not np.isfinite(v) or v < USELESS_BELOW for v in values):
        rare = int(np.argmin(np.bincount(labels, minlength=2)))
        print(f"{ctx.run_name}: WARNING: the model learned next to nothing (out-of-fold balanced accuracy "
              f"{values[0]:.2f}, AUC {values[1]:.2f}); label more images with Label {rare} "
              f"({ctx.stage.meaning[rare]}) in {label_path} (see 'Labelling your own scans' in README.md)",
              file=sys.stderr)


def _decide(prob: float, ok: bool, stage: Stage, threshold: float) -> dict:
    if not ok:
        return {"prob": "", "label": "", "decision": "remove", "reason": "unreadable image"}
    label = int(prob >= threshold)
    keep = label == stage.keep_label
    reason = "" if keep else f"{stage.meaning[label]} (p={prob:.3f})"
    return {"prob": round(prob, 6), "label": label, "decision": "keep" if keep else "remove", "reason": reason}


def decision_threshold(ctx: Context, meta: dict) -> float:
    """The stage's threshold: the config's number, or (auto) the one stored in the model
    (0.5 for a model saved before thresholds were chosen)."""
    fixed = fixed_threshold(ctx.cfg.classifier.stage(ctx.stage.task))
    return fixed if fixed is not None else float(meta.get("threshold", 0.5))


def classify_images(model, meta, npy_dir: Path, ids: list[str], ctx: Context, device,
                    advance: Callable[[int], None] = lambda n: None) -> pd.DataFrame:
    """Decision rows for `ids` (a batch of image records) with a loaded model; `advance(n)`
    counts each finished batch (progress)."""
    prep = prediction_preprocess(ctx, meta)
    threshold = decision_threshold(ctx, meta)
    dataset = PredictionSet([npy_dir / f"{i}.npy" for i in ids], prep)
    rows = []
    p = ctx.cfg.predict
    for probs, (index, ok, _) in predict_batches(
        model, dataset, p.batch_size, p.workers, device, ctx.cfg.runtime, postprocess=lambda o: o.softmax(1)[:, 1]
    ):
        for prob, i, good in zip(probs.tolist(), index.tolist(), ok.tolist()):
            rows.append({"Image": ids[i], **_decide(prob, good, ctx.stage, threshold)})
        advance(len(index))
    return pd.DataFrame(rows, columns=COLUMNS)


def stage_training_values(c: ClassifierConfig, task: str) -> dict:
    """The classifier keys that shape this stage's training: the shared ones and its own
    section (another stage's region never retrains this one)."""
    return {k: v for k, v in training_values(c).items() if k not in pipeline.CLASSIFIERS or k == task}


def run(ctx: Context) -> None:
    """Train and/or predict one QC classifier stage, as --mode asks."""
    stage, bak, c = ctx.stage, ctx.options.background, ctx.cfg.classifier
    label_path = label_location(ctx, stage.label_names(bak))
    shared = shared_label_path(ctx, label_path)
    training = Training(
        settings=(stage.name, stage_training_values(c, stage.task), ctx.cfg.canvas, ctx.cfg.background),
        labels=label_path,
        label_files=lambda: [label_path] + ([shared] if shared else []),
        train_into=_train_classifier(ctx, label_path, shared),
        shared_with=shared_model_files(ctx, shared is not None),
    )
    output = stage.output(bak)

    def finish(table: pd.DataFrame) -> None:
        kept = table.loc[table["decision"] == "keep", "Image"].tolist()
        keep_images(kept, stage.input(bak), output, ctx.workdir)
        print(f"{ctx.run_name}: kept {len(kept)} of {len(table)} images -> {ctx.workdir / stage.table_name(bak)}, "
              f"{image_folders(ctx.workdir, output)[0]}")
        if not kept and len(table) >= MANY_IMAGES:
            print(f"{ctx.run_name}: WARNING: the model kept none of {len(table)} images; check its labels "
                  f"({', '.join(stage.label_names(bak))}) or give --models", file=sys.stderr)

    prediction = Prediction(
        columns=COLUMNS, version=str(c.stage(stage.task).threshold),
        predict_chunk=lambda model, meta, npy_dir, chunk, device, advance: classify_images(
            model, meta, npy_dir, chunk, ctx, device, advance),
        finish=finish, empty_folders=lambda: list(image_folders(ctx.workdir, output)),
    )
    run_model_stage(ctx, training, prediction)


def main(task: str, argv=None) -> int:
    """Command line of one classifier stage (task: body, crop, contrast or pose, see hbr.pipeline)."""
    return cli.entry(task, argv)
