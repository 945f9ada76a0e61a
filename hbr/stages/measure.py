"""Stage 8: landmark boxes, centres and HBR phenotypes per background; the whole-run table and QC report.

`8_cal_segment.py {black,white} --workdir DIR` measures every image of
DIR/6_pose_{bak}_predicted_npy/ from its stage-7 masks and writes
DIR/8_segment_result/segment_table_{bak}.tsv. It then rebuilds
DIR/8_segment_result/hbr_table.tsv (every image of dcm_table.tsv exactly once, with the
stage that excluded it) from whatever per-background tables exist, checks that no image
was lost between stages, and writes the QC report to DIR/8_segment_result/report/.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import pandas as pd

from hbr import cli
from hbr.errors import HbrError
from hbr.files import list_images, read_tsv, write_tsv, write_tsv_rows
from hbr.landmarks import LANDMARKS, Box
from hbr.measure import box_from_mask, geometry_cells, geometry_columns, read_mask
from hbr.parallel import map_in_order
from hbr.phenotypes import measure, phenotype_columns

STAGE = "8_cal_segment"
RESULT_DIR = "8_segment_result"
DCM_TABLE = "dcm_table.tsv"
HBR_TABLE = "hbr_table.tsv"
SUMMARY_TABLE = "1_summary.tsv"
ERRORS_TABLE = "1_errors.tsv"
BACKGROUNDS = cli.BACKGROUNDS

NONE = "none"  # excluded_by of an image kept by every stage and measured
NOT_MEASURED = "not_measured"  # kept so far, but a later stage (or stage 8) has not seen it yet
REMOVE = "remove"
KEEP = "keep"

# Plausible PatientSize range (metres); outside it the value is most likely in another
# unit or a typo, and scaling every length by it would give nonsense centimetres.
HEIGHT_RANGE_M = (0.3, 3.0)
CENTRE_DECIMALS = 3
PHENOTYPE_DECIMALS = 6


# --------------------------------------------------------------------------- tables


def read_table(path: Path, required: Sequence[str], required_only: bool = False) -> pd.DataFrame:
    """A TSV of the work directory with its required columns, or HbrError naming the file.

    With `required_only` the other columns are not read: whole-run tables are large.
    """
    try:
        table = read_tsv(path, required if required_only else None)
    except FileNotFoundError:
        raise HbrError(f"{path}: not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HbrError(f"{path}: not a readable tab-separated table ({reason})") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        has = read_tsv(path).columns if required_only else table.columns
        raise HbrError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(has)})")
    return table


def result_dir(workdir: Path) -> Path:
    """DIR/8_segment_result."""
    return workdir / RESULT_DIR


def segment_table_path(workdir: Path, bak: str) -> Path:
    """DIR/8_segment_result/segment_table_{bak}.tsv."""
    return result_dir(workdir) / f"segment_table_{bak}.tsv"


def read_dcm_table(workdir: Path) -> pd.DataFrame:
    """dcm_table.tsv (stage 1), every cell as text."""
    path = workdir / DCM_TABLE
    if not path.exists():
        raise HbrError(f"{path}: not found; run 1_dcm2img.py first")
    return read_table(path, ["Image", "height"])


@dataclass(frozen=True)
class Verdict:
    """One image's row of a decision table."""

    decision: str  # keep|remove; stage 4: black|white|remove
    reason: str
    background: str = ""  # stage 4 only: black|white|other


@dataclass(frozen=True)
class StageTable:
    """The decision table of one QC stage (for one background), or None verdicts if the stage has not run."""

    stage: str  # the value of excluded_by for an image this stage removed
    background: str  # "" before the black/white split
    path: Path
    verdicts: Optional[dict[str, Verdict]]
    duplicates: tuple[str, ...] = ()

    @property
    def ran(self) -> bool:
        return self.verdicts is not None

    @property
    def label(self) -> str:
        return f"{self.stage} {self.background}".strip()

    def seen(self) -> set[str]:
        return set(self.verdicts or ())

    def kept(self, bak: Optional[str] = None) -> set[str]:
        """Images kept (stage 4: sent to background `bak`, or to either when None)."""
        return {
            image
            for image, v in (self.verdicts or {}).items()
            if v.decision != REMOVE and (bak is None or v.decision == bak)
        }


def read_stage_table(path: Path, stage: str, background: str = "", decisions=(KEEP, REMOVE)) -> StageTable:
    """A decision table (Image, ..., decision, reason); a missing file means the stage has not run."""
    if not path.exists():
        return StageTable(stage, background, path, None)
    columns = ["Image", "decision", "reason"] + (["background"] if stage == "4_background_class" else [])
    table = read_table(path, columns, required_only=True)
    bad = sorted(set(table["decision"]) - set(decisions))
    if bad:
        raise HbrError(f"{path}: unknown decision(s) {', '.join(map(repr, bad))}; expected {', '.join(decisions)}")
    verdicts: dict[str, Verdict] = {}
    shared: dict[Verdict, Verdict] = {}  # most images share a verdict ("keep", ""): one object each
    duplicates = []
    background_col = table["background"] if "background" in table.columns else [""] * len(table)
    for image, decision, reason, bg in zip(table["Image"], table["decision"], table["reason"], background_col):
        if image in verdicts:
            duplicates.append(image)
            continue  # the first row wins; the accounting check reports the duplicate
        verdict = Verdict(decision, reason, bg if stage == "4_background_class" else "")
        verdicts[image] = shared.setdefault(verdict, verdict)
    return StageTable(stage, background, path, verdicts, tuple(duplicates))


@dataclass(frozen=True)
class RunState:
    """Everything the whole-run table and the accounting check are built from."""

    workdir: Path
    dcm: pd.DataFrame
    body: StageTable
    crop: StageTable
    background: StageTable
    contrast: Mapping[str, StageTable]
    pose: Mapping[str, StageTable]
    measured: Mapping[str, Optional[pd.DataFrame]]  # bak -> segment table (None: stage 8 not run for bak)
    errors: Optional[int] = None  # rows of 1_errors.tsv
    summary: Optional[pd.DataFrame] = None


def read_segment_table(workdir: Path, bak: str) -> Optional[pd.DataFrame]:
    """The Image, geometry, phenotype and status columns of segment_table_{bak}.tsv as text, or
    None when stage 8 has not run for `bak`."""
    path = segment_table_path(workdir, bak)
    if not path.exists():
        return None
    required = ["Image", "status"] + geometry_columns() + phenotype_columns()
    try:
        return read_table(path, required, required_only=True)
    except HbrError as exc:
        raise HbrError(f"{exc}; re-run 8_cal_segment.py {bak}") from None


def load_run_state(workdir: Path) -> RunState:
    """Read dcm_table and every decision/segment table that exists (HbrError for a malformed one)."""
    errors_path = workdir / ERRORS_TABLE
    summary_path = workdir / SUMMARY_TABLE
    return RunState(
        workdir=workdir,
        dcm=read_dcm_table(workdir),
        body=read_stage_table(workdir / "2_class_pred.tsv", "2_body_class"),
        crop=read_stage_table(workdir / "3_crop_pred.tsv", "3_crop_class"),
        background=read_stage_table(
            workdir / "4_background.tsv", "4_background_class", decisions=BACKGROUNDS + (REMOVE,)
        ),
        contrast={
            bak: read_stage_table(workdir / f"5_contrast_{bak}_pred.tsv", "5_contrast_class", bak)
            for bak in BACKGROUNDS
        },
        pose={bak: read_stage_table(workdir / f"6_pose_{bak}_pred.tsv", "6_pose_class", bak) for bak in BACKGROUNDS},
        measured={bak: read_segment_table(workdir, bak) for bak in BACKGROUNDS},
        errors=len(read_table(errors_path, [])) if errors_path.exists() else None,
        summary=read_table(summary_path, []) if summary_path.exists() else None,
    )


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class MeasureJob:
    """What measuring one image needs: its masks and the DICOM values that scale them."""

    image: str
    masks: Mapping[str, Optional[Path]]  # landmark -> mask file; None: landmark not segmented
    shape: Optional[tuple[int, int]] = None  # (Rows, Columns) from dcm_table, to check mask sizes
    height_m: Optional[float] = None
    spacing_mm: Optional[tuple[float, float]] = None
    notes: tuple[str, ...] = ()  # status parts known before measuring (no height, ...)


def parse_number(text: object) -> Optional[float]:
    """A finite number from a table cell, else None (empty, text, NaN)."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def height_from_cell(text: object) -> tuple[Optional[float], Optional[str]]:
    """(PatientSize in metres or None, status note when it cannot be used)."""
    value = parse_number(text)
    if value is None or value <= 0:
        return None, "no height"
    low, high = HEIGHT_RANGE_M
    if not low <= value <= high:
        return None, f"implausible height {value:g} m"
    return value, None


def spacing_from_cells(x: object, y: object) -> Optional[tuple[float, float]]:
    """(x, y) pixel spacing in mm when both are positive numbers."""
    sx, sy = parse_number(x), parse_number(y)
    if sx is None or sy is None or sx <= 0 or sy <= 0:
        return None
    return sx, sy


def shape_from_cells(rows: object, cols: object) -> Optional[tuple[int, int]]:
    """(Rows, Columns) when both are positive integers."""
    r, c = parse_number(rows), parse_number(cols)
    if r is None or c is None or r <= 0 or c <= 0:
        return None
    return int(r), int(c)


def make_job(image: str, dcm_row: Optional[Mapping[str, str]], mask_dirs: Mapping[str, Optional[Path]]) -> MeasureJob:
    """The measuring job of one image, from its dcm_table row (None when dcm_table lacks it)."""
    masks = {lm: (None if folder is None else folder / f"{image}.png") for lm, folder in mask_dirs.items()}
    if dcm_row is None:
        return MeasureJob(image, masks, notes=("not in dcm_table.tsv", "no height", "no pixel spacing"))
    height_m, height_note = height_from_cell(dcm_row.get("height"))
    spacing = spacing_from_cells(dcm_row.get("spacing_mm_x"), dcm_row.get("spacing_mm_y"))
    notes = tuple(n for n in (height_note, None if spacing else "no pixel spacing") if n)
    shape = shape_from_cells(dcm_row.get("Rows"), dcm_row.get("Columns"))
    return MeasureJob(image, masks, shape, height_m, spacing, notes)


def find_box(path: Optional[Path], threshold: float, shape: Optional[tuple[int, int]]) -> tuple[Optional[Box], str]:
    """(box or None, why not found: '' | 'no mask file' | 'unreadable mask' | 'mask size ...' | 'empty')."""
    if path is None or not path.exists():
        return None, "no mask file"
    mask = read_mask(path)
    if mask is None:
        return None, "unreadable mask"
    if shape is not None and mask.shape != shape:
        # a mask not at the original size would give coordinates in the wrong frame
        return None, f"mask size {mask.shape[0]}x{mask.shape[1]} is not the image's {shape[0]}x{shape[1]}"
    box = box_from_mask(mask, threshold)
    return box, "" if box is not None else "empty"


def status_text(failures: Mapping[str, str], notes: Sequence[str]) -> str:
    """'ok', or '; '-joined parts: 'missing: head,ankle_left', the causes other than an empty mask, notes."""
    parts = []
    if failures:
        parts.append("missing: " + ",".join(failures))
        causes: dict[str, list[str]] = {}
        for lm, why in failures.items():
            if why != "empty":
                causes.setdefault(why, []).append(lm)
        parts += [f"{why}: {','.join(lms)}" for why, lms in causes.items()]
    parts += list(notes)
    return "; ".join(parts) if parts else "ok"


def format_number(value: Optional[float], decimals: int) -> str:
    """Table text of a number: '' for None, rounded otherwise (stable, so re-runs give identical tables)."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return repr(round(float(value), decimals))


def measure_image(job: MeasureJob, threshold: float) -> dict[str, str]:
    """Geometry, phenotype and status cells of one image (as table text). Never raises for bad masks."""
    boxes: dict[str, Optional[Box]] = {}
    failures: dict[str, str] = {}
    for lm in LANDMARKS:
        path = job.masks.get(lm)
        box, why = find_box(path, threshold, job.shape) if lm in job.masks else (None, "not segmented")
        boxes[lm] = box
        if box is None:
            failures[lm] = why
    row = {"Image": job.image}
    for name, value in geometry_cells(boxes).items():
        row[name] = format_number(value, CENTRE_DECIMALS)
    for name, value in measure(boxes, job.height_m, job.spacing_mm).items():
        row[name] = format_number(value, PHENOTYPE_DECIMALS)
    row["status"] = status_text(failures, job.notes)
    return row


def measure_images(jobs: Iterable[MeasureJob], threshold: float, workers: int = 1) -> Iterator[dict[str, str]]:
    """Rows of `measure_image` in job order; `workers` > 1 reads masks in threads (PNG decoding releases the GIL)."""
    if workers <= 1:
        for job in jobs:
            yield measure_image(job, threshold)
        return
    yield from map_in_order(partial(measure_image, threshold=threshold), jobs, workers, "hbr-measure")


def mask_folders(workdir: Path, bak: str) -> dict[str, Optional[Path]]:
    """Landmark -> DIR/7_segment_predicted_{lm}_{bak}/ (None when stage 7 did not segment it)."""
    folders = {lm: workdir / f"7_segment_predicted_{lm}_{bak}" for lm in LANDMARKS}
    return {lm: (folder if folder.is_dir() else None) for lm, folder in folders.items()}


def images_to_measure(workdir: Path, bak: str) -> list[str]:
    """Image ids of DIR/6_pose_{bak}_predicted_npy/ (empty when stage 6 kept none)."""
    folder = workdir / f"6_pose_{bak}_predicted_npy"
    if folder.is_dir() or (workdir / f"6_pose_{bak}_pred.tsv").exists():
        return list_images(folder)
    background = read_stage_table(workdir / "4_background.tsv", "4_background_class", decisions=BACKGROUNDS + (REMOVE,))
    if background.ran and not background.kept(bak):
        return []  # stage 4 found no image of this background: nothing to measure, not an error
    raise HbrError(f"{folder}: not found; run 6_pose_class.py {bak} and 7_segment.py {bak} first")


def segment_table_columns(dcm_columns: Sequence[str]) -> list[str]:
    """dcm_table columns + geometry + phenotypes + status."""
    return list(dcm_columns) + geometry_columns() + phenotype_columns() + ["status"]


def measure_background(
    workdir: Path, bak: str, threshold: float, workers: int = 1, progress: bool = False
) -> tuple[list[str], Iterator[dict[str, str]]]:
    """(columns, rows) of the segment table of `bak`: every image stage 6 kept, measured lazily in order."""
    dcm = read_dcm_table(workdir)
    images = images_to_measure(workdir, bak)
    folders = mask_folders(workdir, bak)
    if images and not any(folders.values()):
        raise HbrError(f"no stage-7 masks in {workdir}/7_segment_predicted_*_{bak}/; run 7_segment.py {bak} first")
    segmented = {lm: f for lm, f in folders.items() if f is not None}
    if images and len(segmented) < len(LANDMARKS):
        absent = ", ".join(lm for lm in LANDMARKS if lm not in segmented)
        print(f"{STAGE}: {bak}: no masks for {absent} (stage 7 was restricted); they are reported as missing")
    # rows of the measured images only: the table lists every image of the run
    dcm_rows = {row["Image"]: row for row in dcm[dcm["Image"].isin(images)].to_dict("records")}
    empty_dcm = dict.fromkeys(dcm.columns, "")
    jobs = (make_job(image, dcm_rows.get(image), segmented) for image in images)
    rows = measure_images(jobs, threshold, workers)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=len(images), desc=f"{STAGE} {bak}", unit="image", disable=None, file=sys.stderr)
    full_rows = ({**(dcm_rows.get(row["Image"]) or empty_dcm), **row} for row in rows)
    return segment_table_columns(dcm.columns), full_rows


def write_rows(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> tuple[int, int]:
    """Stream rows to a TSV atomically (memory flat in the number of images); (rows, rows with a missing landmark)."""
    missing = 0

    def cells() -> Iterator[list[str]]:
        nonlocal missing
        for row in rows:
            missing += "missing:" in row.get("status", "")
            yield [row.get(c, "") for c in columns]

    return write_tsv_rows(path, columns, cells()), missing


# --------------------------------------------------------------------------- whole-run table


def not_reached(table: StageTable) -> str:
    """Reason for an image missing from a stage's table."""
    if not table.ran:
        return f"{table.label} has not run ({table.path.name} missing)"
    return f"not in {table.path.name}"


def trace_image(image: str, state: RunState, measured_ids: Mapping[str, Optional[set[str]]]) -> tuple[str, str, str]:
    """(background, excluded_by, reason) of one image, following it through the QC chain.

    `measured_ids` maps each background to the images of its segment table (None: not run).
    """
    for table in (state.body, state.crop):
        verdict = (table.verdicts or {}).get(image)
        if verdict is None:
            return "", NOT_MEASURED, not_reached(table)
        if verdict.decision == REMOVE:
            return "", table.stage, verdict.reason
    verdict = (state.background.verdicts or {}).get(image)
    if verdict is None:
        return "", NOT_MEASURED, not_reached(state.background)
    background = verdict.background
    if verdict.decision == REMOVE:
        return background, state.background.stage, verdict.reason
    bak = verdict.decision
    for table in (state.contrast[bak], state.pose[bak]):
        verdict = (table.verdicts or {}).get(image)
        if verdict is None:
            return background, NOT_MEASURED, not_reached(table)
        if verdict.decision == REMOVE:
            return background, table.stage, verdict.reason
    ids = measured_ids[bak]
    if ids is None:
        return background, NOT_MEASURED, f"{STAGE} {bak} has not run"
    if image not in ids:
        return background, NOT_MEASURED, f"not in {segment_table_path(state.workdir, bak).name}"
    return background, NONE, ""


def hbr_table_columns(dcm_columns: Sequence[str]) -> list[str]:
    """dcm_table columns + background, excluded_by, reason + geometry + phenotypes + status."""
    return list(dcm_columns) + ["background", "excluded_by", "reason"] + geometry_columns() + phenotype_columns() + ["status"]


def build_hbr_table(state: RunState) -> pd.DataFrame:
    """Every dcm_table image once, with its background, the stage that excluded it, and its measurements."""
    value_columns = geometry_columns() + phenotype_columns() + ["status"]
    segments = {bak: t.drop_duplicates("Image") for bak, t in state.measured.items() if t is not None}
    measured_ids = {bak: (set(segments[bak]["Image"]) if bak in segments else None) for bak in BACKGROUNDS}
    dcm = state.dcm  # read_tsv's RangeIndex, which the columns assembled below share
    if dcm["Image"].duplicated().any():
        dcm = dcm.drop_duplicates("Image", ignore_index=True)
    fates = []
    for image in dcm["Image"]:
        background, excluded_by, reason = trace_image(image, state, measured_ids)
        # which segment table holds the image's values ("" when it was not measured)
        source = state.background.verdicts[image].decision if excluded_by == NONE else ""
        fates.append((background, excluded_by, reason, source))
    fate = pd.DataFrame(fates, columns=["background", "excluded_by", "reason", "_source"], dtype=str)
    values = pd.concat(
        [pd.DataFrame(columns=["Image", "_source"] + value_columns, dtype=str)]
        + [t[["Image"] + value_columns].assign(_source=bak) for bak, t in segments.items()],
        ignore_index=True,
    ).set_index(["Image", "_source"])
    # each image's values, looked up at once (per-row lookups are slow at biobank scale); the
    # table is assembled in one copy, in dcm_table's row order
    values = values.reindex(pd.MultiIndex.from_arrays([dcm["Image"], fate["_source"]]), fill_value="")
    values.index = dcm.index
    return pd.concat([dcm, fate.drop(columns="_source"), values], axis=1)


# --------------------------------------------------------------------------- accounting


@dataclass
class FunnelRow:
    """Images a stage saw, kept and removed (for one background)."""

    stage: str
    background: str
    seen: Optional[int]  # None: the stage has not run
    kept: Optional[int]
    removed: Optional[int]
    note: str = ""


def funnel(state: RunState) -> pd.DataFrame:
    """Per stage and background: images seen, kept and removed (stage 8: all landmarks found or not)."""
    rows = [
        FunnelRow(
            "1_dcm2img",
            "",
            len(state.dcm) + (state.errors or 0),
            len(state.dcm),
            state.errors,
            "kept = Total Body images in dcm_table.tsv; removed = unreadable files (1_errors.tsv)",
        )
    ]
    for table in (state.body, state.crop, state.background):
        rows.append(_funnel_row(table))
    for bak in BACKGROUNDS:
        rows += [_funnel_row(state.contrast[bak]), _funnel_row(state.pose[bak])]
        seg = state.measured[bak]
        if seg is None:
            rows.append(FunnelRow(STAGE, bak, None, None, None, "not run"))
        else:
            complete = int((~seg["status"].str.contains("missing:", regex=False)).sum())
            rows.append(
                FunnelRow(STAGE, bak, len(seg), complete, len(seg) - complete, "kept = all landmarks found")
            )
    return pd.DataFrame([dataclasses.asdict(r) for r in rows])


def _funnel_row(table: StageTable) -> FunnelRow:
    if not table.ran:
        return FunnelRow(table.stage, table.background, None, None, None, "not run")
    seen = len(table.verdicts)
    kept = len(table.kept())
    note = ""
    if table.stage == "4_background_class":
        note = ", ".join(f"{len(table.kept(b))} {b}" for b in BACKGROUNDS)
    return FunnelRow(table.stage, table.background, seen, kept, seen - kept, note)


def _examples(ids: Iterable[str], limit: int = 3) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def compare_sets(what_a: str, a: set[str], what_b: str, b: set[str]) -> Optional[str]:
    """One line describing how two image sets differ, or None when they are equal."""
    if a == b:
        return None
    parts = []
    if a - b:
        parts.append(f"{len(a - b)} only in the first ({_examples(a - b)})")
    if b - a:
        parts.append(f"{len(b - a)} only in the second ({_examples(b - a)})")
    return f"{what_a} {len(a)} images != {what_b} {len(b)}: " + "; ".join(parts)


SUMMARY_COUNTS = ("members", "images", "skipped", "errors")


def count_cell(text: object) -> Optional[int]:
    """A count of 1_summary.tsv: a number, '' (0), or stage 1's per-protocol 'AP Spine=1;LVA=2' (summed)."""
    text = str(text).strip()
    if not text:
        return 0
    value = parse_number(text)
    if value is not None:
        return int(value)
    total = 0
    for part in text.split(";"):
        _, sep, count = part.rpartition("=")
        number = parse_number(count) if sep else None
        if number is None:
            return None
        total += int(number)
    return total


def summary_counts(summary: pd.DataFrame) -> Optional[list[tuple[str, dict[str, int]]]]:
    """(source, counts) per row of 1_summary.tsv (columns source, file, members, images, skipped, errors).

    None when a count column is missing or a cell is not a count.
    """
    if not all(k in summary.columns for k in SUMMARY_COUNTS):
        return None
    label_col = "source" if "source" in summary.columns else None
    out = []
    for i, row in enumerate(summary.to_dict("records")):
        counts = {k: count_cell(row[k]) for k in SUMMARY_COUNTS}
        if any(v is None for v in counts.values()):
            return None
        out.append((f"source {row[label_col]}" if label_col else f"line {i + 2}", counts))
    return out


def summary_problems(state: RunState) -> list[str]:
    """members == images + skipped + errors per row of 1_summary.tsv, and images == dcm_table rows."""
    if state.summary is None:
        return []
    counts = summary_counts(state.summary)
    if counts is None:
        return [f"{SUMMARY_TABLE}: no members/images/skipped/errors counts found (columns: {', '.join(state.summary.columns)})"]
    problems = []
    for label, c in counts:
        if c["members"] != c["images"] + c["skipped"] + c["errors"]:
            problems.append(
                f"{SUMMARY_TABLE} {label}: members {c['members']} != images {c['images']} + skipped {c['skipped']} + errors {c['errors']}"
            )
    images = sum(c["images"] for _, c in counts)
    if images != len(state.dcm):
        problems.append(f"{SUMMARY_TABLE} counts {images} images but {DCM_TABLE} has {len(state.dcm)} rows")
    return problems


def accounting_problems(state: RunState, hbr: Optional[pd.DataFrame]) -> list[str]:
    """Every way an image could have been lost or duplicated between stages, one line each."""
    problems = summary_problems(state)
    dcm_images = list(state.dcm["Image"])
    duplicated = state.dcm["Image"][state.dcm["Image"].duplicated()]
    if len(duplicated):
        problems.append(f"{DCM_TABLE} lists {len(duplicated)} image(s) more than once ({_examples(set(duplicated))})")
    if hbr is None:
        problems.append(f"{HBR_TABLE} not found")
    else:
        twice = hbr["Image"][hbr["Image"].duplicated()]
        if len(twice):
            problems.append(f"{HBR_TABLE} lists {len(twice)} image(s) more than once ({_examples(set(twice))})")
        problem = compare_sets(f"{DCM_TABLE} lists", set(dcm_images), f"{HBR_TABLE} lists", set(hbr["Image"]))
        if problem:
            problems.append(problem)
    chain = [state.body, state.crop, state.background]
    for table in chain + [state.contrast[b] for b in BACKGROUNDS] + [state.pose[b] for b in BACKGROUNDS]:
        if table.duplicates:
            problems.append(f"{table.path.name} lists {len(table.duplicates)} image(s) more than once ({_examples(set(table.duplicates))})")

    def handover(what_a: str, kept: set[str], table: StageTable) -> None:
        if table.ran:
            problem = compare_sets(what_a, kept, f"{table.path.name} saw", table.seen())
            if problem:
                problems.append(problem)

    handover(f"{DCM_TABLE} lists", set(dcm_images), state.body)
    if state.body.ran:
        handover(f"{state.body.path.name} kept", state.body.kept(), state.crop)
    if state.crop.ran:
        handover(f"{state.crop.path.name} kept", state.crop.kept(), state.background)
    for bak in BACKGROUNDS:
        if state.background.ran:
            handover(f"{state.background.path.name} sent to {bak}", state.background.kept(bak), state.contrast[bak])
        if state.contrast[bak].ran:
            handover(f"{state.contrast[bak].path.name} kept", state.contrast[bak].kept(), state.pose[bak])
        seg = state.measured[bak]
        if state.pose[bak].ran and seg is not None:
            problem = compare_sets(
                f"{state.pose[bak].path.name} kept",
                state.pose[bak].kept(),
                f"{segment_table_path(state.workdir, bak).name} measured",
                set(seg["Image"]),
            )
            if problem:
                problems.append(problem)
    return problems


def check_accounting(workdir: str | Path) -> list[str]:
    """Problems (one line each) in how images flowed from dcm_table.tsv to hbr_table.tsv; [] when all add up.

    Checks: every dcm_table image appears exactly once in hbr_table; each decision
    table's kept images equal the next stage's inputs (and stage 6's kept images the
    segment table's); per 1_summary.tsv, members == images + skipped + errors.
    """
    workdir = Path(workdir)
    state = load_run_state(workdir)
    hbr_path = result_dir(workdir) / HBR_TABLE
    hbr = read_table(hbr_path, ["Image"], required_only=True) if hbr_path.exists() else None
    return accounting_problems(state, hbr)


def funnel_lines(table: pd.DataFrame) -> list[str]:
    """The funnel as aligned text lines."""
    lines = []
    for row in table.itertuples():
        name = f"{row.stage} {row.background}".strip()
        if pd.isna(row.seen):
            lines.append(f"  {name:<26} not run")
        else:
            note = f"  ({row.note})" if row.note else ""
            lines.append(f"  {name:<26} seen {int(row.seen):>7}  kept {int(row.kept):>7}  removed {int(row.removed):>7}{note}")
    return lines


# --------------------------------------------------------------------------- stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Stage 8 options: the background, and whether to write the report."""
    cli.add_background_argument(parser)
    parser.add_argument("--no-report", action="store_true", help="skip the HTML QC report")
    parser.add_argument(
        "--workers", type=int, default=0, help="threads reading masks (0: one per CPU core, at most 4)"
    )


def default_workers() -> int:
    """Threads reading masks: PNG decoding releases the GIL, so threads scale (1.8x on 2 cores, measured)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def check_threshold(threshold: float) -> float:
    """The mask threshold, which must be a probability below 1."""
    if not 0.0 <= threshold < 1.0:
        raise HbrError(f"segmenter.threshold = {threshold} must be in [0, 1)")
    return threshold


def rebuild_results(workdir: Path, report: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Rewrite hbr_table.tsv (and the report) from the tables on disk; (hbr_table, funnel, accounting problems)."""
    state = load_run_state(workdir)
    hbr = build_hbr_table(state)
    write_tsv(result_dir(workdir) / HBR_TABLE, hbr)
    problems = accounting_problems(state, read_table(result_dir(workdir) / HBR_TABLE, ["Image"], required_only=True))
    stages = funnel(state)
    del state  # the decision tables: their memory goes to the report's charts instead
    if report:
        from hbr.report import write_report  # matplotlib is imported only when a report is wanted

        write_report(result_dir(workdir) / "report", hbr, stages, workdir / "1_Total_Body_png", problems)
    return hbr, stages, problems


def run(ctx: cli.Context) -> None:
    """Measure one background, then rebuild the whole-run table, check the accounting and write the report."""
    bak = ctx.args.background
    workdir = ctx.workdir
    threshold = check_threshold(ctx.cfg.segmenter.threshold)
    workers = ctx.args.workers if ctx.args.workers > 0 else default_workers()
    columns, rows = measure_background(workdir, bak, threshold, max(1, workers), progress=True)
    n, missing = write_rows(segment_table_path(workdir, bak), columns, rows)
    print(f"{STAGE}: {bak}: measured {n} images, {missing} with a missing landmark")

    hbr, stages, problems = rebuild_results(workdir, report=not ctx.args.no_report)
    print(f"{STAGE}: images per stage:")
    for line in funnel_lines(stages):
        print(line)
    counts = hbr["excluded_by"].value_counts()
    print(f"{STAGE}: {HBR_TABLE}: {len(hbr)} images: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for problem in problems:
        print(f"{STAGE}: WARNING: accounting: {problem}", file=sys.stderr)
    if not problems:
        print(f"{STAGE}: accounting ok: every image of {DCM_TABLE} is in {HBR_TABLE} exactly once")
    out = result_dir(workdir)
    print(f"{STAGE}: wrote {segment_table_path(workdir, bak)}")
    print(f"{STAGE}: wrote {out / HBR_TABLE}")
    if not ctx.args.no_report:
        print(f"{STAGE}: QC report: {out / 'report' / 'index.html'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of 8_cal_segment.py."""
    return cli.main(STAGE, __doc__, add_arguments, run, argv)
