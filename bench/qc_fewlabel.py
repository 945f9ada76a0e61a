#!/usr/bin/env python3
"""QC classifiers trained from a user's few labels, scored on large held-out phantom sets (issue 27).

    python bench/qc_fewlabel.py [--variants default,alt] [--seeds 0,1,2] [--positives 5,15]
                                [--n 1500] [--defect-rate 0.2] [--train-share 0.3]
                                [--negatives-per-positive 10] [--config configs/demo.yaml]
                                [--device cpu|cuda|auto] [--set KEY=VALUE ...]
                                [--out bench/results/qc_fewlabel/] [--workdir DIR] [--prune]
                                [--table-only]

For every (variant, seed) a phantom set (hbr.phantom, `variant`, defect rate and train
share as given) is generated and stage 1 converts it, once. For every (variant, seed,
positives) cell:

1. Few-label files in the labels/README.md format, drawn with the seed from the train
   split (the candidates and labels of hbr.phantom.label_tables): per classifier stage
   `positives` images with label 1 and `negatives-per-positive` times as many with label
   0; for the per-background stages 5 and 6 the draw is over both backgrounds together
   and split into the black and white files by the images' background (the stages learn
   from both files, classifier.share_backgrounds), so both classes are present in the
   pooled labels while a white file may hold only label 0, as a user's would. The draws
   of 5 positives are the first 5 of the 15.
2. Every classifier stage trained with `--mode train` through its real script
   (subprocess, the config and --set overrides given). Training reads the labelled
   images from 1_Total_Body_npy by name, so no earlier stage runs.
3. Each model predicts, with `--mode predict --models`, exactly its clean held-out set:
   the held-out (split == test) images without another defect (stage 2: images of
   participants without any defect, bone and tissue; stage 3: bone images without a
   contrast, pose or size defect; stages 5 and 6: bone images of their background without
   another defect). Scores per model: balanced accuracy (hbr.evaluate), ROC AUC of the
   probabilities, good images lost and bad images kept, and per defect kind (alt
   variant) the share of defects caught.
4. The QC chain: the share of good held-out bone images (no defect at all) that any of
   stages 2, 3, 5, 6 removes or stage 4 (run on them once per set) does not route to
   their background. This is the chain's result for those images: every stage sees each
   of them (they are in every clean set), and a decision depends on the image only.

One JSON line per finished cell is appended to OUT/results.jsonl; a re-run skips the
cells already there with the same settings (n, rates, config, overrides, ...), and
within an unfinished cell the models already trained. Change the code under test (the
training recipe), and give another --out (or move results.jsonl) to measure it afresh.
The table (per model x variant x positives: mean and min over seeds) is printed and
written to bench/results/qc_fewlabel_<date>.txt (or --table). Not run by the tests.

Sizes: with --n 1500 --defect-rate 0.2 --train-share 0.3 the held-out split holds >= 52
images of every QC defect on each background (so >= 50 positives for every model, the
white ones included: one miss moves a balanced accuracy by <= 1 point), and the train
split >= 150 defect-free participants for the label-0 draws of 15 positives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from datetime import date
from functools import partial
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hbr import evaluate, pipeline  # noqa: E402
import runlog  # noqa: E402  (bench/runlog.py, beside this script)
from runlog import append_result, git_commit, stage_args  # noqa: E402

PROG = "qc_fewlabel"
run_script = partial(runlog.run_script, prog=PROG)
read_results = partial(runlog.read_results, prog=PROG)
from hbr.files import link_or_copy, write_json, write_text, write_tsv  # noqa: E402
from hbr.ledger import read_table  # noqa: E402
from hbr.phantom import QC_DEFECTS, VARIANTS, generate, label_tables  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "qc_fewlabel"
RESULTS = "results.jsonl"
SIZE_DEFECTS = (*QC_DEFECTS, "oversize")  # every truth column of a defect
MIN_HELD_OUT_POSITIVES = 50
GOAL_CHAIN_LOSS = 0.02  # SPEC 7: <= 2 % of good images lost over the QC chain


# ---------------------------------------------------------------- helpers
def csv_list(kind):
    """argparse type: a comma-separated list of `kind`."""
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def classifier_runs(only: Optional[list[str]] = None) -> list[tuple[pipeline.Stage, Optional[str]]]:
    """(stage, background) of every classifier model, in chain order; of the run names in `only` if given."""
    return [(s, bak) for s in pipeline.CLASSIFIERS.values()
            for bak in (pipeline.BACKGROUNDS if s.per_background else (None,))
            if only is None or s.run_name(bak) in only]


def settings_of(args: argparse.Namespace) -> dict:
    """What makes a cell's result: a cell is redone when any of these differs."""
    models = {"models": args.models} if args.models else {}  # absent when all: earlier results still match
    return {**models, "n": args.n, "defect_rate": args.defect_rate, "train_share": args.train_share,
            "negatives_per_positive": args.negatives_per_positive, "config": str(args.config),
            "config_sha256": hashlib.sha256(args.config.read_bytes()).hexdigest()[:16], "overrides": args.set}


def settings_key(settings: dict) -> str:
    """A short name of the settings for folder names."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def link_images(ids, source: Path, target: Path) -> None:
    """Hard-link the npy of `ids` from `source` into `target` (a stage's input folder)."""
    target.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        link_or_copy(source / f"{image_id}.npy", target / f"{image_id}.npy")


# ---------------------------------------------------------------- one set: phantom + stage 1
def prepare_set(args: argparse.Namespace, variant: str, seed: int, root: Path) -> tuple[Path, pd.DataFrame]:
    """The set's folder (phantom, stage 1) and its typed ground truth; made unless already there."""
    marker = root / "set.json"
    wanted = {"variant": variant, "seed": seed, "n": args.n, "defect_rate": args.defect_rate,
              "train_share": args.train_share}
    stage1 = root / "stage1"
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        if root.exists():
            shutil.rmtree(root)  # another or unfinished set: ours only (named by the settings)
        start = time.perf_counter()
        summary = generate(root / "phantom", args.n, seed, variant=variant, defect_rate=args.defect_rate,
                           train_share=args.train_share)
        made = time.perf_counter() - start
        seconds = run_script(pipeline.stage(1).script, ["--input", str(root / "phantom" / "zips"),
                                                         *stage_args(args, stage1)], root / "logs" / "stage1.log")
        print(f"  set {variant} seed {seed}: phantom of {summary.zips} participants in {made:.0f} s "
              f"({summary.counts}); stage 1 in {seconds:.0f} s")
        write_json(marker, wanted)
    truth = pd.read_csv(root / "phantom" / "ground_truth.tsv", sep="\t", keep_default_na=False)
    return root, truth


def clean_held_out(truth: pd.DataFrame, task: str, bak: Optional[str]) -> pd.DataFrame:
    """Held-out images a model is scored on: without a defect other than its own (see the docstring)."""
    column = evaluate.QC_TRUTH[task][0]
    others = [d for d in SIZE_DEFECTS if d != column]
    rows = truth[(truth["split"] == "test") & (truth[others] == 0).all(axis=1)]
    if column != "is_bone":
        rows = rows[rows["kind"] == "bone"]
    return rows if bak is None else rows[rows["background"] == bak]


def good_held_out_bone(truth: pd.DataFrame) -> pd.DataFrame:
    """Held-out bone images without any defect: what the QC chain must keep."""
    return truth[(truth["split"] == "test") & (truth["kind"] == "bone") & (truth[list(SIZE_DEFECTS)] == 0).all(axis=1)]


def background_decisions(args: argparse.Namespace, set_root: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """Stage 4's table for the good held-out bone images (no model: once per set)."""
    stage, work = pipeline.stage(4), set_root / "stage4_good"
    table = work / stage.table_name()
    if not table.exists():
        link_images(good_held_out_bone(truth)["Image"], pipeline.total_body_npy(set_root / "stage1"),
                    pipeline.image_folders(work, stage.input())[0])
        run_script(stage.script, stage_args(args, work), set_root / "logs" / "stage4_good.log")
    return read_table(table, ["Image", "decision"])


# ---------------------------------------------------------------- one cell: labels, training, scores
def few_labels(truth: pd.DataFrame, seed: int, positives: int, per_positive: int, folder: Path) -> dict:
    """Write the cell's label files; {file: [label-0 count, label-1 count]}.

    The draw for each stage depends on the seed and the stage only, so 5 positives are the
    first 5 of 15 and the label-0 images the first of the same order.
    """
    candidates = label_tables(truth)  # the phantom's own label files: every usable train image
    counts = {}
    for stage in pipeline.CLASSIFIERS.values():
        baks = pipeline.BACKGROUNDS if stage.per_background else (None,)
        pool = pd.concat([candidates[stage.label_names(b)[0]].assign(_file=stage.label_names(b)[0]) for b in baks],
                         ignore_index=True).sort_values("File_Name", kind="stable", ignore_index=True)
        rng = np.random.default_rng([seed, 27, stage.number])
        ones = pool[pool["Label"] == 1]
        zeros = pool[pool["Label"] == 0]
        ones = ones.iloc[rng.permutation(len(ones))]
        zeros = zeros.iloc[rng.permutation(len(zeros))]
        want0 = per_positive * positives
        if len(ones) < positives or len(zeros) < want0:
            print(f"  warning: {stage.name}: only {len(ones)} label-1 and {len(zeros)} label-0 candidates in the "
                  f"train split for {positives} and {want0}: raise --n or --train-share")
        chosen = pd.concat([ones.iloc[:positives], zeros.iloc[:want0]])
        for name in dict.fromkeys(pool["_file"]):
            mine = chosen[chosen["_file"] == name]
            if mine.empty:  # a stage needs a readable file: one more label-0 image of this background
                spare = zeros[(zeros["_file"] == name) & ~zeros["File_Name"].isin(chosen["File_Name"])]
                mine = spare.iloc[:1]
            mine = mine.sort_values("File_Name")
            write_tsv(folder / name, mine[["File_Name", "Label", "File_Name_npy"]])
            counts[name] = [int((mine["Label"] == 0).sum()), int((mine["Label"] == 1).sum())]
    return counts


def train_models(args: argparse.Namespace, cell: Path, set_root: Path, key: str) -> tuple[float, dict]:
    """Train every classifier model of the cell (skipping those already trained with these settings);
    (seconds, best validation metrics per model)."""
    work = cell / "train"
    total_body = pipeline.total_body_npy(work)
    if not total_body.exists():  # training reads labelled images from here by name: the set's stage 1
        work.mkdir(parents=True, exist_ok=True)
        total_body.symlink_to(pipeline.total_body_npy(set_root / "stage1").resolve(), target_is_directory=True)
    seconds, metrics = 0.0, {}
    for stage, bak in classifier_runs(args.models):
        run = stage.run_name(bak)
        done = work / pipeline.MODELS_DIR / run / "bench_trained.json"
        if not (done.exists() and json.loads(done.read_text()).get("settings") == key):
            took = run_script(stage.script, [*([bak] if bak else []), "--mode", "train", "--labels",
                                             str(cell / "labels"), *stage_args(args, work)],
                              cell / "logs" / f"train_{run}.log")
            write_json(done, {"settings": key, "seconds": round(took, 1)})
            print(f"    trained {run} in {took:.0f} s")
        seconds += json.loads(done.read_text())["seconds"]
        best = json.loads((done.parent / "metrics.json").read_text()).get("best", {})
        metrics[run] = {k: v for k, v in best.items() if isinstance(v, (int, float, str))}
    return seconds, metrics


def predict_clean(args: argparse.Namespace, cell: Path, set_root: Path, truth: pd.DataFrame) -> tuple[float, dict]:
    """Each model predicts its clean held-out set; (seconds, {run name: decision table})."""
    seconds, tables = 0.0, {}
    models = cell / "train" / pipeline.MODELS_DIR
    for stage, bak in classifier_runs(args.models):
        run, work = stage.run_name(bak), cell / "eval" / stage.run_name(bak)
        table_path = work / stage.table_name(bak)
        ids = clean_held_out(truth, stage.task, bak)["Image"]
        if not table_path.exists():
            link_images(ids, pipeline.total_body_npy(set_root / "stage1"),
                        pipeline.image_folders(work, stage.input(bak))[0])
            seconds += run_script(stage.script, [*([bak] if bak else []), "--mode", "predict", "--models", str(models),
                                                 *stage_args(args, work)], cell / "logs" / f"predict_{run}.log")
        tables[run] = read_table(table_path, ["Image", "prob", "decision"])
        if len(tables[run]) != len(ids):
            sys.exit(f"qc_fewlabel: {table_path} lists {len(tables[run])} images, not the {len(ids)} it was given")
    return seconds, tables


def score_model(table: pd.DataFrame, truth: pd.DataFrame, stage: pipeline.Stage) -> dict:
    """Balanced accuracy, AUC, good lost and bad kept of one model on its clean held-out set."""
    from sklearn.metrics import roc_auc_score  # only when scoring

    column, unscored = evaluate.QC_TRUTH[stage.task]
    should_keep, kept = evaluate.decision_truth(table, truth, column, stage.keep_label, "test", unscored)
    merged = table.merge(truth, on="Image", how="inner")
    label1 = pd.to_numeric(merged[column]).to_numpy() == 1
    prob = pd.to_numeric(merged["prob"], errors="coerce").fillna(0.5).to_numpy()  # unreadable: undecided
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = float(roc_auc_score(label1, prob)) if 0 < label1.sum() < len(label1) else math.nan
    out = {"balanced_accuracy": evaluate.score_decisions(table, truth, column, stage.keep_label, "test", unscored),
           "auc": auc, "good": int(should_keep.sum()), "good_lost": int((should_keep & ~kept).sum()),
           "bad": int((~should_keep).sum()), "bad_kept": int((~should_keep & kept).sum())}
    if "defect_kind" in merged.columns and stage.task != "body":
        removed = (merged["decision"] == "remove").to_numpy()
        kinds = {}
        for kind in sorted(set(merged.loc[label1, "defect_kind"]) - {""}):
            mine = label1 & (merged["defect_kind"] == kind).to_numpy()
            kinds[kind] = [int((mine & removed).sum()), int(mine.sum())]  # caught, all
        out["kinds"] = kinds
    return out


def chain_loss(tables: dict, stage4: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Good held-out bone images lost over the QC chain, and by which stage."""
    good = good_held_out_bone(truth)[["Image", "background"]]
    lost = pd.Series(False, index=good["Image"].to_numpy())
    by_stage = {}
    for stage, bak in classifier_runs():
        run = stage.run_name(bak)
        mine = good if bak is None else good[good["background"] == bak]
        decision = tables[run].set_index("Image")["decision"].reindex(mine["Image"])
        removed = (decision != "keep").to_numpy()  # not predicted counts as lost
        lost[mine["Image"].to_numpy()] |= removed
        by_stage[run] = int(removed.sum())
    routed = stage4.set_index("Image")["decision"].reindex(good["Image"]).to_numpy()
    wrong = routed != good["background"].to_numpy()
    lost[good["Image"].to_numpy()] |= wrong
    by_stage[pipeline.stage(4).name] = int(wrong.sum())
    return {"good": len(good), "lost": int(lost.sum()), "by_stage": by_stage}


def held_out_positives(truth: pd.DataFrame) -> dict:
    """Label-1 (stage 2: label-0) images in each model's clean held-out set: the measurement's size."""
    out = {}
    for stage, bak in classifier_runs():
        rows = clean_held_out(truth, stage.task, bak)
        column = evaluate.QC_TRUTH[stage.task][0]
        out[stage.run_name(bak)] = int((rows[column] != stage.keep_label).sum())
    return out


def run_cell(args, variant: str, seed: int, positives: int, set_root: Path, truth: pd.DataFrame, key: str) -> dict:
    """Labels, training, predictions and scores of one cell; its result line."""
    cell = args.workdir / f"cells_{key}" / f"{variant}_s{seed}_p{positives}"
    start = time.perf_counter()
    labels = few_labels(truth, seed, positives, args.negatives_per_positive, cell / "labels")
    train_s, metrics = train_models(args, cell, set_root, key)
    predict_s, tables = predict_clean(args, cell, set_root, truth)
    stage4 = None if args.models else background_decisions(args, set_root, truth)
    models = {stage.run_name(bak): score_model(tables[stage.run_name(bak)], truth, stage)
              for stage, bak in classifier_runs(args.models)}
    # the chain needs every model's decisions on the good images
    chain = None if args.models else chain_loss(tables, stage4, truth)
    return {"variant": variant, "seed": seed, "positives": positives, "models": models,
            "chain": chain, "labels": labels, "training": metrics,
            "held_out_bad": held_out_positives(truth),
            "seconds": {"train": round(train_s, 1), "predict": round(predict_s, 1),
                        "cell": round(time.perf_counter() - start, 1)}}


# ---------------------------------------------------------------- the table
def _fmt(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.{digits}f} {np.min(values):.{digits}f}"


def table_lines(records: list[dict], header: str) -> list[str]:
    """The result table: per model x variant x positives, mean and min over seeds."""
    lines = [header, f"goals (SPEC 7): each model >= {evaluate.GOAL_BALANCED_ACCURACY} balanced accuracy; "
                     f"<= {100 * GOAL_CHAIN_LOSS:g} % of good images lost over the QC chain", "",
             f"{'model':24} {'variant':8} {'pos':>3} {'seeds':>5}  {'bal.acc mean min':>16}  {'AUC mean min':>12}  "
             f"{'good lost mean% max':>19}  {'bad kept mean% max':>18}  {'scored good/bad':>15}"]
    groups: dict = {}
    for r in records:
        groups.setdefault((r["variant"], r["positives"]), []).append(r)
    order = sorted(groups, key=lambda k: (list(VARIANTS).index(k[0]) if k[0] in VARIANTS else 99, k[1]))
    present = {run for r in records for run in r["models"]}
    for stage, bak in classifier_runs(sorted(present)):
        run = stage.run_name(bak)
        for variant, positives in order:
            rs = [r["models"][run] for r in groups[(variant, positives)] if run in r["models"]]
            if not rs:
                continue
            ba, auc = [m["balanced_accuracy"] for m in rs], [m["auc"] for m in rs]
            lost = [100 * m["good_lost"] / max(m["good"], 1) for m in rs]
            kept = [100 * m["bad_kept"] / max(m["bad"], 1) for m in rs]
            flag = "" if min(ba) >= evaluate.GOAL_BALANCED_ACCURACY else "  < goal"
            lines.append(f"{run:24} {variant:8} {positives:>3} {len(rs):>5}  {_fmt(ba):>16}  {_fmt(auc):>12}  "
                         f"{np.mean(lost):>8.1f} {max(m['good_lost'] for m in rs):>10d}  "
                         f"{np.mean(kept):>8.1f} {max(m['bad_kept'] for m in rs):>9d}  "
                         f"{min(m['good'] for m in rs):>7d}/{min(m['bad'] for m in rs):<7d}{flag}")
    if any(r["chain"] for r in records):
        lines += ["", f"{'QC chain: good held-out bone images lost':44} {'mean %':>7} {'max %':>6} {'images':>7}"]
    for variant, positives in order:
        chain = [r["chain"] for r in groups[(variant, positives)] if r["chain"]]
        if not chain:
            continue
        shares = [100 * c["lost"] / max(c["good"], 1) for c in chain]
        worst = max(chain, key=lambda c: c["lost"] / max(c["good"], 1))
        culprits = ", ".join(f"{k} {v}" for k, v in worst["by_stage"].items() if v)
        flag = "" if max(shares) <= 100 * GOAL_CHAIN_LOSS else "  > goal"
        lines.append(f"  {variant:8} {positives:>3} positives {'':23} {np.mean(shares):>7.1f} {max(shares):>6.1f} "
                     f"{min(c['good'] for c in chain):>7d}{flag}" + (f"  (worst seed: {culprits})" if culprits else ""))
    kinds = [(v, p, r) for (v, p) in order for r in groups[(v, p)] if any("kinds" in m for m in r["models"].values())]
    if kinds:
        lines += ["", "defects caught per kind (share of held-out defects of that kind removed; "
                      "mean and min over seeds):"]
        cells: dict = {}
        for variant, positives, r in kinds:
            for run, m in r["models"].items():
                for kind, (caught, total) in m.get("kinds", {}).items():
                    cells.setdefault((run, variant, positives, kind), []).append(caught / max(total, 1))
        for (run, variant, positives, kind), shares in sorted(cells.items()):
            lines.append(f"  {run:24} {variant:8} {positives:>3} {kind:12} {_fmt(shares, 2)}")
    times = [r["seconds"]["cell"] for rs in groups.values() for r in rs]
    lines += ["", f"time per cell (labels, training, prediction): mean {np.mean(times) / 60:.1f} min, "
                  f"max {max(times) / 60:.1f} min over {len(times)} cells"]
    return [line.rstrip() for line in lines]


def main() -> None:
    """Run the missing cells of the grid, then print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=csv_list(str), default=["default", "alt"], help="phantom variants")
    parser.add_argument("--seeds", type=csv_list(int), default=[0, 1, 2])
    parser.add_argument("--positives", type=csv_list(int), default=[5, 15], help="label-1 images per stage")
    parser.add_argument("--negatives-per-positive", type=int, default=10, help="label-0 images per label-1 image")
    parser.add_argument("--n", type=int, default=1500, help="phantom participants per set (2 images each)")
    parser.add_argument("--defect-rate", type=float, default=0.2, help="share of participants per QC defect")
    parser.add_argument("--train-share", type=float, default=0.3, help="share of participants in the train split")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (passed to every stage)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to every stage (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of results.jsonl")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hbr-bench" / "qc_fewlabel",
                        help="phantom sets, stage outputs and models (large; kept for resuming)")
    parser.add_argument("--table", type=Path, default=None,
                        help="where to write the table (default bench/results/qc_fewlabel_<date>.txt)")
    parser.add_argument("--models", type=csv_list(str), default=None,
                        help="train and score only these models (run names, e.g. 3_crop_class,6_pose_class_black); "
                             "no QC-chain result then")
    parser.add_argument("--prune", action="store_true", help="delete a set's images once all its cells are done")
    parser.add_argument("--table-only", action="store_true", help="only print and write the table of results.jsonl")
    args = parser.parse_args()
    runs = [stage.run_name(bak) for stage, bak in classifier_runs()]
    if args.models and set(args.models) - set(runs):
        parser.error(f"unknown model(s) {', '.join(sorted(set(args.models) - set(runs)))}; valid: {', '.join(runs)}")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    args.config, args.workdir = args.config.resolve(), args.workdir.resolve()
    settings = settings_of(args)
    key = settings_key(settings)
    results_path = args.out / RESULTS
    header = (f"bench/qc_fewlabel.py: variants {','.join(args.variants)}, seeds {','.join(map(str, args.seeds))}, "
              f"positives {','.join(map(str, args.positives))} (+ {args.negatives_per_positive}x label 0); "
              f"n={args.n}, defect rate {args.defect_rate}, train share {args.train_share}; config "
              f"{os.path.relpath(args.config, REPO_ROOT)}; overrides {' '.join(args.set) or 'none'}; "
              f"device {args.device}; code {git_commit()}\n"
              "each model predicted directly on its held-out (split test) images without another defect; "
              "mean and min over seeds")
    print(header)
    wanted = [(v, s, p) for v in args.variants for s in args.seeds for p in args.positives]
    have = lambda: {(r["variant"], r["seed"], r["positives"]): r  # noqa: E731
                    for r in read_results(results_path) if r.get("settings") == settings}
    if not args.table_only:
        for variant in args.variants:
            for seed in args.seeds:
                todo = [p for p in args.positives if (variant, seed, p) not in have()]
                # a set depends on these only: other configs or label counts reuse it
                set_root = (args.workdir / "sets" /
                            f"{variant}_s{seed}_n{args.n}_r{args.defect_rate:g}_t{args.train_share:g}")
                if todo:
                    set_root, truth = prepare_set(args, variant, seed, set_root)
                    sizes = held_out_positives(truth)
                    small = {k: v for k, v in sizes.items() if v < MIN_HELD_OUT_POSITIVES}
                    print(f"  set {variant} seed {seed}: held-out defects per model {sizes}"
                          + (f"; fewer than {MIN_HELD_OUT_POSITIVES}: {small} (raise --n)" if small else ""))
                for positives in todo:
                    print(f"  cell {variant} seed {seed} positives {positives}: labels, training, prediction ...")
                    record = run_cell(args, variant, seed, positives, set_root, truth, key)
                    record.update(settings=settings, device=args.device, code=git_commit(), date=str(date.today()))
                    append_result(results_path, record)
                    ba = ", ".join(f"{k} {m['balanced_accuracy']:.3f}" for k, m in record["models"].items())
                    chain = record["chain"]
                    print(f"    done in {record['seconds']['cell'] / 60:.1f} min: {ba}"
                          + (f"; chain lost {chain['lost']}/{chain['good']}" if chain else ""))
                if args.prune and set_root.exists():
                    shutil.rmtree(set_root)  # our own set folder: regenerated if a later run needs it
    records = [r for k, r in have().items() if k in set(wanted)]
    if not records:
        sys.exit(f"qc_fewlabel: no finished cells with these settings in {results_path}")
    lines = table_lines(records, header)
    print("\n".join(lines))
    table = args.table or REPO_ROOT / "bench" / "results" / f"qc_fewlabel_{date.today():%Y%m%d}.txt"
    write_text(table, "\n".join(lines) + "\n")
    print(f"table -> {table}; results -> {results_path}")


if __name__ == "__main__":
    main()
