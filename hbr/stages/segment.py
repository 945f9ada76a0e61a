"""Stage 7: one U-Net for the head and six body landmarks, per background.

The network has one output channel per landmark and is trained jointly from LabelMe
files (head polygon, six points as discs). Prediction is one forward pass per image
for all landmarks; each probability map is mapped back to the original image and
saved as a uint8 PNG (probability x 255) in 7_segment_predicted_{landmark}_{bak}/.
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
from hbr.data import PredictionSet, SegmenterSet
from hbr.errors import HbrError
from hbr.files import remove_stale, write_npy, write_png
from hbr.imaging import input_to_original, mask_to_original, swap_background
from hbr.labels import LabelledImage, labelme_files, read_labelme, trainable_labelme_files, unreviewed_note
from hbr.landmarks import HEAD, LANDMARKS, box_iou, check_landmarks
from hbr.masks import box_from_mask
from hbr.models import create_model
from hbr.pipeline import mask_folder, other_background, total_body_npy
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
from hbr.training import seed_everything, split_indices, train

STAGE = pipeline.stage(7)
COLUMNS = ["Image", "status"]


class SegmenterObjective:
    """BCE (point channels weighted) + soft Dice; validation head IoU and point centre error."""

    def __init__(self, landmarks, point_weight: float, miss_penalty: float):
        self.landmarks = tuple(landmarks)
        self.weight = torch.tensor([1.0 if n == HEAD else point_weight for n in self.landmarks])
        self.miss_penalty = miss_penalty  # centre error (input px) charged for a landmark not found

    def loss(self, outputs, targets):
        w = self.weight.to(outputs.device).view(1, -1, 1, 1)
        bce = (F.binary_cross_entropy_with_logits(outputs, targets, reduction="none") * w).mean()
        prob = outputs.sigmoid()
        inter = (prob * targets).sum((2, 3))
        dice = 1 - (2 * inter + 1) / (prob.sum((2, 3)) + targets.sum((2, 3)) + 1)
        return bce + dice.mean()

    def metrics(self, outputs, targets):
        prob = outputs.sigmoid().numpy()
        truth = targets.numpy()
        ious, errors = [], {n: [] for n in self.landmarks if n != HEAD}
        for p, t in zip(prob, truth):
            for c, name in enumerate(self.landmarks):
                pred, true = box_from_mask(p[c], 0.5), box_from_mask(t[c], 0.5)
                if name == HEAD:
                    as_row = lambda b: [b.x, b.y, b.w, b.h] if b is not None else [0, 0, 0, 0]  # noqa: E731
                    ious.append(float(box_iou(np.array([as_row(pred)], float), np.array([as_row(true)], float))[0]))
                elif true is not None:
                    err = self.miss_penalty if pred is None else float(np.hypot(pred.cx - true.cx, pred.cy - true.cy))
                    errors[name].append(err)
        out = {"head_iou": float(np.median(ious)) if ious else float("nan")}
        for name, errs in errors.items():
            out[f"{name}_err_px"] = float(np.median(errs)) if errs else float("nan")
        point_err = float(np.median(np.concatenate([e for e in errors.values() if e]))) if any(errors.values()) else 0.0
        out["point_err_px"] = point_err
        out["score"] = np.nan_to_num(out["head_iou"]) - 0.1 * point_err
        return out


def shared_label_folder(ctx: Context, bak: str, folder: Path) -> Optional[Path]:
    """The other background's LabelMe folder that this background's U-Net also learns from
    (segmenter.share_backgrounds), or None.

    It is `folder` with the background swapped in its 7_segment_* name (labels/7_segment_white
    -> labels/7_segment_black, also in upstream's names), else the other background's folder
    looked up like this one's.
    """
    if not ctx.cfg.segmenter.share_backgrounds:
        return None
    other = other_background(bak)
    swapped = Path(*(part.replace(f"_{bak}", f"_{other}") if part.startswith(STAGE.name) else part
                     for part in folder.parts))
    for candidate in (swapped, label_location(ctx, STAGE.label_names(other))):
        if candidate != folder and candidate.is_dir() and labelme_files(candidate):
            return candidate
    return None


def _read_labelme_folder(folder: Path, workdir: Path) -> list[LabelledImage]:
    """The usable LabelMe files of a folder; a bad file is reported and skipped, and the
    pre-annotations not yet reviewed are left out with one line for the folder."""
    paths, unreviewed = trainable_labelme_files(folder)
    if unreviewed:
        print(unreviewed_note(folder, len(unreviewed)))
    items = []
    for path in paths:
        try:
            items.append(read_labelme(path, [total_body_npy(workdir)]))
        except HbrError as exc:
            print(f"{exc}; file skipped")
    return items


def training_label_files(folder: Path, shared: Optional[Path]) -> list[Path]:
    """The LabelMe files a U-Net trains on (its folder's, then the shared folder's): the retrain
    key covers these only, so pre-annotations written into a label folder, not yet reviewed,
    never make the U-Net retrain."""
    return [path for source in (folder, shared) if source is not None for path in trainable_labelme_files(source)[0]]


def read_training_labels(ctx: Context, folder: Path, shared: Optional[Path]) -> list[LabelledImage]:
    """The labelled images of a U-Net: those of `folder`, plus those of `shared` (the other
    background's folder, see shared_label_folder), all in the polarity the U-Net trains in
    (see model_stage.training_polarity); a file of an image of the other background is
    taken in its true polarity and reported (see background.BackgroundCheck)."""
    if not labelme_files(folder):
        raise HbrError(f"{folder}: no LabelMe .json files")
    bg, bak = ctx.cfg.background, ctx.options.background
    polarity = training_polarity(bak, shared is not None)
    check = BackgroundCheck(bg)

    def in_polarity(items: list[LabelledImage], listed: str, source: Path) -> list[LabelledImage]:
        return [x if check(x.image, listed, x.source.name, source) == polarity
                else replace(x, image=swap_background(x.image, bg.black, bg.white)) for x in items]

    items = in_polarity(_read_labelme_folder(folder, ctx.workdir), bak, folder)
    if shared is not None:
        extra = in_polarity(_read_labelme_folder(shared, ctx.workdir), other_background(bak), shared)
        print(f"{shared}: {len(extra)} images of the other background added; black and white share one "
              f"U-Net, trained in {polarity} polarity (segmenter.share_backgrounds)")
        items += extra
    check.report()
    min_images = ctx.cfg.segmenter.train.min_images
    if len(items) < min_images:
        pooled = f" with those of {shared}" if shared is not None else ""
        raise HbrError(f"{folder}: only {len(items)} usable LabelMe file(s){pooled}; "
                       f"at least {min_images} are needed")
    return items


def _train_segmenter(ctx: Context, folder: Path, shared: Optional[Path]) -> Callable[[Path, str, torch.device], None]:
    """The training step of the stage (see model_stage.Training): read the LabelMe files, train, save the checkpoint."""
    def train_into(path: Path, wanted_hash: str, device: torch.device) -> None:
        s = ctx.cfg.segmenter
        items = read_training_labels(ctx, folder, shared)
        prep = preprocess_for(ctx, s.input_height, s.input_width)
        train_idx, val_idx = split_indices(len(items), s.train.val_fraction, s.train.seed)
        print(f"{folder}: {len(train_idx)} training and {len(val_idx)} validation images")

        def dataset(idx, aug):
            chosen = [items[i] for i in idx]
            return SegmenterSet([x.image for x in chosen], [x.shapes for x in chosen], LANDMARKS,
                                prep, aug, s.train.seed, s.point_radius)

        seed_everything(s.train.seed)
        spec = {"kind": "segmenter", "arch": s.arch, "encoder": s.encoder, "classes": len(LANDMARKS),
                "decoder_channels": s.decoder_channels}
        model = create_model(spec, pretrained=s.pretrained)
        with torch.no_grad():  # points are rare pixels: start their outputs near "absent"
            head_conv = model.segmentation_head[0]
            for c, name in enumerate(LANDMARKS):
                if name != HEAD:
                    head_conv.bias[c] = s.point_bias
        result = train(
            model, dataset(train_idx, s.augment), dataset(val_idx, None),
            SegmenterObjective(LANDMARKS, s.point_weight, miss_penalty=float(s.input_width)),
            s.train, device, ctx.cfg.runtime,
        )
        meta = {
            "spec": spec,
            "preprocess": prep.to_dict(),
            "task": {"stage": STAGE.name, "landmarks": list(LANDMARKS), "label_folder": str(folder),
                     "shared_label_folder": str(shared) if shared is not None else None,
                     "point_radius": s.point_radius},
            "polarity": training_polarity(ctx.options.background, shared is not None),
            "config_hash": wanted_hash,
        }
        save_trained(path, model, result, meta)

    return train_into


def segment_images(model, meta, ctx: Context, npy_dir: Path, ids: list[str], wanted: tuple[str, ...], device,
                   advance: Callable[[int], None] = lambda n: None) -> pd.DataFrame:
    """Write the masks of `wanted` landmarks for a batch of images; one status row per image;
    `advance(n)` counts each finished batch (progress)."""
    bak = ctx.options.background
    prep = prediction_preprocess(ctx, meta)
    channels = [meta["task"]["landmarks"].index(n) for n in wanted]
    paths = [npy_dir / f"{i}.npy" for i in ids]
    save_npy, floor = ctx.cfg.segmenter.save_npy, ctx.cfg.segmenter.mask_floor

    def write(image_id: str, shape: list[int], prob: np.ndarray) -> None:
        placement = prep.placement(*shape)
        full = input_to_original(prob[channels], placement) if save_npy else None
        for k, (name, c) in enumerate(zip(wanted, channels)):
            folder = mask_folder(ctx.workdir, name, bak)
            write_png(folder / f"{image_id}.png", mask_to_original(prob[c], placement, floor), row_filter="none")
            if full is not None:
                write_npy(folder / f"{image_id}.npy", full[k].astype(np.float16))

    def write_batch(probs: torch.Tensor, fields: list) -> list[dict]:
        index, ok, shapes = fields
        rows = []
        for prob, i, good, shape in zip(probs.numpy(), index.tolist(), ok.tolist(), shapes.tolist()):
            if good:
                write(ids[i], shape, prob)
            rows.append({"Image": ids[i], "status": "ok" if good else "unreadable image"})
        return rows

    rows = []
    p = ctx.cfg.predict
    for batch_rows in predict_batches(model, PredictionSet(paths, prep), p.segmenter_batch_size, p.workers, device,
                                      ctx.cfg.runtime, postprocess=torch.sigmoid, finish=write_batch):
        rows += batch_rows
        advance(len(batch_rows))
    return pd.DataFrame(rows, columns=COLUMNS)


def run(ctx: Context) -> None:
    """Train and/or predict the landmark U-Net of one background, as --mode asks."""
    bak = ctx.options.background
    wanted = check_landmarks(ctx.options.landmarks or LANDMARKS)
    folder = label_location(ctx, STAGE.label_names(bak), folder_of_files=True)
    shared = shared_label_folder(ctx, bak, folder)
    s = ctx.cfg.segmenter
    training = Training(
        settings=(STAGE.name, training_values(s), ctx.cfg.canvas, ctx.cfg.background),
        labels=folder,
        label_files=lambda: training_label_files(folder, shared),
        train_into=_train_segmenter(ctx, folder, shared),
        shared_with=shared_model_files(ctx, shared is not None),
    )

    def finish(table: pd.DataFrame) -> None:
        done = set(table.loc[table["status"] == "ok", "Image"])
        for name in wanted:
            folder_out = mask_folder(ctx.workdir, name, bak)
            folder_out.mkdir(parents=True, exist_ok=True)
            remove_stale(folder_out, {f"{i}{ext}" for i in done for ext in (".png", ".npy")})
        print(f"{STAGE.name}: masks of {len(done)} {bak}-background images for {', '.join(wanted)} -> "
              f"{mask_folder(ctx.workdir, '{landmark}', bak)}")

    prediction = Prediction(
        columns=COLUMNS, version=f"{'-'.join(wanted)}-{int(s.save_npy)}-{s.mask_floor}",
        predict_chunk=lambda model, meta, npy_dir, chunk, device, advance: segment_images(
            model, meta, ctx, npy_dir, chunk, wanted, device, advance),
        finish=finish, empty_folders=lambda: [mask_folder(ctx.workdir, name, bak) for name in wanted],
    )
    run_model_stage(ctx, training, prediction)


def main(argv=None) -> int:
    """Command line of stage 7."""
    return cli.entry(STAGE, argv)
