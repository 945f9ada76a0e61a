"""Pick the images worth labelling next for one stage, from a work directory.

    python -m hbr.labelling.pick STAGE [black|white] --workdir WORK [--n 50] [--labels DIR]

STAGE is 2, 3, 5, 6 (QC classifiers) or 7 (landmarks). Candidates are the images that
reach the stage (its input folder), or stage 1's images while an earlier stage has not
run yet; images already in the stage's label file or folder are never picked.

- No model output for the stage yet: a seeded random sample spread over the image
  population (background, image size and brightness strata), so rare defects have a chance
  to appear.
- The stage has run (its table holds each image's probability): mostly the images whose
  probability is nearest the decision threshold, plus about 20 % random ones so the labels
  stay representative.
- Stage 7 after stage 8 has measured: images whose landmarks failed, then anatomically
  implausible ones (shoulders above the head, ankles above the hips, left and right far
  apart in height, ratios far outside the run's own distribution), then random ones.

The pick list goes to WORKDIR/labelling/pick_{stage}.tsv (Image, stage, reason, prob);
label files are never touched. Then label: QC stages with the labelling page
(`python -m hbr.labelling.page --workdir WORK --pick THAT.tsv`), stage 7 with LabelMe on the
pre-annotations (`python -m hbr.labelling.preannotate BAK --workdir WORK --pick THAT.tsv`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from hbr import pipeline
from hbr.pipeline import Stage

PROG = "python -m hbr.labelling.pick"
PICK_COLUMNS = ["Image", "stage", "background", "reason", "prob"]
RANDOM_SHARE = 0.2  # random images among uncertainty picks: the label set stays representative
OUTLIER_MAD = 5.0  # robust z-score (median absolute deviations) beyond which a ratio is implausible
# left and right landmarks this far apart in height, as a share of the body height in pixels
ASYMMETRY = 0.05
PICK_DIR = "labelling"


def pick_path(workdir: Path, stage: Stage, bak: Optional[str]) -> Path:
    """Where the pick list of a stage (and background) goes."""
    return workdir / PICK_DIR / f"pick_{stage.run_name(bak)}.tsv"


def read_pick(path: Path, stages: Optional[Sequence[int]] = None) -> list[dict]:
    """The rows of a pick list (this module's output, or one a user wrote): Image, and when
    present reason, stage (one of `stages` when given) and prob; each image once, in order."""
    import re

    from hbr.errors import HbrError
    from hbr.ledger import read_table

    table = read_table(Path(path), ["Image"])
    rows, seen = [], set()
    for line, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        image = re.sub(r"\.(npy|png|dcm|json)$", "", str(row["Image"]).strip())
        if not image or image in seen:
            continue
        seen.add(image)
        stage_text = str(row.get("stage", "")).strip()
        if stage_text and stages is not None and stage_text not in {str(n) for n in stages}:
            raise HbrError(f"{path} line {line}: stage {stage_text!r} is not one of {', '.join(map(str, stages))}")
        prob_text = str(row.get("prob", "")).strip()
        try:
            prob = float(prob_text) if prob_text else None
        except ValueError:
            raise HbrError(f"{path} line {line}: prob {prob_text!r} is not a number") from None
        rows.append({"Image": image, "reason": str(row.get("reason", "")).strip(),
                     "stage": int(stage_text) if stage_text else None, "prob": prob})
    return rows


# --------------------------------------------------------------------------- what is labelled


def labelled_images(stage: Stage, bak: Optional[str], labels_dir: Path) -> set[str]:
    """Images that already have a label for `stage`: rows of its TSV, or LabelMe files of its folders."""
    if stage.kind == pipeline.CLASSIFIER:
        from hbr.labelling.labelfile import read_label_file

        return set(read_label_file(labels_dir / stage.label_names(bak)[0]).labels)
    found = set()
    for name in stage.label_names(bak):
        folder = labels_dir / name
        if folder.is_dir():
            found |= {p.stem for p in folder.glob("*.json")}
    return found


# --------------------------------------------------------------------------- candidates


def candidate_images(workdir: Path, stage: Stage, bak: Optional[str], cfg) -> tuple[list[str], str]:
    """(images that reach `stage`, where they come from). While the stage's input folder does
    not exist (an earlier stage has no model yet) they are stage 1's images, of background
    `bak` for a per-background stage."""
    from hbr.files import list_images
    from hbr.labelling.page import check_workdir, image_background

    check_workdir(workdir)
    folder = pipeline.image_folders(workdir, stage.input(bak))[0]
    if folder.is_dir():
        return list_images(folder), folder.name
    first = pipeline.total_body_npy(workdir)
    images = list_images(first)
    if bak is not None:
        images = [i for i in images if image_background(first / f"{i}.npy", cfg)[0] == bak]
    return images, f"{first.name} (stage {pipeline.producer(stage).number} has not run)"


def image_strata(npy: Path, cfg) -> tuple:
    """Simple statistics that spread a random sample: background, size, brightness tercile."""
    import numpy as np

    from hbr.labelling.page import image_background

    background, _ = image_background(npy, cfg)
    try:
        image = np.load(npy, mmap_mode="r", allow_pickle=False)
        shape = image.shape[:2]
        level = float(np.asarray(image[::8, ::8], dtype=np.float64).mean())
    except (OSError, ValueError):
        return ("unreadable",)
    return background or "other", shape, level


def spread_sample(images: Sequence[str], strata: Mapping[str, tuple], n: int, seed: int) -> list[str]:
    """A seeded sample of `n` images taken in turn from each stratum (background, size,
    brightness tercile within the background), so small strata are not left out."""
    import numpy as np

    rng = np.random.default_rng(seed)
    levels = [strata[i][2] for i in images if len(strata[i]) == 3]
    cuts = np.quantile(levels, [1 / 3, 2 / 3]) if levels else []
    groups: dict[tuple, list[str]] = {}
    for image in images:
        s = strata[image]
        key = (s[0], s[1], int(np.searchsorted(cuts, s[2]))) if len(s) == 3 else s
        groups.setdefault(key, []).append(image)
    queues = [list(rng.permutation(members)) for _, members in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    queues = [queues[k] for k in rng.permutation(len(queues))]
    picked: list[str] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(str(queue.pop()))
    return picked


# --------------------------------------------------------------------------- classifier stages


def uncertainty(prob: float, threshold: float) -> float:
    """Distance of a probability from the decision threshold in logits (0: a coin toss)."""
    eps = 1e-6
    logit = lambda p: math.log(max(p, eps) / max(1 - p, eps))  # noqa: E731
    return abs(logit(prob) - logit(threshold))


def uncertain_first(probs: Mapping[str, float], threshold: float, n: int, seed: int) -> list[tuple[str, str]]:
    """(image, reason) of the n most uncertain images, with about RANDOM_SHARE of them random."""
    import numpy as np

    order = sorted(probs, key=lambda i: (uncertainty(probs[i], threshold), i))
    n = min(n, len(order))
    n_random = int(round(RANDOM_SHARE * n)) if n >= 5 else 0
    chosen = [(i, f"uncertain (p={probs[i]:.3f}, threshold {threshold:.3f})") for i in order[: n - n_random]]
    rest = order[n - n_random:]
    rng = np.random.default_rng(seed)
    chosen += [(str(i), "random (keeps the labels representative)")
               for i in rng.permutation(rest)[:n_random]]
    return chosen


def stage_probabilities(workdir: Path, stage: Stage, bak: Optional[str]) -> dict[str, float]:
    """Image -> P(label 1) from the stage's decision table ({} when the stage has not run)."""
    import pandas as pd

    from hbr.ledger import read_table

    path = workdir / stage.table_name(bak)
    if not path.is_file():
        return {}
    table = read_table(path, ["Image", "prob"])
    probs = pd.to_numeric(table["prob"], errors="coerce")
    return {i: float(p) for i, p in zip(table["Image"], probs) if p == p}


def model_threshold(workdir: Path, stage: Stage, bak: Optional[str], models: Optional[Path]) -> float:
    """The decision threshold stored in the stage's model (0.5 when none is stored)."""
    import json

    root = models if models is not None else workdir / pipeline.MODELS_DIR
    metrics = root / stage.run_name(bak) / "metrics.json"
    try:
        return float(json.loads(metrics.read_text()).get("threshold", 0.5))
    except (OSError, ValueError):
        return 0.5


# --------------------------------------------------------------------------- stage 7


def implausible(row: Mapping[str, float], medians: Mapping[str, float], spreads: Mapping[str, float]) -> str:
    """Why a measured image's landmarks look anatomically wrong ('' when they do not).

    `row` holds the segment table's numbers (centres, head box, ratios); `medians` and
    `spreads` (median absolute deviations) are the run's own, per ratio.
    """
    get = lambda k: row.get(k, float("nan"))  # noqa: E731
    reasons = []
    head_bottom = get("head_y") + get("head_h")
    shoulders = (get("shoulder_left_cy") + get("shoulder_right_cy")) / 2
    hips = (get("hip_left_cy") + get("hip_right_cy")) / 2
    ankles = (get("ankle_left_cy") + get("ankle_right_cy")) / 2
    if shoulders < head_bottom - get("head_h") / 2:
        reasons.append("shoulders above the head")
    if hips <= shoulders:
        reasons.append("hips above the shoulders")
    if ankles <= hips:
        reasons.append("ankles above the hips")
    height = get("height_px")
    if height > 0:
        for part in ("shoulder", "hip", "ankle"):
            if abs(get(f"{part}_left_cy") - get(f"{part}_right_cy")) > ASYMMETRY * height:
                reasons.append(f"{part}s far apart in height")
    for ratio, median in medians.items():
        spread = spreads.get(ratio, 0.0)
        if spread > 0 and abs(get(ratio) - median) > OUTLIER_MAD * spread:
            reasons.append(f"{ratio} {get(ratio):.3f} far from the run's median {median:.3f}")
    return "; ".join(reasons)


def landmark_problems(workdir: Path, bak: str) -> dict[str, str]:
    """Image -> why its landmarks need a look (failed or implausible), from segment_table_{bak}.tsv."""
    import pandas as pd

    from hbr.ledger import read_table
    from hbr.phenotypes import RATIOS

    path = pipeline.segment_table_path(workdir, bak)
    if not path.is_file():
        return {}
    table = read_table(path, ["Image", "status"])
    numbers = table.drop(columns=["Image", "status"]).apply(pd.to_numeric, errors="coerce")
    ratios = [r for r in RATIOS if r in numbers.columns]
    medians = numbers[ratios].median().to_dict()
    spreads = (numbers[ratios] - numbers[ratios].median()).abs().median().to_dict()
    problems = {}
    for image, status, (_, row) in zip(table["Image"], table["status"], numbers.iterrows()):
        if "missing:" in status:
            problems[image] = f"landmarks failed ({status})"
        else:
            why = implausible(row.to_dict(), medians, spreads)
            if why:
                problems[image] = f"implausible: {why}"
    return problems


# --------------------------------------------------------------------------- the pick


def pick(workdir: Path, stage: Stage, bak: Optional[str], labels_dir: Path, n: int, seed: int, cfg,
         models: Optional[Path] = None) -> list[dict]:
    """The pick list rows (see PICK_COLUMNS) of `n` images for `stage`, most useful first."""
    images, source = candidate_images(workdir, stage, bak, cfg)
    done = labelled_images(stage, bak, labels_dir)
    images = [i for i in images if i not in done]
    if not images:
        return []
    rows: list[dict] = []
    chosen: list[tuple[str, str]] = []
    probs: dict[str, float] = {}
    if stage.kind == pipeline.CLASSIFIER:
        probs = {i: p for i, p in stage_probabilities(workdir, stage, bak).items() if i in set(images)}
        if probs:
            chosen = uncertain_first(probs, model_threshold(workdir, stage, bak, models), n, seed)
    else:
        problems = landmark_problems(workdir, bak)
        chosen = [(i, problems[i]) for i in images if i in problems][:n]
    if len(chosen) < n:  # no model output yet, or too few uncertain or failed images
        have = {i for i, _ in chosen}
        rest = [i for i in images if i not in have]
        npy = pipeline.total_body_npy(workdir)
        strata = {i: image_strata(npy / f"{i}.npy", cfg) for i in rest}
        why = "random, spread over background, size and brightness" + ("" if chosen or probs else
                                                                        f" (no model output yet; from {source})")
        chosen += [(i, why) for i in spread_sample(rest, strata, n - len(chosen), seed)]
    for image, reason in chosen:
        prob = probs.get(image)
        rows.append({"Image": image, "stage": stage.number, "background": bak or "", "reason": reason,
                     "prob": "" if prob is None else round(prob, 6)})
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line of the pick command."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("stage", type=int, choices=[s.number for s in pipeline.STAGES if s.has_model],
                        help="the stage to pick for: 2, 3, 5, 6 (QC) or 7 (landmarks)")
    parser.add_argument("background", nargs="?", choices=pipeline.BACKGROUNDS,
                        help="background, for the per-background stages 5, 6 and 7")
    parser.add_argument("--workdir", type=Path, default=Path("work"), help="work directory (stage 1 has run)")
    parser.add_argument("--labels", type=Path, default=None, help="label folder (default: the repo's labels/)")
    parser.add_argument("--models", type=Path, default=None, help="trained models (default: WORKDIR/models)")
    parser.add_argument("--n", type=int, default=50, help="how many images to pick")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random picks")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (background values)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m hbr.labelling.pick`: write the pick list of one stage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stage = pipeline.stage(args.stage)
    if stage.per_background != (args.background is not None):
        parser.error(f"stage {stage.number} " + ("needs a background (black or white)" if stage.per_background
                                                 else "takes no background"))
    if args.n < 1:
        parser.error("--n must be at least 1")
    from hbr.cli import DEFAULT_CONFIG, DEFAULT_LABELS, call_reporting_errors
    from hbr.config import load_config
    from hbr.files import write_tsv_rows

    workdir = args.workdir.resolve()
    labels_dir = args.labels or DEFAULT_LABELS

    def run() -> int:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
        rows = pick(workdir, stage, args.background, labels_dir, args.n, args.seed, cfg, args.models)
        if not rows:
            print(f"{PROG}: nothing to pick: every image that reaches stage {stage.number} is labelled")
            return 0
        out = pick_path(workdir, stage, args.background)
        write_tsv_rows(out, PICK_COLUMNS, ([row[c] for c in PICK_COLUMNS] for row in rows))
        kinds: dict[str, int] = {}
        for row in rows:
            kind = row["reason"].split(" ")[0].split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        print(f"{PROG}: {len(rows)} images for stage {stage.number} "
              f"({', '.join(f'{n} {k}' for k, n in kinds.items())}) -> {out}")
        bak = f" {args.background}" if args.background else ""
        if stage.kind == pipeline.CLASSIFIER:
            print(f"next: python -m hbr.labelling.page --workdir {workdir} --stage {stage.number} --pick {out}")
        else:
            print(f"next: python -m hbr.labelling.preannotate{bak} --workdir {workdir} --pick {out}, "
                  f"then open the folder it names in LabelMe")
        return 0

    status, result = call_reporting_errors(PROG, run)
    return status or int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
