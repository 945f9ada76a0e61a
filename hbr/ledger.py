"""The run ledger: what spans the whole run rather than one stage.

It reads every stage's table of a work directory into one `RunState`, builds the
whole-run table hbr_table.tsv (every image of dcm_table.tsv exactly once, with the stage
that excluded it), and checks the accounting: no image lost or duplicated between
stages. Stage 8 calls `rebuild_results` after measuring; the QC report is drawn from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import pandas as pd

from hbr.errors import HbrError
from hbr.files import read_tsv, write_tsv
from hbr.masks import geometry_columns
from hbr.phenotypes import phenotype_columns
from hbr.pipeline import (
    BACKGROUND,
    BACKGROUNDS,
    DCM_TABLE,
    ERRORS_TABLE,
    HBR_TABLE,
    SUMMARY_TABLE,
    TOTAL_BODY,
    Stage,
    decision_stages,
    image_folders,
    result_dir,
    segment_table_path,
    stage,
)

NONE = "none"  # excluded_by of an image kept by every stage and measured
NOT_MEASURED = "not_measured"  # kept so far, but a later stage (or stage 8) has not seen it yet
REMOVE = "remove"
KEEP = "keep"


def parse_number(text: object) -> Optional[float]:
    """A finite number from a table cell, else None (empty, text, NaN)."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


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
    splits: bool = False  # stage 4: decisions are backgrounds

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


def read_stage_table(workdir: Path, decider: Stage, bak: Optional[str] = None) -> StageTable:
    """The decision table (Image, ..., decision, reason) of a QC stage (for background `bak`);
    a missing file means the stage has not run.

    Stage 4 decides a background (black|white|remove) and records it in its `background` column.
    """
    path = workdir / decider.table_name(bak)
    stage, background = decider.name, bak or ""
    splits = decider.kind == BACKGROUND
    decisions = BACKGROUNDS + (REMOVE,) if splits else (KEEP, REMOVE)
    if not path.exists():
        return StageTable(stage, background, path, None, splits=splits)
    columns = ["Image", "decision", "reason"] + (["background"] if splits else [])
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
        verdict = Verdict(decision, reason, bg if splits else "")
        verdicts[image] = shared.setdefault(verdict, verdict)
    return StageTable(stage, background, path, verdicts, tuple(duplicates), splits)


@dataclass(frozen=True)
class RunState:
    """Everything the whole-run table and the accounting check are built from."""

    workdir: Path
    dcm: pd.DataFrame
    shared: tuple[StageTable, ...]  # the QC stages before the background split (2, 3), in chain order
    background: StageTable  # stage 4
    per_background: Mapping[str, tuple[StageTable, ...]]  # bak -> its QC stages after the split (5, 6)
    measured: Mapping[str, Optional[pd.DataFrame]]  # bak -> segment table (None: stage 8 not run for bak)
    errors: Optional[int] = None  # rows of 1_errors.tsv
    summary: Optional[pd.DataFrame] = None

    def decision_tables(self) -> list[StageTable]:
        """Every decision table, in stage order (both backgrounds of a stage side by side)."""
        count = len(next(iter(self.per_background.values()), ()))
        per_bak = [self.per_background[b][i] for i in range(count) for b in BACKGROUNDS]
        return [*self.shared, self.background, *per_bak]


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
    deciders = decision_stages()
    splitter = next(s for s in deciders if s.kind == BACKGROUND)
    return RunState(
        workdir=workdir,
        dcm=read_dcm_table(workdir),
        shared=tuple(read_stage_table(workdir, s) for s in deciders if s.number < splitter.number),
        background=read_stage_table(workdir, splitter),
        per_background={
            bak: tuple(read_stage_table(workdir, s, bak) for s in deciders if s.per_background)
            for bak in BACKGROUNDS
        },
        measured={bak: read_segment_table(workdir, bak) for bak in BACKGROUNDS},
        errors=len(read_table(errors_path, [])) if errors_path.exists() else None,
        summary=read_table(summary_path, []) if summary_path.exists() else None,
    )


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
    for table in state.shared:
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
    for table in state.per_background[bak]:
        verdict = (table.verdicts or {}).get(image)
        if verdict is None:
            return background, NOT_MEASURED, not_reached(table)
        if verdict.decision == REMOVE:
            return background, table.stage, verdict.reason
    ids = measured_ids[bak]
    if ids is None:
        return background, NOT_MEASURED, f"{stage(8).name} {bak} has not run"
    if image not in ids:
        return background, NOT_MEASURED, f"not in {segment_table_path(state.workdir, bak).name}"
    return background, NONE, ""


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


def stage1_note(state: RunState) -> str:
    """The funnel's note for stage 1: what its kept and removed count, and what it set aside
    without counting (other protocols, known non-image files such as manifest.cvs)."""
    totals = dict.fromkeys(SUMMARY_COUNTS + SUMMARY_OPTIONAL_COUNTS, 0)
    for _, counts in (summary_counts(state.summary) or []) if state.summary is not None else []:
        for key, value in counts.items():
            totals[key] += value
    errors = state.errors or 0
    missing = min(totals["missing"], errors)
    removed = f"{errors - missing} unreadable files" + (f" + {missing} listed in a manifest but missing"
                                                        if missing else "")
    if state.errors is None:
        removed = "not known, no"
    return (f"kept = Total Body images in {DCM_TABLE}; removed = {removed} ({ERRORS_TABLE}); not counted: "
            f"{totals['skipped']} images of other protocols, {totals['other_files']} known non-image files "
            f"(manifest; {SUMMARY_TABLE})")


def funnel(state: RunState) -> pd.DataFrame:
    """Per stage and background: images seen, kept and removed (stage 8: all landmarks found or not)."""
    rows = [
        FunnelRow(
            stage(1).name,
            "",
            len(state.dcm) + (state.errors or 0),
            len(state.dcm),
            state.errors or 0,
            stage1_note(state),
        )
    ]
    for table in (*state.shared, state.background):
        rows.append(_funnel_row(table))
    measurer = stage(8).name
    for bak in BACKGROUNDS:
        rows += [_funnel_row(table) for table in state.per_background[bak]]
        seg = state.measured[bak]
        if seg is None:
            rows.append(FunnelRow(measurer, bak, None, None, None, "not run"))
        else:
            complete = int((~seg["status"].str.contains("missing:", regex=False)).sum())
            rows.append(
                FunnelRow(measurer, bak, len(seg), complete, len(seg) - complete, "kept = all landmarks found")
            )
    return pd.DataFrame([dataclasses.asdict(r) for r in rows])


def _funnel_row(table: StageTable) -> FunnelRow:
    if not table.ran:
        return FunnelRow(table.stage, table.background, None, None, None, "not run")
    seen = len(table.verdicts)
    kept = len(table.kept())
    note = ""
    if table.splits:
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
# counts a 1_summary.tsv written before they existed lacks (read as 0): known non-image
# members (manifest.cvs) and files a manifest lists that the source lacks (also errors)
SUMMARY_OPTIONAL_COUNTS = ("other_files", "missing")


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
    """(source, counts) per row of 1_summary.tsv (columns source, file, members, images, skipped,
    errors, and other_files, missing where present; 0 where absent).

    None when a required count column is missing or a cell is not a count.
    """
    if not all(k in summary.columns for k in SUMMARY_COUNTS):
        return None
    label_col = "source" if "source" in summary.columns else None
    out = []
    for i, row in enumerate(summary.to_dict("records")):
        counts = {k: count_cell(row.get(k, "")) for k in SUMMARY_COUNTS + SUMMARY_OPTIONAL_COUNTS}
        if any(v is None for v in counts.values()):
            return None
        out.append((f"source {row[label_col]}" if label_col else f"line {i + 2}", counts))
    return out


def summary_problems(state: RunState) -> list[str]:
    """Per row of 1_summary.tsv every member is counted once: members == images + skipped +
    other_files + errors - missing (a missing file listed by a manifest is an error line but no
    member); and images == dcm_table rows."""
    if state.summary is None:
        return []
    counts = summary_counts(state.summary)
    if counts is None:
        return [f"{SUMMARY_TABLE}: no members/images/skipped/errors counts found (columns: {', '.join(state.summary.columns)})"]
    problems = []
    for label, c in counts:
        if c["members"] != c["images"] + c["skipped"] + c["other_files"] + c["errors"] - c["missing"]:
            problems.append(
                f"{SUMMARY_TABLE} {label}: members {c['members']} != images {c['images']} + skipped {c['skipped']} "
                f"+ other files {c['other_files']} + errors {c['errors']} - missing {c['missing']}"
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
    for table in state.decision_tables():
        if table.duplicates:
            problems.append(f"{table.path.name} lists {len(table.duplicates)} image(s) more than once ({_examples(set(table.duplicates))})")

    def handover(what_a: str, kept: set[str], table: StageTable) -> None:
        if table.ran:
            problem = compare_sets(what_a, kept, f"{table.path.name} saw", table.seen())
            if problem:
                problems.append(problem)

    def along(chain: Sequence[StageTable]) -> None:
        """Each table's kept images against the next table's inputs."""
        for giver, taker in zip(chain, chain[1:]):
            if giver.ran:
                handover(f"{giver.path.name} kept", giver.kept(), taker)

    shared = [*state.shared, state.background]
    handover(f"{DCM_TABLE} lists", set(dcm_images), shared[0])
    along(shared)
    for bak in BACKGROUNDS:
        chain = state.per_background[bak]
        if state.background.ran:
            handover(f"{state.background.path.name} sent to {bak}", state.background.kept(bak), chain[0])
        along(chain)
        seg, last = state.measured[bak], chain[-1]
        if last.ran and seg is not None:
            problem = compare_sets(
                f"{last.path.name} kept",
                last.kept(),
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


def rebuild_results(
    workdir: Path, report: bool = True, image_dirs: Optional[Sequence[Path]] = None
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Rewrite hbr_table.tsv (and the report) from the tables on disk; (hbr_table, funnel, accounting problems).

    The report's example pictures come from `image_dirs` (default: the run's own
    1_Total_Body_png; a merged run's are in its shards)."""
    state = load_run_state(workdir)
    hbr = build_hbr_table(state)
    write_tsv(result_dir(workdir) / HBR_TABLE, hbr)
    problems = accounting_problems(state, read_table(result_dir(workdir) / HBR_TABLE, ["Image"], required_only=True))
    stages = funnel(state)
    del state  # the decision tables: their memory goes to the report's charts instead
    if report:
        from hbr.report import write_report  # matplotlib is imported only when a report is wanted

        folders = [image_folders(workdir, TOTAL_BODY)[1]] if image_dirs is None else image_dirs
        write_report(result_dir(workdir) / "report", hbr, stages, folders, problems)
    return hbr, stages, problems

