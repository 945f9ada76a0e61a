"""Scoring against the phantom ground truth (SPEC 7): landmarks, LHR and QC decisions.

Used by the demo and the benchmarks. Only held-out images (split == "test") are scored
by default. A landmark the pipeline did not find counts as a failure (IoU 0, infinite
error), so a model that finds nothing cannot score well by skipping images.

`python -m hbr.evaluate --workdir DIR [--truth TSV]` prints every score of a finished run.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from hbr import pipeline
from hbr.errors import HbrError
from hbr.landmarks import LANDMARKS, box_iou
from hbr.pipeline import BACKGROUNDS

# SPEC 7 quality bars on held-out phantom images (demo config)
GOAL_BALANCED_ACCURACY = 0.98
GOAL_HEAD_IOU = 0.90
GOAL_CENTRE_ERROR_PX = 3.0
GOAL_LHR_RELATIVE_ERROR = 0.03

# classifier task -> (truth column that is 1 for label 1, truth column of images not scored).
# Oversize images are not scored for framing: the canvas crops them, so a head near their
# top edge is really cut off in what the model sees, and stage 4 removes every oversize
# image anyway.
QC_TRUTH = {
    "body": ("is_bone", None),
    "crop": ("bad_crop", "oversize"),
    "contrast": ("bad_contrast", None),
    "pose": ("bad_pose", None),
}


def decision_truth_columns() -> dict[str, tuple[str, int, Optional[str]]]:
    """Decision table (relative to the work directory) -> (truth column, its value for an image
    to keep, truth column of images not scored), for every classifier stage and background."""
    out = {}
    for stage in pipeline.CLASSIFIERS.values():
        column, unscored = QC_TRUTH[stage.task]
        for bak in BACKGROUNDS if stage.per_background else (None,):
            out[stage.table_name(bak)] = (column, stage.keep_label, unscored)
    return out


DECISION_TRUTH = decision_truth_columns()


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def _held_out(ground_truth: pd.DataFrame, split: Optional[str]) -> pd.DataFrame:
    if split is None:
        return ground_truth
    if "split" not in ground_truth.columns:
        raise HbrError("ground truth has no 'split' column; pass split=None to score every image")
    return ground_truth[ground_truth["split"] == split]


def _found(frame: pd.DataFrame, landmark: str) -> np.ndarray:
    """True where the pipeline found the landmark (-1 or empty geometry means not found)."""
    w, h = _numbers(frame, f"{landmark}_w"), _numbers(frame, f"{landmark}_h")
    return (w > 0) & (h > 0)


def score_landmarks(
    segment_table: pd.DataFrame, ground_truth: pd.DataFrame, split: Optional[str] = "test"
) -> dict:
    """Head-box IoU, centre errors (original pixels) and LHR relative error per image, with medians.

    `segment_table` is a stage-8 table (or hbr_table rows), `ground_truth` the phantom's
    ground_truth.tsv; they are joined on Image, and only ground-truth rows of `split`
    (None: all) are scored. Returns {"per_image": DataFrame, "n_images", "head_iou_median",
    "centre_error_median_px" (all seven centres pooled), "centre_error_median_px_by_landmark",
    "missing_by_landmark", "lhr_relative_error_median", "n_lhr"}. A missing prediction
    counts as IoU 0 and infinite error.
    """
    needed = ["Image", "LHR"] + [f"head_{f}" for f in "xywh"] + [f"{lm}_{c}" for lm in LANDMARKS for c in ("cx", "cy")]
    for name, frame in (("segment table", segment_table), ("ground truth", ground_truth)):
        absent = [c for c in needed if c not in frame.columns]
        if absent:
            raise HbrError(f"{name} lacks column(s) {', '.join(absent)}")
    truth = _held_out(ground_truth, split)
    merged = segment_table.merge(truth, on="Image", how="inner", suffixes=("", "_true"))
    per_image = pd.DataFrame({"Image": merged["Image"].to_numpy()})

    def truth_col(name: str) -> str:
        return f"{name}_true" if f"{name}_true" in merged.columns else name

    pred_box = np.stack([_numbers(merged, f"head_{f}") for f in "xywh"], axis=1) if len(merged) else np.zeros((0, 4))
    true_box = (
        np.stack([_numbers(merged, truth_col(f"head_{f}")) for f in "xywh"], axis=1) if len(merged) else np.zeros((0, 4))
    )
    per_image["head_iou"] = box_iou(pred_box, true_box)

    by_landmark, missing = {}, {}
    for lm in LANDMARKS:
        found = _found(merged, lm) if len(merged) else np.zeros(0, bool)
        dx = _numbers(merged, f"{lm}_cx") - _numbers(merged, truth_col(f"{lm}_cx"))
        dy = _numbers(merged, f"{lm}_cy") - _numbers(merged, truth_col(f"{lm}_cy"))
        error = np.where(found, np.hypot(dx, dy), np.inf)
        per_image[f"{lm}_error_px"] = error
        by_landmark[lm] = _median(error)
        missing[lm] = int((~found).sum())

    pred_lhr, true_lhr = _numbers(merged, "LHR"), _numbers(merged, truth_col("LHR"))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(pred_lhr - true_lhr) / true_lhr
    rel = np.where(np.isnan(pred_lhr), np.inf, rel)  # no LHR predicted: a failure
    scorable = np.isfinite(true_lhr) & (true_lhr > 0)  # images whose truth has an LHR
    per_image["LHR_relative_error"] = np.where(scorable, rel, np.nan)

    pooled = np.concatenate([per_image[f"{lm}_error_px"].to_numpy() for lm in LANDMARKS]) if len(merged) else np.zeros(0)
    return {
        "per_image": per_image,
        "n_images": len(merged),
        "head_iou_median": _median(per_image["head_iou"].to_numpy()),
        "centre_error_median_px": _median(pooled),
        "centre_error_median_px_by_landmark": by_landmark,
        "missing_by_landmark": missing,
        "lhr_relative_error_median": _median(rel[scorable]),
        "n_lhr": int(scorable.sum()),
    }


def _median(values: np.ndarray) -> float:
    """Median counting inf (a failure) as large; NaN when there is nothing to score."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else math.nan


def decision_truth(
    decision_table: pd.DataFrame,
    ground_truth: pd.DataFrame,
    truth_column: str,
    keep_when: Union[int, str],
    split: Optional[str] = "test",
    unscored: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(should keep, kept) per image of the decision table that has a ground-truth row of `split`,
    leaving out images whose `unscored` truth column (when the table has it) is 1."""
    truth = _held_out(ground_truth, split)
    if truth_column not in truth.columns:
        raise HbrError(f"ground truth has no column {truth_column!r}")
    if unscored is not None and unscored in truth.columns:
        truth = truth[pd.to_numeric(truth[unscored], errors="coerce") != 1]
    merged = decision_table[["Image", "decision"]].merge(truth[["Image", truth_column]], on="Image", how="inner")
    column = merged[truth_column]
    if isinstance(keep_when, (int, float)) and not isinstance(keep_when, bool):
        should_keep = pd.to_numeric(column, errors="coerce") == keep_when
    else:
        should_keep = column.astype(str).str.strip() == str(keep_when)
    kept = merged["decision"] != "remove"  # keep, or stage 4's black|white
    return should_keep.to_numpy(), kept.to_numpy()


def score_decisions(
    decision_table: pd.DataFrame,
    ground_truth: pd.DataFrame,
    truth_column: str,
    keep_when: Union[int, str],
    split: Optional[str] = "test",
    unscored: Optional[str] = None,
) -> float:
    """Balanced accuracy of a stage's keep/remove decisions against the truth.

    An image should be kept when its `truth_column` equals `keep_when` (e.g.
    ("is_bone", 1), ("bad_crop", 0)). Only images the stage saw and that have a
    ground-truth row of `split` (and not 1 in column `unscored`) are scored; NaN
    when there are none.
    """
    from sklearn.metrics import balanced_accuracy_score

    should_keep, kept = decision_truth(decision_table, ground_truth, truth_column, keep_when, split, unscored)
    if len(should_keep) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class only in the truth: sklearn warns, the score is still defined
        return float(balanced_accuracy_score(should_keep, kept))


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def format_scores(
    landmark_scores: Optional[Mapping] = None,
    decision_scores: Optional[Mapping[str, Union[float, tuple[float, int]]]] = None,
    images: str = "held-out images",
) -> list[str]:
    """Human lines for the scores, each with its SPEC 7 goal and 'ok' or 'MISSED'.

    `decision_scores` maps a stage name to its balanced accuracy, or to (accuracy, n images);
    `images` names what was scored ("held-out images", or "images" when every split was).
    """
    lines = []
    for stage, value in (decision_scores or {}).items():
        accuracy, n = value if isinstance(value, tuple) else (value, None)
        on = f" on {n} {images}" if n is not None else ""
        if math.isnan(accuracy):
            lines.append(f"{stage} balanced accuracy: no {images} to score")
            continue
        lines.append(
            f"{stage} balanced accuracy {accuracy:.3f} (goal >= {GOAL_BALANCED_ACCURACY:.2f}){on} "
            f"{_verdict(accuracy >= GOAL_BALANCED_ACCURACY)}"
        )
    if landmark_scores:
        s = landmark_scores
        n = s["n_images"]
        if n == 0:
            lines.append(f"landmarks: no {images} reached stage 8")
            return lines
        iou, err, lhr = s["head_iou_median"], s["centre_error_median_px"], s["lhr_relative_error_median"]
        lines.append(
            f"head box IoU median {iou:.2f} (goal >= {GOAL_HEAD_IOU:.2f}) on {n} {images} {_verdict(iou >= GOAL_HEAD_IOU)}"
        )
        lines.append(
            f"landmark centre error median {err:.2f} px (goal <= {GOAL_CENTRE_ERROR_PX:g} px) on {n} {images} "
            f"{_verdict(err <= GOAL_CENTRE_ERROR_PX)}"
        )
        per = ", ".join(f"{lm} {v:.1f}" for lm, v in s["centre_error_median_px_by_landmark"].items())
        lines.append(f"  per landmark (median px): {per}")
        missing = {lm: k for lm, k in s["missing_by_landmark"].items() if k}
        if missing:
            lines.append("  not found: " + ", ".join(f"{lm} {k}" for lm, k in missing.items()))
        if math.isnan(lhr):
            lines.append(f"LHR relative error: none of the {images} has a true LHR")
        else:
            lines.append(
                f"LHR relative error median {100 * lhr:.1f} % (goal <= {100 * GOAL_LHR_RELATIVE_ERROR:g} %) "
                f"on {s['n_lhr']} {images} {_verdict(lhr <= GOAL_LHR_RELATIVE_ERROR)}"
            )
    return lines


def evaluate_workdir(workdir: str | Path, split: Optional[str] = "test", truth_path: str | Path | None = None) -> list[str]:
    """Score every decision table and segment table of a run against the ground truth; the lines to print.

    `truth_path` defaults to DIR/ground_truth.tsv.
    """
    from hbr.ledger import read_table  # the run's table reader (HbrError on bad files)

    workdir = Path(workdir)
    truth_path = Path(truth_path) if truth_path is not None else workdir / "ground_truth.tsv"
    if not truth_path.exists():
        raise HbrError(f"{truth_path}: not found (it is written by the phantom generator, python -m hbr.phantom)")
    truth = read_table(truth_path, ["Image"])
    decisions: dict[str, tuple[float, int]] = {}
    for name, (column, keep_when, unscored) in DECISION_TRUTH.items():
        path = workdir / name
        if path.exists():
            table = read_table(path, ["Image", "decision"])
            n = len(decision_truth(table, truth, column, keep_when, split, unscored)[0])
            score = score_decisions(table, truth, column, keep_when, split, unscored)
            decisions[Path(name).stem.removesuffix("_pred")] = (score, n)
    segments = [pipeline.segment_table_path(workdir, bak) for bak in BACKGROUNDS]
    tables = [read_table(p, ["Image"]) for p in segments if p.exists()]
    landmarks = score_landmarks(pd.concat(tables, ignore_index=True), truth, split) if tables else None
    return format_scores(landmarks, decisions, "held-out images" if split == "test" else "images")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m hbr.evaluate --workdir DIR [--truth TSV] [--all]`: print the scores of a run."""
    parser = argparse.ArgumentParser(prog="python -m hbr.evaluate", description="Score a run against the phantom ground truth.")
    parser.add_argument("--workdir", type=Path, default=Path("work"))
    parser.add_argument("--truth", type=Path, default=None, help="ground-truth table (default: WORKDIR/ground_truth.tsv)")
    parser.add_argument("--all", action="store_true", help="score every image, not only split == test")
    args = parser.parse_args(argv)
    try:
        for line in evaluate_workdir(args.workdir, None if args.all else "test", args.truth):
            print(line)
    except HbrError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
