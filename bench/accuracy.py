#!/usr/bin/env python3
"""Accuracy of every model against the phantom ground truth, on held-out images (SPEC 7).

    python bench/accuracy.py [--n 600] [--seed 0] [--config configs/demo.yaml]
                             [--workdir DIR] [--device cpu|cuda|auto] [--set KEY=VALUE ...]
                             [--models DIR] [--score-only]

1. Generates a phantom set of --n participants (hbr.phantom.generate; its label files
   cover split == "train" images only) into WORKDIR/phantom (reused when it exists for
   the same --n and --seed).
2. Runs the real pipeline, 0_pipeline.sh, on its zips with its labels and the config:
   every QC classifier and both segmenters are trained (or reused when the labels and
   config are unchanged), then every stage predicts every image. The pipeline's own
   output goes to WORKDIR/logs/bench_pipeline.log; only its stage lines are echoed.
   With --models DIR (e.g. a demo's models on a set of another seed) nothing is trained:
   every stage predicts with those models.
3. Scores held-out images (split == "test") with hbr.evaluate: the balanced accuracy
   of each classifier stage on all held-out images in its own decision table (a stage
   sees only the images earlier stages kept), and the head box IoU, landmark centre
   error (original pixels) and LHR relative error medians on the held-out images that
   reached stage 8. Goals are printed beside the values. Not run by the tests.

Training is not time-capped in configs/demo.yaml, so a busy machine makes the run
slower but does not change the scores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hbr import evaluate  # noqa: E402
from hbr.files import read_tsv  # noqa: E402
from hbr.phantom import generate  # noqa: E402
from hbr.ledger import read_table  # noqa: E402
from hbr.pipeline import segment_table_path  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def make_phantom(folder: Path, n: int, seed: int) -> Path:
    """The phantom set of n participants in `folder`, generated unless already there."""
    marker = folder / "bench_phantom.json"
    wanted = {"n": n, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted and (folder / "ground_truth.tsv").exists():
        print(f"phantom: reusing {folder} (n={n}, seed={seed})")
        return folder
    if folder.exists() and any(folder.iterdir()):
        sys.exit(f"accuracy: {folder} holds another data set; give another --workdir")
    start = time.perf_counter()
    summary = generate(folder, n, seed)
    marker.write_text(json.dumps(wanted))
    print(f"phantom: {summary.zips} zips, {summary.images} Total Body images in {time.perf_counter() - start:.0f} s; "
          f"bone images with defects: {summary.counts}")
    return folder


def check_labels_are_train_only(phantom: Path, truth: pd.DataFrame) -> None:
    """Print how many images each label file holds and fail if any is a held-out image."""
    split = dict(zip(truth["Image"], truth["split"]))
    lines = []
    for tsv in sorted((phantom / "labels").glob("*.tsv")):
        names = read_tsv(tsv)["File_Name"].tolist()
        leaked = [x for x in names if split.get(x) != "train"]
        if leaked:
            sys.exit(f"accuracy: {tsv} lists {len(leaked)} image(s) outside the train split, e.g. {leaked[0]}")
        lines.append(f"{tsv.stem} {len(names)}")
    for folder in sorted(p for p in (phantom / "labels").iterdir() if p.is_dir()):
        stems = [p.stem for p in folder.glob("*.json")]
        if any(split.get(x) != "train" for x in stems):
            sys.exit(f"accuracy: {folder} has a LabelMe file of a held-out image")
        lines.append(f"{folder.name} {len(stems)}")
    print("training labels (train split only): " + ", ".join(lines))


def run_pipeline(workdir: Path, phantom: Path, config: Path, device: str, models: Optional[Path] = None,
                 overrides: Sequence[str] = (), repo: Path = REPO_ROOT) -> float:
    """0_pipeline.sh of `repo` on the phantom set (training on its labels, or predicting with
    `models`); its output to a log; returns the wall time."""
    log = workdir / "logs" / "bench_pipeline.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    source = ["--models", str(models)] if models else ["--labels", str(phantom / "labels")]
    command = ["bash", str(repo / "0_pipeline.sh"), "--input", str(phantom / "zips"), *source,
               "--config", str(config), "--workdir", str(workdir), "--device", device,
               *(arg for value in overrides for arg in ("--set", value))]
    print("pipeline: " + " ".join(command))
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**__import__("os").environ, "PYTHON": sys.executable})
        for line in proc.stdout:
            fh.write(line)
            if line.startswith("== ") or "error" in line.lower():
                print("  " + line.rstrip(), flush=True)
        code = proc.wait()
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        sys.exit("accuracy: the pipeline failed (log " + str(log) + "):\n" + "\n".join(tail))
    return time.perf_counter() - start


def training_summary(workdir: Path) -> list[str]:
    """One line per trained model: best validation metrics and epochs run."""
    lines = []
    for metrics in sorted((workdir / "models").glob("*/metrics.json")):
        data = json.loads(metrics.read_text())
        best = {k: v for k, v in data.get("best", {}).items() if k in
                ("balanced_accuracy", "auc", "head_iou", "point_err_px", "epoch")}
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in best.items())
        lines.append(f"  {metrics.parent.name}: {len(data.get('history', []))} epochs; best validation: {shown}")
    return lines


def score(workdir: Path, truth: pd.DataFrame) -> list[str]:
    """Held-out scores of every decision table and the landmarks, with goals."""
    lines, decisions = [], {}
    for name, (column, keep_when, unscored) in evaluate.DECISION_TRUTH.items():
        path = workdir / name
        if not path.exists():
            lines.append(f"  {name}: no decision table")
            continue
        table = read_table(path, ["Image", "decision"])
        should_keep, kept = evaluate.decision_truth(table, truth, column, keep_when, "test", unscored)
        stage = Path(name).stem.removesuffix("_pred")
        decisions[stage] = (evaluate.score_decisions(table, truth, column, keep_when, "test", unscored),
                            len(should_keep))
        wrong_removed = int((should_keep & ~kept).sum())
        wrong_kept = int((~should_keep & kept).sum())
        lines.append(f"  {stage}: {len(should_keep)} held-out images seen ({int(should_keep.sum())} to keep, "
                     f"{int((~should_keep).sum())} to remove); wrongly removed {wrong_removed}, wrongly kept {wrong_kept}"
                     + (f"; {unscored} images not scored" if unscored else ""))
    tables = [read_table(p, ["Image"]) for p in (segment_table_path(workdir, b) for b in ("black", "white")) if p.exists()]
    landmarks = evaluate.score_landmarks(pd.concat(tables, ignore_index=True), truth, "test") if tables else None
    if landmarks is not None:
        per = landmarks["per_image"]
        iou = per["head_iou"].to_numpy()
        lines.append(f"  landmarks: {landmarks['n_images']} held-out images reached stage 8; head IoU "
                     f"min {np.min(iou):.2f}, 10th percentile {np.percentile(iou, 10):.2f}")
    return evaluate.format_scores(landmarks, decisions, "held-out images") + ["details:"] + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="phantom participants (2 Total Body images each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="work directory (default: TMP/hbr-bench/accuracy_n{N}_s{SEED}; kept for reuse)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--score-only", action="store_true", help="score an existing finished run")
    parser.add_argument("--models", type=Path, default=None,
                        help="predict with these trained models (e.g. demo_work/models) instead of training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.gettempdir()) / "hbr-bench" / f"accuracy_n{args.n}_s{args.seed}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"accuracy benchmark: n={args.n} seed={args.seed} config={args.config} device={args.device} workdir={workdir}")

    phantom = make_phantom(workdir / "phantom", args.n, args.seed)
    truth = read_table(phantom / "ground_truth.tsv", ["Image", "split"])
    held_out = truth[truth["split"] == "test"]
    print(f"ground truth: {len(truth)} images, {len(held_out)} held out (split == test)")
    check_labels_are_train_only(phantom, truth)
    if not args.score_only:
        seconds = run_pipeline(workdir, phantom, args.config, args.device, args.models, args.set)
        print(f"pipeline ({'prediction with ' + str(args.models) if args.models else 'training + prediction'} "
              f"of every stage): {seconds / 60:.1f} min")
    print("training (validation split of the training labels):")
    for line in training_summary(workdir):
        print(line)
    print("held-out accuracy:")
    for line in score(workdir, truth):
        print(line)


if __name__ == "__main__":
    main()
