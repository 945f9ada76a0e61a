"""Stage 8: landmark boxes, centres and HBR phenotypes per background.

`8_cal_segment.py {black,white} --workdir DIR` measures every image of
DIR/6_pose_{bak}_predicted_npy/ from its stage-7 masks and writes
DIR/8_segment_result/segment_table_{bak}.tsv. It then has the run ledger (hbr.ledger)
rebuild DIR/8_segment_result/hbr_table.tsv, check that no image was lost between
stages, and write the QC report to DIR/8_segment_result/report/.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from hbr import cli, pipeline
from hbr.errors import HbrError
from hbr.files import list_images, write_tsv_rows
from hbr.landmarks import LANDMARKS, Box
from hbr.ledger import (
    HBR_TABLE,
    funnel_lines,
    parse_number,
    read_dcm_table,
    read_stage_table,
    rebuild_results,
)
from hbr.masks import box_from_mask, geometry_cells, geometry_columns, read_mask
from hbr.parallel import map_in_order
from hbr.phenotypes import compute_phenotypes, phenotype_columns
from hbr.pipeline import DCM_TABLE, image_folders, mask_folder, result_dir, segment_table_path
from hbr.progress import track

STAGE = pipeline.stage(8)
NAME = STAGE.name

# Plausible PatientSize range (metres); outside it the value is most likely in another
# unit or a typo, and scaling every length by it would give nonsense centimetres.
HEIGHT_RANGE_M = (0.3, 3.0)
CENTRE_DECIMALS = 3
PHENOTYPE_DECIMALS = 6


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
        return MeasureJob(image, masks, notes=(f"not in {DCM_TABLE}", "no height", "no pixel spacing"))
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
    for name, value in compute_phenotypes(boxes, job.height_m, job.spacing_mm).items():
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
    folders = {lm: mask_folder(workdir, lm, bak) for lm in LANDMARKS}
    return {lm: (folder if folder.is_dir() else None) for lm, folder in folders.items()}


def images_to_measure(workdir: Path, bak: str) -> list[str]:
    """Image ids of DIR/6_pose_{bak}_predicted_npy/ (empty when stage 6 kept none)."""
    last_qc = pipeline.producer(STAGE)
    folder, _ = image_folders(workdir, STAGE.input(bak))
    if folder.is_dir() or (workdir / last_qc.table_name(bak)).exists():
        return list_images(folder)
    background = read_stage_table(workdir, pipeline.stage(4))
    if background.ran and not background.kept(bak):
        return []  # stage 4 found no image of this background: nothing to measure, not an error
    raise HbrError(f"{folder}: not found; run {last_qc.script} {bak} and {pipeline.stage(7).script} {bak} first")


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
        raise HbrError(f"no stage-7 masks in {mask_folder(workdir, '*', bak)}/; run {pipeline.stage(7).script} {bak} first")
    segmented = {lm: f for lm, f in folders.items() if f is not None}
    if images and len(segmented) < len(LANDMARKS):
        absent = ", ".join(lm for lm in LANDMARKS if lm not in segmented)
        print(f"{NAME}: {bak}: no masks for {absent} (stage 7 was restricted); they are reported as missing")
    # rows of the measured images only: the table lists every image of the run
    dcm_rows = {row["Image"]: row for row in dcm[dcm["Image"].isin(images)].to_dict("records")}
    empty_dcm = dict.fromkeys(dcm.columns, "")
    jobs = (make_job(image, dcm_rows.get(image), segmented) for image in images)
    rows = measure_images(jobs, threshold, workers)
    if progress:
        rows = track(rows, len(images), f"{NAME} {bak}", "images")
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


# --------------------------------------------------------------------------- stage


def default_workers() -> int:
    """Threads reading masks: PNG decoding releases the GIL, so threads scale with the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def check_threshold(threshold: float) -> float:
    """The mask threshold, which must be a probability below 1."""
    if not 0.0 <= threshold < 1.0:
        raise HbrError(f"segmenter.threshold = {threshold} must be in [0, 1)")
    return threshold


def run(ctx: cli.Context) -> None:
    """Measure one background, then rebuild the whole-run table, check the accounting and write the report."""
    bak = ctx.options.background
    workdir = ctx.workdir
    threshold = check_threshold(ctx.cfg.segmenter.threshold)
    workers = ctx.options.workers if ctx.options.workers > 0 else default_workers()
    columns, rows = measure_background(workdir, bak, threshold, max(1, workers), progress=True)
    n, missing = write_rows(segment_table_path(workdir, bak), columns, rows)
    print(f"{NAME}: {bak}: measured {n} images, {missing} with a missing landmark")

    hbr, stages, problems = rebuild_results(workdir, report=ctx.options.report)
    print(f"{NAME}: images per stage:")
    for line in funnel_lines(stages):
        print(line)
    counts = hbr["excluded_by"].value_counts()
    print(f"{NAME}: {HBR_TABLE}: {len(hbr)} images: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for problem in problems:
        print(f"{NAME}: WARNING: accounting: {problem}", file=sys.stderr)
    if not problems:
        print(f"{NAME}: accounting ok: every image of {DCM_TABLE} is in {HBR_TABLE} exactly once")
    out = result_dir(workdir)
    print(f"{NAME}: wrote {segment_table_path(workdir, bak)}")
    print(f"{NAME}: wrote {out / HBR_TABLE}")
    if ctx.options.report:
        print(f"{NAME}: QC report: {out / 'report' / 'index.html'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of 8_cal_segment.py."""
    return cli.entry(STAGE, argv)

