"""Sharded runs: a run's inputs split into N stable parts that run as separate jobs (a SLURM
array task or a cloud batch job each), and the merge of their tables into the run's work
directory.

A source (zip, folder or file) belongs to shard `sha256(its name) mod N`: the same zip lands
in the same shard on every machine and whatever else the input holds, and sources of one name
(whose image ids would clash) land together, so stage 1 finds the clash as one machine would.
Shard I of N works in WORKDIR/shards/I_of_N like a work directory of its own. Each stage run
there leaves a record: the config keys that decide results and the checksum of the model it
predicted with. The merge checks those records before it combines the tables, and writes
each table as one machine would have: every table is sorted by a key of its own rows, and no
row depends on another image.

`python -m hbr.shards resolve SPEC` (for 0_pipeline.sh) and `python -m hbr.shards merge`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from hbr.errors import HbrError
from hbr.pipeline import (
    DCM_TABLE,
    ERRORS_TABLE,
    SHARD_MAP,
    SHARDS_DIR,
    STATE_DIR,
    SUMMARY_TABLE,
    TOTAL_BODY,
    image_folders,
    run_order,
    run_tables,
)

if TYPE_CHECKING:
    from hbr.cli import Context

ARRAY_TASK_VARIABLE = "SLURM_ARRAY_TASK_ID"
RECORDS = "shard"  # the stage records, in a shard's STATE_DIR
HASH_BLOCK = 2**20

# The key each table's rows are sorted by when a stage writes it (stage 1 writes its tables
# source by source, sorted by source name and path, and each source's images by id; its error
# lines sorted whole; every later stage sorts by image id). None: the whole row.
ROW_KEYS: Mapping[str, Optional[tuple[str, ...]]] = {
    DCM_TABLE: ("folder", "Image"),
    SUMMARY_TABLE: ("source", "file"),
    ERRORS_TABLE: None,
}
IMAGE_KEY = ("Image",)


@dataclass(frozen=True, order=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """Folder name, e.g. 003_of_200 (zero-padded, so a listing is in shard order)."""
        return f"{self.index:0{len(str(self.count - 1))}d}_of_{self.count}"

    def folder(self, workdir: Path) -> Path:
        """The shard's own work directory: WORKDIR/shards/I_of_N."""
        return workdir / SHARDS_DIR / self.name

    def holds(self, source_name: str) -> bool:
        """True when the source of this name (a zip's file name without .zip) is in this shard."""
        return shard_index(source_name, self.count) == self.index


def shard_index(source_name: str, count: int) -> int:
    """The shard (0 .. count-1) of a source name: the same on every machine and Python."""
    digest = hashlib.sha256(source_name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str, environ: Optional[Mapping[str, str]] = None) -> Shard:
    """`I/N` (0 <= I < N), or `N` alone with I from SLURM_ARRAY_TASK_ID (an array task).

    N is never taken from SLURM_ARRAY_TASK_COUNT: a task re-submitted alone sees a count of 1.
    Raises argparse.ArgumentTypeError (a usage error) for anything else.
    """
    environ = os.environ if environ is None else environ
    index_text, slash, count_text = text.strip().rpartition("/")
    if not slash:
        index_text = environ.get(ARRAY_TASK_VARIABLE, "")
        if not index_text:
            raise argparse.ArgumentTypeError(
                f"--shard {text}: give I/N (shard I of N, from 0), or N alone inside a SLURM array task "
                f"({ARRAY_TASK_VARIABLE} is not set)")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text}: expected I/N with whole numbers, e.g. 0/4") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--shard {text}: the number of shards must be at least 1")
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: shard index {index} is not in 0..{count - 1}")
    return Shard(index, count)


# --------------------------------------------------------------------------- stage records


def record_path(shard_workdir: Path, run_name: str) -> Path:
    """Where a stage run of a shard records that it finished."""
    return shard_workdir / STATE_DIR / RECORDS / f"{run_name}.json"


def begin_stage(ctx: "Context") -> None:
    """Before a stage runs in a shard: refuse training (models are trained once, before the
    shards run) and forget that the stage had finished, so a killed run is never merged."""
    if ctx.stage.has_model and (ctx.options.models is None or ctx.options.mode == "train"):
        raise HbrError(f"--shard {ctx.options.shard}: give --models DIR: models are trained once (on a sample "
                       "work directory), then every shard predicts with them")
    record_path(ctx.workdir, ctx.run_name).unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def finish_stage(ctx: "Context") -> None:
    """After a stage ran in a shard: record the config keys that decide its results and the
    checksum of its model, for the merge to compare across shards."""
    from hbr.config import result_values
    from hbr.files import write_json

    model = ctx.model_file if ctx.stage.has_model else None
    write_json(record_path(ctx.workdir, ctx.run_name), {
        "shard": str(ctx.options.shard),
        "config": result_values(ctx.cfg),
        "model": None if model is None else {"path": str(model), "sha256": file_sha256(model)},
    })


# --------------------------------------------------------------------------- merge


def find_shards(workdir: Path) -> list[Shard]:
    """The shards of the run in `workdir`; HbrError when there are none, when folders of
    different shard counts are mixed, or when a shard's folder is missing."""
    root = workdir / SHARDS_DIR
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        index, sep, count = path.name.partition("_of_")
        if path.is_dir() and sep and index.isdigit() and count.isdigit() and int(index) < int(count):
            shard = Shard(int(index), int(count))
            if shard.name == path.name:
                found.append(shard)
    if not found:
        raise HbrError(f"{root}: no shard folders (run 0_pipeline.sh --shard I/N --workdir {workdir} first)")
    counts = sorted({s.count for s in found})
    if len(counts) > 1:
        raise HbrError(f"{root}: shards of runs split {' and '.join(map(str, counts))} ways are mixed; "
                       "keep the folders of one split only")
    count = counts[0]
    missing = sorted(set(range(count)) - {s.index for s in found})
    if missing:
        raise HbrError(f"{root}: {len(missing)} of {count} shards have not run (no folder): "
                       f"{_listed(missing)}; run them with --shard I/{count}")
    return sorted(found)


def _listed(items: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def read_records(workdir: Path, shard: Shard) -> dict[str, dict]:
    """The finished stage runs of a shard by run name; HbrError naming those not finished."""
    folder = shard.folder(workdir)
    records, unfinished = {}, []
    for stage, bak in run_order():
        name = stage.run_name(bak)
        path = record_path(folder, name)
        try:
            records[name] = json.loads(path.read_text())
        except FileNotFoundError:
            unfinished.append(name)
        except (OSError, ValueError) as exc:
            raise HbrError(f"{path}: unreadable stage record ({exc}); re-run shard {shard}") from None
    if unfinished:
        raise HbrError(f"shard {shard} ({folder}) has not finished: {_listed(unfinished)} not done; "
                       f"run it (again) with --shard {shard}: it resumes")
    return records


def record_differences(reference: Mapping[str, dict], other: Mapping[str, dict]) -> list[str]:
    """What differs between two shards' stage records: config keys that decide results
    (the first difference per key) and the models predicted with."""
    differences: dict[str, str] = {}
    for name, mine in other.items():
        theirs = reference.get(name, {})
        config_a, config_b = theirs.get("config", {}), mine.get("config", {})
        for key in sorted(set(config_a) | set(config_b)):
            if key not in differences and config_a.get(key) != config_b.get(key):
                differences[key] = f"{key} {config_b.get(key)!r} (not {config_a.get(key)!r})"
        model_a, model_b = theirs.get("model") or {}, mine.get("model") or {}
        if model_a.get("sha256") != model_b.get("sha256"):
            differences[name] = f"model of {name} {model_b.get('path')} (not {model_a.get('path')}: other weights)"
    return list(differences.values())


def check_same_work(workdir: Path, shards: Sequence[Shard]) -> None:
    """HbrError naming the shards whose config (keys that decide results) or models differ
    from shard 0's, and how."""
    reference = read_records(workdir, shards[0])
    problems = []
    for shard in shards[1:]:
        differences = record_differences(reference, read_records(workdir, shard))
        if differences:
            problems.append(f"shard {shard}: {'; '.join(differences)}")
    if problems:
        raise HbrError(f"shards ran with different models or settings than shard {shards[0]}, not merged: "
                       f"{' | '.join(problems)}")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream, delimiter="\t")
        header = next(reader, [])
        return header, list(reader)


def merge_table(workdir: Path, shards: Sequence[Shard], name: str) -> int:
    """Write WORKDIR/name from every shard's table of that name, in the table's row order; the rows written."""
    from hbr.files import write_tsv_rows

    key_columns = ROW_KEYS.get(name, IMAGE_KEY)
    header: Optional[list[str]] = None
    rows: list[list[str]] = []
    for shard in shards:
        path = shard.folder(workdir) / name
        if not path.is_file():
            raise HbrError(f"{path}: not found although shard {shard} finished; re-run it with --shard {shard}")
        columns, shard_rows = _read_rows(path)
        if header is None:
            header = columns
        elif columns != header:
            raise HbrError(f"{path}: other columns than {shards[0].folder(workdir) / name}; "
                           f"re-run shard {shard} with this hbr version")
        rows += shard_rows
    assert header is not None  # at least one shard
    missing = [c for c in key_columns or () if c not in header]
    if missing:
        raise HbrError(f"{shards[0].folder(workdir) / name}: no column {', '.join(missing)}")
    if key_columns is None:
        rows.sort()
    else:
        at = [header.index(c) for c in key_columns]
        rows.sort(key=lambda row: tuple(row[i] if i < len(row) else "" for i in at))
    return write_tsv_rows(workdir / name, header, rows)


def write_shard_map(workdir: Path, shards: Sequence[Shard]) -> int:
    """WORKDIR/shard_map.tsv: the shard folder of every source and image (one row per image,
    and one with an empty Image for a source that gave none); the rows written."""
    from hbr.files import read_tsv, write_tsv_rows

    rows = []
    for shard in shards:
        folder = shard.folder(workdir)
        summary = read_tsv(folder / SUMMARY_TABLE, ["source", "file", "images"])
        images: dict[str, list[str]] = {}
        for source, image in read_tsv(folder / DCM_TABLE, ["folder", "Image"]).itertuples(index=False):
            images.setdefault(source, []).append(image)
        relative = folder.relative_to(workdir).as_posix()
        for source, file, count in summary[["source", "file", "images"]].itertuples(index=False):
            # a source whose name another one took (its ids would clash) decoded no image
            found = images.get(source) if count not in ("", "0") else None
            rows += [(source, file, image, relative) for image in found or [""]]
    rows.sort()
    return write_tsv_rows(workdir / SHARD_MAP, ("source", "file", "Image", "shard"), rows)


@dataclass
class MergeOutcome:
    """What a merge wrote."""

    shards: list[Shard]
    rows: dict[str, int]  # table name -> rows
    problems: list[str]  # the merged run's accounting problems (hbr.ledger)


def merge(workdir: Path, report: bool = True) -> MergeOutcome:
    """Combine the finished shards of `workdir` into its tables (byte for byte what one machine
    would have written), the shard map, hbr_table.tsv and the QC report. Re-runnable."""
    from hbr.ledger import rebuild_results

    workdir = workdir.resolve()
    shards = find_shards(workdir)
    check_same_work(workdir, shards)
    rows = {name: merge_table(workdir, shards, name) for name in run_tables()}
    write_shard_map(workdir, shards)
    images = [image_folders(shard.folder(workdir), TOTAL_BODY)[1] for shard in shards]
    _, _, problems = rebuild_results(workdir, report=report, image_dirs=images)
    return MergeOutcome(shards, rows, problems)


def describe_merge(workdir: Path, outcome: MergeOutcome) -> list[str]:
    """The lines a merge prints: what it combined and where the results are."""
    from hbr.pipeline import HBR_TABLE, result_dir

    count = outcome.shards[0].count
    lines = [f"merged {count} shards of {workdir / SHARDS_DIR}: {outcome.rows[DCM_TABLE]} images "
             f"from {outcome.rows[SUMMARY_TABLE]} sources ({outcome.rows[ERRORS_TABLE]} error lines)"]
    lines += [f"  {name}: {n} rows" for name, n in outcome.rows.items() if name not in ROW_KEYS]
    lines += [f"WARNING: accounting: {p}" for p in outcome.problems]
    lines.append(f"results: {result_dir(workdir) / HBR_TABLE}; images stay in the shard folders "
                 f"(which shard holds what: {workdir / SHARD_MAP})")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m hbr.shards resolve SPEC` prints `I/N<TAB>folder` for 0_pipeline.sh;
    `python -m hbr.shards merge --workdir DIR` merges a sharded run."""
    from hbr.cli import call_reporting_errors

    parser = argparse.ArgumentParser(prog="python -m hbr.shards", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    resolve = commands.add_parser("resolve", help="check a --shard value; print I/N and the shard's folder")
    resolve.add_argument("spec", help="I/N, or N inside a SLURM array task")
    merged = commands.add_parser("merge", help="merge the finished shards of a work directory")
    merged.add_argument("--workdir", type=Path, default=Path("work"), help="the run's work directory")
    merged.add_argument("--no-report", dest="report", action="store_false", help="skip the HTML QC report")
    args = parser.parse_args(argv)
    if args.command == "resolve":
        try:
            shard = parse_shard(args.spec)
        except argparse.ArgumentTypeError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{shard}\t{Path(SHARDS_DIR) / shard.name}")
        return 0
    status, outcome = call_reporting_errors("merge", lambda: merge(args.workdir, args.report))
    if outcome is not None:
        if not outcome.rows[DCM_TABLE]:
            print(f"merge: error: no image was decoded in any shard (reasons: {args.workdir.resolve() / ERRORS_TABLE})",
                  file=sys.stderr)
            return 1
        print("\n".join(describe_merge(args.workdir.resolve(), outcome)))
    return status


if __name__ == "__main__":
    sys.exit(main())
