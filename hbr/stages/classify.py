"""Stages 2, 3, 5 and 6: one parameterised two-class QC classifier stage.

Each stage reads the previous stage's image folders, predicts P(label 1) for every
image, writes a decision table listing every image (probability, label, keep or
remove, and why) and hard-links the kept images into its own folders.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hbr import cli, pipeline
from hbr.cli import Context
from hbr.config import training_values
from hbr.data import ClassifierSet, PredictionSet, Preprocess
from hbr.errors import HbrError
from hbr.files import keep_images, read_npy
from hbr.imaging import swap_background
from hbr.labels import read_class_labels
from hbr.models import create_model
from hbr.pipeline import Stage, image_folders, other_background, total_body_npy
from hbr.prediction import predict_batches
from hbr.stages.model_stage import Prediction, Training, label_location, preprocess_for, run_model_stage, save_trained
from hbr.training import seed_everything, split_indices, train

COLUMNS = ["Image", "prob", "label", "decision", "reason"]


class ClassifierObjective:
    """Class-weighted cross-entropy; validation balanced accuracy and ROC AUC."""

    def __init__(self, labels: list[int]):
        counts = np.bincount(labels, minlength=2).astype(np.float32)
        self.weight = torch.from_numpy(len(labels) / (2 * np.maximum(counts, 1)))

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets, weight=self.weight.to(outputs.device))

    def metrics(self, outputs, targets):
        from sklearn.metrics import balanced_accuracy_score, roc_auc_score  # only when training

        prob = outputs.softmax(1)[:, 1].numpy()
        truth = targets.numpy()
        bal_acc = float(balanced_accuracy_score(truth, prob >= 0.5))
        auc = float(roc_auc_score(truth, prob)) if len(set(truth.tolist())) == 2 else float("nan")
        # balanced accuracy picks the epoch; AUC breaks ties
        return {"balanced_accuracy": bal_acc, "auc": auc, "score": bal_acc + 0.01 * np.nan_to_num(auc)}


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
) -> tuple[list[np.ndarray], list[int]]:
    """Labelled images and labels of a stage: its own, plus those of `shared` (the other
    background's label file, see shared_label_path) with their polarity swapped."""
    c, npy_dir = ctx.cfg.classifier, total_body_npy(ctx.workdir)
    # with shared labels the minimum count and both classes apply to the pooled set
    own = read_class_labels(label_path, npy_dir, 1 if shared else c.train.min_images, both_classes=shared is None)
    images, labels = [read_npy(p) for p in own.paths], list(own.labels)
    if shared is not None:
        try:
            extra = read_class_labels(shared, npy_dir, 1, both_classes=False)
        except HbrError as exc:
            print(f"not sharing labels across backgrounds: {exc}")
        else:
            bg = ctx.cfg.background
            images += [swap_background(read_npy(p), bg.black, bg.white) for p in extra.paths]
            labels += extra.labels
            print(f"{shared}: {len(extra.ids)} images of the other background added with polarity swapped "
                  "(classifier.share_backgrounds)")
    if len(labels) < c.train.min_images:
        raise HbrError(f"{label_path}: only {len(labels)} usable labelled image(s) with those of {shared}; "
                       f"at least {c.train.min_images} are needed to train")
    if len(set(labels)) < 2:
        found = f"only Label {labels[0]}" if labels else "no usable rows"
        raise HbrError(f"{label_path}: {found}; both classes (0 and 1) are needed to train")
    return images, labels


def _train_classifier(ctx: Context, label_path: Path, shared: Optional[Path]) -> Callable[[Path, str, torch.device], None]:
    """The training step of the stage (see model_stage.Training): read the labels, train, save the checkpoint."""
    def train_into(path: Path, wanted_hash: str, device: torch.device) -> None:
        c, stage = ctx.cfg.classifier, ctx.stage
        images, labels = read_training_images(ctx, label_path, shared)
        prep = preprocess_for(ctx, c.input_height, c.input_width)
        train_idx, val_idx = split_indices(len(images), c.train.val_fraction, c.train.seed, labels)
        pick = lambda idx, seq: [seq[i] for i in idx]  # noqa: E731
        print(f"{ctx.run_name}: {len(train_idx)} training and {len(val_idx)} validation images "
              f"({sum(labels)} with label 1)")
        seed_everything(c.train.seed)
        spec = {"kind": "classifier", "arch": c.arch, "num_outputs": 2}
        model = create_model(spec, pretrained=c.pretrained)
        train_labels = pick(train_idx, labels)
        bg = (ctx.cfg.background.black, ctx.cfg.background.white)
        # a per-background stage only ever sees one polarity (the other background's labels
        # arrive already swapped, see read_training_images): inverting would only add noise
        aug = replace(c.augment, invert=0.0) if stage.per_background else c.augment
        result = train(
            model,
            ClassifierSet(pick(train_idx, images), train_labels, prep, aug, c.train.seed, bg),
            ClassifierSet(pick(val_idx, images), pick(val_idx, labels), prep, None, c.train.seed, bg),
            ClassifierObjective(train_labels),
            c.train,
            device,
            ctx.cfg.runtime,
        )
        meta = {
            "spec": spec,
            "preprocess": prep.to_dict(),
            "task": {"stage": ctx.run_name, "labels": {"0": stage.meaning[0], "1": stage.meaning[1]},
                     "keep_label": stage.keep_label, "label_file": str(label_path)},
            "config_hash": wanted_hash,
        }
        save_trained(path, model, result, meta)

    return train_into


def _decide(prob: float, ok: bool, stage: Stage, threshold: float) -> dict:
    if not ok:
        return {"prob": "", "label": "", "decision": "remove", "reason": "unreadable image"}
    label = int(prob >= threshold)
    keep = label == stage.keep_label
    reason = "" if keep else f"{stage.meaning[label]} (p={prob:.3f})"
    return {"prob": round(prob, 6), "label": label, "decision": "keep" if keep else "remove", "reason": reason}


def classify_images(model, meta, npy_dir: Path, ids: list[str], ctx: Context, device) -> pd.DataFrame:
    """Decision rows for `ids` (a batch of image records) with a loaded model."""
    prep = Preprocess(**meta["preprocess"])
    dataset = PredictionSet([npy_dir / f"{i}.npy" for i in ids], prep)
    rows = []
    p = ctx.cfg.predict
    for probs, (index, ok, _) in predict_batches(
        model, dataset, p.batch_size, p.workers, device, ctx.cfg.runtime, postprocess=lambda o: o.softmax(1)[:, 1]
    ):
        for prob, i, good in zip(probs.tolist(), index.tolist(), ok.tolist()):
            rows.append({"Image": ids[i], **_decide(prob, good, ctx.stage, ctx.cfg.classifier.threshold)})
    return pd.DataFrame(rows, columns=COLUMNS)


def run(ctx: Context) -> None:
    """Train and/or predict one QC classifier stage, as --mode asks."""
    stage, bak, c = ctx.stage, ctx.options.background, ctx.cfg.classifier
    label_path = label_location(ctx, stage.label_names(bak))
    shared = shared_label_path(ctx, label_path)
    training = Training(
        settings=(stage.name, training_values(c), ctx.cfg.canvas, ctx.cfg.background),
        label_files=lambda: [label_path] + ([shared] if shared else []),
        train_into=_train_classifier(ctx, label_path, shared),
    )
    output = stage.output(bak)

    def finish(table: pd.DataFrame) -> None:
        kept = table.loc[table["decision"] == "keep", "Image"].tolist()
        keep_images(kept, stage.input(bak), output, ctx.workdir)
        print(f"{ctx.run_name}: kept {len(kept)} of {len(table)} images -> {ctx.workdir / stage.table_name(bak)}, "
              f"{image_folders(ctx.workdir, output)[0]}")

    prediction = Prediction(
        columns=COLUMNS, version=str(c.threshold),
        predict_chunk=lambda model, meta, npy_dir, chunk, device: classify_images(model, meta, npy_dir, chunk, ctx, device),
        finish=finish, empty_folders=lambda: list(image_folders(ctx.workdir, output)),
    )
    run_model_stage(ctx, training, prediction)


def main(task: str, argv=None) -> int:
    """Command line of one classifier stage (task: body, crop, contrast or pose, see hbr.pipeline)."""
    stage = pipeline.stage(task)

    def add_arguments(parser):
        if stage.per_background:
            cli.add_background_argument(parser)
        cli.add_model_arguments(parser)

    return cli.main(stage, add_arguments, run, argv)
