"""Stages 2, 3, 5 and 6: one parameterised two-class QC classifier stage.

Each stage reads the previous stage's image folders, predicts P(label 1) for every
image, writes a decision table listing every image (probability, label, keep or
remove, and why) and hard-links the kept images into its own folders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hbr import cli
from hbr.cli import Context
from hbr.data import ClassifierSet, PredictionSet, Preprocess
from hbr.errors import HbrError
from hbr.files import image_folders, keep_images, list_images, read_npy, write_tsv
from hbr.imaging import swap_background
from hbr.labels import read_class_labels
from hbr.models import create_model
from hbr.prediction import predict_batches
from hbr.resume import run_chunks
from hbr.stages.model_stage import (
    finish_without_images,
    label_location,
    obtain_model,
    preprocess_for,
    save_trained,
    stage_device,
)
from hbr.training import seed_everything, split_indices, train

TOTAL_BODY = "1_Total_Body"
COLUMNS = ["Image", "prob", "label", "decision", "reason"]


@dataclass(frozen=True)
class ClassifierTask:
    """One QC stage: its folders, tables, label file and the meaning of labels 0 and 1."""

    stage: str  # e.g. "3_crop_class"; {bak} is filled in for per-background stages
    input_prefix: str
    output_prefix: str
    table: str
    labels: str
    keep_label: int
    meaning: tuple[str, str]  # what label 0 and label 1 mean
    per_background: bool = False
    background: Optional[str] = None  # filled in by for_background

    def for_background(self, bak: Optional[str]) -> "ClassifierTask":
        """The task with {bak} filled in (unchanged for stages that run once)."""
        if not self.per_background:
            return self
        fill = lambda s: s.format(bak=bak)  # noqa: E731
        return ClassifierTask(
            f"{self.stage}_{bak}",
            fill(self.input_prefix),
            fill(self.output_prefix),
            fill(self.table),
            fill(self.labels),
            self.keep_label,
            self.meaning,
            False,
            bak,
        )


TASKS = {
    "body": ClassifierTask(
        "2_body_class", TOTAL_BODY, "2_class_predicted", "2_class_pred.tsv", "2_class_label.tsv",
        keep_label=1, meaning=("not a whole-body bone image", "whole-body bone image"),
    ),
    "crop": ClassifierTask(
        "3_crop_class", "2_class_predicted", "3_crop_predicted", "3_crop_pred.tsv", "3_crop_label.tsv",
        keep_label=0, meaning=("well framed", "badly framed or cut off"),
    ),
    "contrast": ClassifierTask(
        "5_contrast_class", "4_bak_{bak}", "5_contrast_{bak}_predicted", "5_contrast_{bak}_pred.tsv",
        "5_contrast_{bak}_label.tsv", keep_label=0, meaning=("normal contrast", "abnormal contrast"),
        per_background=True,
    ),
    "pose": ClassifierTask(
        "6_pose_class", "5_contrast_{bak}_predicted", "6_pose_{bak}_predicted", "6_pose_{bak}_pred.tsv",
        "6_pose_{bak}_label.tsv", keep_label=0, meaning=("standard head pose", "non-standard head pose"),
        per_background=True,
    ),
}


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


def shared_label_path(ctx: Context, task: ClassifierTask, label_path: Path) -> Optional[Path]:
    """The other background's label file that a per-background stage also learns from, if any.

    Next to an explicit --labels file it is the same name with the other background;
    otherwise it is looked up like the stage's own labels.
    """
    if task.background is None or not ctx.cfg.classifier.share_backgrounds:
        return None
    other = cli.other_background(task.background)
    given = Path(ctx.args.labels) if ctx.args.labels is not None else None
    if given is not None and given.is_file():
        name = given.name.replace(f"_{task.background}_", f"_{other}_")
        path = given.with_name(name) if name != given.name else None
    else:
        path = label_location(ctx, [TASKS[ctx.args.task].for_background(other).labels])
    return path if path is not None and path.is_file() else None


def read_training_images(
    ctx: Context, label_path: Path, shared: Optional[Path]
) -> tuple[list[np.ndarray], list[int]]:
    """Labelled images and labels of a stage: its own, plus those of `shared` (the other
    background's label file, see shared_label_path) with their polarity swapped."""
    c, npy_dir = ctx.cfg.classifier, ctx.workdir / f"{TOTAL_BODY}_npy"
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


def _train_classifier(
    ctx: Context, task: ClassifierTask, label_path: Path, shared: Optional[Path], device
) -> Callable[[Path, str], None]:
    """The training step of `obtain_model`: read the labels, train, save the checkpoint."""
    def train_into(path: Path, wanted_hash: str) -> None:
        c = ctx.cfg.classifier
        images, labels = read_training_images(ctx, label_path, shared)
        prep = preprocess_for(ctx, c.input_height, c.input_width)
        train_idx, val_idx = split_indices(len(images), c.train.val_fraction, c.train.seed, labels)
        pick = lambda idx, seq: [seq[i] for i in idx]  # noqa: E731
        print(f"{task.stage}: {len(train_idx)} training and {len(val_idx)} validation images "
              f"({sum(labels)} with label 1)")
        seed_everything(c.train.seed)
        spec = {"kind": "classifier", "arch": c.arch, "num_outputs": 2}
        model = create_model(spec, pretrained=c.pretrained)
        train_labels = pick(train_idx, labels)
        bg = (ctx.cfg.background.black, ctx.cfg.background.white)
        # a per-background stage only ever sees one polarity (the other background's labels
        # arrive already swapped, see read_training_images): inverting would only add noise
        aug = c.augment if task.background is None else replace(c.augment, invert=0.0)
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
            "task": {"stage": task.stage, "labels": {"0": task.meaning[0], "1": task.meaning[1]},
                     "keep_label": task.keep_label, "label_file": str(label_path)},
            "config_hash": wanted_hash,
        }
        save_trained(path, model, result, meta)

    return train_into


def _decide(prob: float, ok: bool, task: ClassifierTask, threshold: float) -> dict:
    if not ok:
        return {"prob": "", "label": "", "decision": "remove", "reason": "unreadable image"}
    label = int(prob >= threshold)
    keep = label == task.keep_label
    reason = "" if keep else f"{task.meaning[label]} (p={prob:.3f})"
    return {"prob": round(prob, 6), "label": label, "decision": "keep" if keep else "remove", "reason": reason}


def classify_images(model, meta, npy_dir: Path, ids: list[str], task: ClassifierTask, ctx: Context, device) -> pd.DataFrame:
    """Decision rows for `ids` (a batch of image records) with a loaded model."""
    prep = Preprocess(**meta["preprocess"])
    dataset = PredictionSet([npy_dir / f"{i}.npy" for i in ids], prep)
    rows = []
    p = ctx.cfg.predict
    for probs, (index, ok, _) in predict_batches(
        model, dataset, p.batch_size, p.workers, device, ctx.cfg.runtime, postprocess=lambda o: o.softmax(1)[:, 1]
    ):
        for prob, i, good in zip(probs.tolist(), index.tolist(), ok.tolist()):
            rows.append({"Image": ids[i], **_decide(prob, good, task, ctx.cfg.classifier.threshold)})
    return pd.DataFrame(rows, columns=COLUMNS)


def run(ctx: Context) -> None:
    """Train and/or predict one QC classifier stage, as --mode asks."""
    task = TASKS[ctx.args.task].for_background(getattr(ctx.args, "background", None))
    npy_dir, _ = image_folders(ctx.workdir, task.input_prefix)
    if ctx.args.mode != "train" and not npy_dir.is_dir():
        raise HbrError(f"input folder {npy_dir} not found: run the previous stage first")
    ids = list_images(npy_dir)
    if ctx.args.mode != "train" and not ids:
        finish_without_images(ctx, ctx.workdir / task.table, COLUMNS, image_folders(ctx.workdir, task.output_prefix))
        return
    device = stage_device(ctx)
    label_path = label_location(ctx, [task.labels])
    c = ctx.cfg.classifier
    shared = shared_label_path(ctx, task, label_path)
    settings = (task.stage, c.arch, c.input_height, c.input_width, c.pretrained, c.train, c.augment, ctx.cfg.canvas)
    if shared is not None:
        settings += (ctx.cfg.background,)
    loaded = obtain_model(ctx, task.stage, settings, lambda: [label_path] + ([shared] if shared else []),
                          _train_classifier(ctx, task, label_path, shared, device), device)
    if loaded is None:
        return
    model, meta = loaded
    version = f"{meta['config_hash']}-{c.threshold}"
    table = run_chunks(
        ids, ctx.workdir / ".state" / task.stage, version, ctx.cfg.predict.chunk_size,
        lambda chunk: classify_images(model, meta, npy_dir, chunk, task, ctx, device), desc=task.stage,
    )
    write_tsv(ctx.workdir / task.table, table)
    kept = table.loc[table["decision"] == "keep", "Image"].tolist()
    keep_images(kept, task.input_prefix, task.output_prefix, ctx.workdir)
    print(f"{task.stage}: kept {len(kept)} of {len(table)} images -> {ctx.workdir / task.table}, "
          f"{ctx.workdir / (task.output_prefix + '_npy')}")


def main(task: str, argv=None) -> int:
    """Command line of one classifier stage (task: body, crop, contrast or pose)."""
    spec = TASKS[task]

    def add_arguments(parser):
        if spec.per_background:
            cli.add_background_argument(parser)
        cli.add_model_arguments(parser)
        parser.set_defaults(task=task)

    return cli.main(spec.stage, __doc__, add_arguments, run, argv)
