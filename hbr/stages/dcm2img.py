"""Stage 1: DICOM zips -> Total Body images, dcm_table.tsv, 1_errors.tsv and 1_summary.tsv.

--input is a folder (searched recursively, symbolic links not followed) of zips, .dcm
files and sub-folders of .dcm files; or one zip; or one .dcm file. Each zip is one
source named after the zip (1000003_20158_2_0.zip -> 1000003_20158_2_0); the loose
files of a folder are one source named after the folder; a single .dcm file's source
is named after its folder. Zips are read in memory (never unzipped to disk). Only
images whose ProtocolName is dicom.protocol ("Total Body") are decoded, and saved as
WORKDIR/1_Total_Body_npy/{source}_{InstanceNumber}.npy (the exact DICOM pixels) and
WORKDIR/1_Total_Body_png/ (same pixels; 16-bit PNG for more than 8 bits).

Every member of every source ends in exactly one place: an image row of
dcm_table.tsv, a skipped count (other protocols, "(none)" without ProtocolName) or a
known non-image file (UK Biobank's manifest.cvs) in 1_summary.tsv, or a line of
1_errors.tsv with the reason. Where a manifest lists the DICOM files of its zip, a listed
file the zip lacks is one more line of 1_errors.tsv (counted in 1_summary.tsv's
`missing`). A killed run resumes: each finished source is recorded in
WORKDIR/.state/1_dcm2img/, and a re-run converts only the others, then rebuilds the
tables, byte-identical to a run without interruption.

An input whose files give no image at all ends the stage with exit status 1 and the count
of files tried, since nothing would be left for the later stages (an input folder without
any file is refused as well: most likely a wrong path). A shard (--shard) is another
case: one with no source assigned to it is done, with exit 0, and one whose files give no
image warns and exits 0 (the merge fails when no shard decoded an image).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import stat
import zipfile
import zlib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence

from pydicom.dataset import Dataset

from hbr import cli, pipeline
from hbr.config import DicomConfig
from hbr.dicom import (
    DECIDING_TAGS,
    HEADER_PREFIX_BYTES,
    TABLE_COLUMNS,
    UnreadableDicom,
    decode_pixels,
    image_id,
    metadata_row,
    png_pixels,
    protocol_name,
    read_header,
)
from hbr.errors import HbrError
from hbr.files import (
    TMP_PREFIX,
    remove_stale,
    tsv_writer,
    write_npy,
    write_png,
    write_text,
    write_tsv_rows,
)
from hbr.memory import PeriodicRelease
from hbr.shards import Shard
from hbr.progress import progress as progress_counter

STAGE = pipeline.stage(1).name
NPY_DIR, PNG_DIR = (folder.name for folder in pipeline.image_folders(Path(), pipeline.TOTAL_BODY))
TABLE_FILE = pipeline.DCM_TABLE
ERRORS_FILE = pipeline.ERRORS_TABLE
SUMMARY_FILE = pipeline.SUMMARY_TABLE
STATE_DIR = Path(pipeline.STATE_DIR) / STAGE
ERROR_COLUMNS = ("file", "member", "reason")
# other_files: known non-image members (manifest.cvs=1); missing: DICOM files a manifest lists
# that the source lacks (each also an error line). Per source:
# members == images + skipped + other_files + errors - missing (hbr.ledger checks it)
SUMMARY_COLUMNS = ("source", "file", "members", "images", "skipped", "errors", "other_files", "missing")
STATE_VERSION = 2  # bump when the content of a state file changes meaning
MB = 2**20

# Members known not to be images. UK Biobank's zips carry a small CSV listing their DICOM
# files, named manifest.cvs (sic) in the real files; manifest.csv is taken alike.
MANIFEST_NAMES = frozenset({"manifest.cvs", "manifest.csv"})

# zipfile/zlib failures while reading a member: bad CRC or stream, truncated archive,
# encryption (RuntimeError), unsupported compression method (NotImplementedError).
_MEMBER_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)
_ZIP_OPEN_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError)


@dataclass(frozen=True, slots=True)  # one per zip, kept for the whole run
class Source:
    """One unit of work: a zip, the loose files of a folder, or one file.

    `kind` is 'zip', 'folder' (the regular files directly in `path`, not its
    sub-folders or zips) or 'file'. `signature` changes when the input changes, so a
    recorded result is only reused for the same input.
    """

    kind: str
    stem: str
    path: str
    signature: str


@dataclass
class SourceResult:
    """What converting one source produced: table rows, error rows and a summary row."""

    rows: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    members: int = 0
    images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)  # known non-image members by name
    missing: int = 0  # files a manifest lists that the source lacks (also error rows)

    def error(self, file: str, member: str, reason: str) -> None:
        """Record one unusable item (tabs and line breaks become spaces, to keep the TSV sane)."""
        self.errors.append(
            {"file": _one_line(file), "member": _one_line(member), "reason": _one_line(reason)}
        )

    def summary(self, source: Source) -> dict[str, str]:
        """The 1_summary.tsv row of this source."""
        return {
            "source": source.stem,
            "file": source.path,
            "members": str(self.members),
            "images": str(self.images),
            "skipped": format_skipped(self.skipped),
            "errors": str(len(self.errors)),
            "other_files": format_skipped(self.other),
            "missing": str(self.missing),
        }


@dataclass
class StageResult:
    """Totals of a stage-1 run, for the printed summary and for callers of run_stage."""

    workdir: Path
    sources: int = 0
    resumed: int = 0
    members: int = 0
    images: int = 0
    errors: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    other: collections.Counter = field(default_factory=collections.Counter)
    missing: int = 0

    def add(self, result: SourceResult) -> None:
        """Count one source's result."""
        self.sources += 1
        self.members += result.members
        self.images += result.images
        self.errors += len(result.errors)
        self.skipped.update(result.skipped)
        self.other.update(result.other)
        self.missing += result.missing


def _one_line(text: str) -> str:
    return " ".join(text.split()) if any(c in text for c in "\t\r\n") else text


def format_skipped(skipped: dict[str, int]) -> str:
    """Counts by name as 'AP Spine=1;LVA=1' (sorted by name): skipped protocols, other files."""
    return ";".join(f"{name}={count}" for name, count in sorted(skipped.items()))


# ---------------------------------------------------------------- finding the sources


def _folder_members(folder: Path) -> list[os.DirEntry]:
    """The entries of a folder that belong to its own source: all but sub-folders and zips.

    Symbolic links and special files are members too, so that they are reported.
    """
    members = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                continue
            if entry.is_file(follow_symlinks=False) and entry.name.lower().endswith(".zip"):
                continue
            members.append(entry)
    return sorted(members, key=lambda e: e.name)


def _stat_signature(st: os.stat_result) -> str:
    return f"{st.st_mode:o}:{st.st_size}:{st.st_mtime_ns}"


def _folder_signature(members: Sequence[os.DirEntry]) -> str:
    digest = hashlib.sha256()
    for entry in members:
        digest.update(f"{entry.name}\0{_stat_signature(entry.stat(follow_symlinks=False))}\n".encode())
    return digest.hexdigest()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def discover_sources(input_path: Path, workdir: Path) -> list[Source]:
    """The sources under `input_path` (absolute), sorted by path; the work directory is skipped.

    A folder is searched recursively without following symbolic links: each zip is a
    source, and the other files of each folder (if any) are one more source.
    """
    if not input_path.is_dir():
        st = input_path.stat()
        if input_path.name.lower().endswith(".zip"):
            return [Source("zip", input_path.stem, str(input_path), _stat_signature(st))]
        stem = input_path.parent.name or "input"
        return [Source("file", stem, str(input_path), _stat_signature(st))]
    sources = []
    pending = [input_path]
    while pending:
        folder = pending.pop()
        stem = folder.name or "input"
        try:
            members = _folder_members(folder)
            folder_signature = _folder_signature(members)
            # one entry at a time: a list of 6,000 entries raised stage 1's peak by ~5 MB
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        path = Path(entry.path)
                        if not _inside(path, workdir):
                            pending.append(path)
                    elif entry.is_file(follow_symlinks=False) and entry.name.lower().endswith(".zip"):
                        zip_signature = _stat_signature(entry.stat(follow_symlinks=False))
                        sources.append(Source("zip", Path(entry.name).stem, entry.path, zip_signature))
        except OSError:
            # Reported by convert_source, which tries to list it again.
            sources.append(Source("folder", stem, str(folder), "unlistable"))
            continue
        if members:
            sources.append(Source("folder", stem, str(folder), folder_signature))
    return sorted(sources, key=lambda s: (s.path, s.kind))


# ---------------------------------------------------------------- reading members


@dataclass(frozen=True)
class _Member:
    """A zip member or a plain file, readable as bytes; names are labels, never paths to write."""

    file: str  # the file on disk, for 1_errors.tsv
    name: str  # the member name inside a zip ('' for a plain file)
    declared_size: int
    open: Callable[[], BinaryIO]
    problem: str = ""  # why it cannot be read at all (symbolic link, special file)


def _read(member: _Member, limit: int) -> bytes:
    """At most `limit` bytes of a member: a bounded read, since sizes in zip headers can lie."""
    try:
        with member.open() as fh:
            return fh.read(limit)
    except _MEMBER_READ_ERRORS as exc:
        raise UnreadableDicom(f"cannot read ({type(exc).__name__}: {exc})") from None


def _zip_members(archive: zipfile.ZipFile, path: str) -> list[_Member]:
    return [
        _Member(path, info.filename, info.file_size, lambda info=info: archive.open(info))
        for info in archive.infolist()
        if not info.is_dir()
    ]


def _open_no_follow(path: str) -> BinaryIO:
    # O_NOFOLLOW: if the file became a symbolic link since it was listed, refuse it.
    return os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")


def _file_member(path: str) -> _Member:
    problem, size = "", 0
    try:
        st = os.lstat(path)
        size = st.st_size
        if stat.S_ISLNK(st.st_mode):
            problem = "symbolic link, not followed"
        elif not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
    except OSError as exc:
        problem = f"cannot read ({type(exc).__name__}: {exc.strerror})"
    return _Member(path, "", size, lambda: _open_no_follow(path), problem)


def _list_members(source: Source, stack: contextlib.ExitStack) -> list[_Member]:
    """The members of a source (a zip stays open on `stack` while they are read).

    Raises OSError / BadZipFile when the source cannot be opened or listed.
    """
    if source.kind == "zip":
        archive = stack.enter_context(zipfile.ZipFile(source.path))
        return _zip_members(archive, source.path)
    if source.kind == "folder":
        return [_file_member(entry.path) for entry in _folder_members(Path(source.path))]
    return [_file_member(source.path)]


def _too_big(size: int, limit: int) -> str:
    return (
        f"over the size limit: {size / MB:.1f} MB or more uncompressed, "
        f"limit {limit / MB:g} MB (dicom.max_member_mb)"
    )


def _read_checked(member: _Member, limit: int) -> bytes:
    """The whole member, refusing one that inflates beyond `limit` bytes."""
    data = _read(member, limit + 1)
    if len(data) > limit:
        raise UnreadableDicom(_too_big(len(data), limit))
    return data


def _header(member: _Member, limit: int) -> tuple[Dataset, Optional[bytes]]:
    """(the deciding tags, whole member bytes or None when only a prefix was read)."""
    want = min(HEADER_PREFIX_BYTES, limit + 1)
    data = _read(member, want)
    if len(data) > limit:
        raise UnreadableDicom(_too_big(len(data), limit))
    complete = len(data) < want
    ds = read_header(data, complete=complete, tags=DECIDING_TAGS)
    if ds is None:  # the header did not end within the prefix
        data, complete = _read_checked(member, limit), True
        ds = read_header(data, complete=True, tags=DECIDING_TAGS)
    return ds, data if complete else None


# ---------------------------------------------------------------- converting a source


def _convert_member(
    member: _Member,
    source: Source,
    workdir: Path,
    cfg: DicomConfig,
    result: SourceResult,
    seen: dict[str, str],
) -> None:
    """Read one member: skip it, convert it (writing npy + png), or record why not."""
    limit = int(cfg.max_member_mb * MB)
    if member.problem:
        raise UnreadableDicom(member.problem)
    if member.declared_size > limit:
        raise UnreadableDicom(_too_big(member.declared_size, limit))
    header, data = _header(member, limit)
    protocol = protocol_name(header)
    if protocol != cfg.protocol:
        result.skipped[protocol] = result.skipped.get(protocol, 0) + 1
        return
    image = image_id(source.stem, header)
    if image in seen:
        raise UnreadableDicom(f"duplicate image id {image} (InstanceNumber also in {seen[image]})")
    ds, pixels = decode_pixels(data if data is not None else _read_checked(member, limit), limit)
    write_npy(workdir / NPY_DIR / f"{image}.npy", pixels)
    write_png(workdir / PNG_DIR / f"{image}.png", png_pixels(pixels))
    seen[image] = member.name or Path(member.file).name
    result.rows.append(metadata_row(ds, source.stem, image))
    result.images += 1


def convert_source(source: Source, workdir: Path, cfg: DicomConfig) -> SourceResult:
    """Convert one source: write its Total Body npy/png into `workdir`, return its rows.

    Pure apart from those image files (no global state), so a local process pool or a
    distributed engine can call it alike. Problems with the input become error rows;
    only failures to write the outputs (disk full, ...) raise.
    """
    result = SourceResult()
    seen: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        try:
            members = _list_members(source, stack)
        except _ZIP_OPEN_ERRORS as exc:
            # The source cannot be opened or listed at all: it counts as one unreadable item.
            what = "a readable zip file" if source.kind == "zip" else "a readable folder"
            result.members = 1
            result.error(source.path, "", f"not {what} ({type(exc).__name__}: {exc})")
            return result
        listed: dict[str, list[str]] = {}  # manifest name -> the files it lists
        for member in members:
            result.members += 1
            try:
                name = _base_name(member)
                if name.lower() in MANIFEST_NAMES and not member.problem:
                    listed[name] = manifest_listing(_read_checked(member, int(cfg.max_member_mb * MB)))
                    result.other[name] = result.other.get(name, 0) + 1
                    continue
                _convert_member(member, source, workdir, cfg, result, seen)
            except UnreadableDicom as exc:
                result.error(member.file, member.name, str(exc))
        present = {_base_name(member) for member in members}
        for manifest, names in listed.items():
            for name in sorted(set(names) - present):
                result.error(source.path, name, f"listed in {manifest} but not in the {source.kind}")
                result.missing += 1
    result.rows.sort(key=lambda r: r["Image"])
    return result


def _base_name(member: _Member) -> str:
    """A member's file name without folders (zip names use '/', some writers '\\')."""
    return (member.name or os.path.basename(member.file)).replace("\\", "/").rsplit("/", 1)[-1]


# Dates such as "Jul 19, 2018" hold an unquoted comma in the real manifests (as the UK
# Biobank cardiac tools found), which would shift the columns after them.
_MANIFEST_DATE = re.compile(r"\b([A-Z][a-z]{2}) (\d{1,2}), (\d{4})\b")


def manifest_listing(data: bytes) -> list[str]:
    """The file names a manifest lists: its `filename` column, or else every cell that names a
    .dcm file (file names without folders). Text that is not a CSV lists nothing."""
    text = _MANIFEST_DATE.sub(r"\1 \2 \3", data.decode("utf-8", errors="replace"))
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error:
        return []
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "filename" in header:
        column = header.index("filename")
        cells = [row[column] for row in rows[1:] if len(row) > column]
    else:
        cells = [cell for row in rows for cell in row if cell.strip().lower().endswith(".dcm")]
    return [name for name in (cell.strip().replace("\\", "/").rsplit("/", 1)[-1] for cell in cells) if name]


# Sources converted between returns of freed memory to the system (hbr.memory), per
# process: converting 3,000 zips in one process grew it from 93 to 101 MB without, to 94 MB
# with it, at the same speed (after every source: 92 MB, but 10-20 % slower).
TRIM_EVERY = 16
_release_now_and_then = PeriodicRelease(TRIM_EVERY)


def _convert_and_release(source: Source, workdir: Path, cfg: DicomConfig) -> SourceResult:
    """convert_source, as a worker runs it: thousands of sources in one process."""
    result = convert_source(source, workdir, cfg)
    _release_now_and_then()
    return result


# ---------------------------------------------------------------- resume state


def _state_path(workdir: Path, source: Source) -> Path:
    key = hashlib.sha256(f"{source.kind}\0{source.path}".encode()).hexdigest()[:16]
    return workdir / STATE_DIR / f"{source.stem[:80]}-{key}.json"


def _fingerprint(source: Source, cfg: DicomConfig) -> dict:
    """What a recorded result depends on; a state with another fingerprint is redone."""
    return {
        "version": STATE_VERSION,
        "kind": source.kind,
        "path": source.path,
        "stem": source.stem,
        "signature": source.signature,
        "protocol": cfg.protocol,
        "max_member_mb": cfg.max_member_mb,
    }


def _save_state(workdir: Path, source: Source, cfg: DicomConfig, result: SourceResult) -> None:
    state = {
        "fingerprint": _fingerprint(source, cfg),
        "rows": result.rows,
        "errors": result.errors,
        "members": result.members,
        "images": result.images,
        "skipped": result.skipped,
        "other": result.other,
        "missing": result.missing,
    }
    write_text(_state_path(workdir, source), json.dumps(state, separators=(",", ":")))


def _load_state(
    workdir: Path, source: Source, cfg: DicomConfig, check_images: bool = True
) -> Optional[SourceResult]:
    """The recorded result of a source, or None when absent, stale, or (checked) its images are gone."""
    path = _state_path(workdir, source)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable or half-written by something else: redo the source
    if not isinstance(state, dict) or state.get("fingerprint") != _fingerprint(source, cfg):
        return None
    result = SourceResult(
        rows=state["rows"],
        errors=state["errors"],
        members=state["members"],
        images=state["images"],
        skipped=state["skipped"],
        other=state["other"],
        missing=state["missing"],
    )
    for row in result.rows if check_images else ():
        image = row["Image"]
        npy, png = workdir / NPY_DIR / f"{image}.npy", workdir / PNG_DIR / f"{image}.png"
        if not (npy.is_file() and png.is_file()):
            return None
    return result


def _remove_temporaries(folder: Path) -> None:
    """Delete temporary files a killed run left behind (complete files are renamed, never left)."""
    if folder.is_dir():
        for path in folder.glob(f"{TMP_PREFIX}*"):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- running


def _run_pending(
    pending: Sequence[Source],
    workdir: Path,
    cfg: DicomConfig,
    on_result: Callable[[Source, SourceResult], None],
) -> None:
    """Convert sources in worker processes (cfg.workers; 0 = here), results as they finish.

    At most a few sources per worker are queued at a time, so memory does not grow
    with the number of zips.
    """
    if cfg.workers <= 0 or len(pending) <= 1:
        for source in pending:
            on_result(source, _convert_and_release(source, workdir, cfg))
        return
    workers = min(cfg.workers, len(pending))
    queue = iter(pending)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        in_flight = {}

        def top_up() -> None:
            while len(in_flight) < 4 * workers:
                source = next(queue, None)
                if source is None:
                    return
                in_flight[pool.submit(_convert_and_release, source, workdir, cfg)] = source

        try:
            top_up()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    source = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise HbrError(
                            f"a worker process died while reading {source.path} (out of memory?); "
                            "finished sources are kept, re-run to continue"
                        ) from None
                    on_result(source, result)
                top_up()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # start nothing more after an error or Ctrl-C
            raise


def _duplicate_stems(sources: Sequence[Source]) -> tuple[list[Source], dict[Source, SourceResult]]:
    """Split off sources whose name is already taken (their image ids would clash)."""
    first: dict[str, Source] = {}
    unique, clashing = [], {}
    for source in sources:
        if source.stem in first:
            result = SourceResult(members=1)
            result.error(
                source.path, "", f"source name {source.stem!r} is also used by {first[source.stem].path}; "
                "not converted (image ids would clash)"
            )
            clashing[source] = result
        else:
            first[source.stem] = source
            unique.append(source)
    return unique, clashing


def _write_tables(workdir: Path, results: Iterable[tuple[Source, SourceResult]], outcome: StageResult) -> set[str]:
    """Write dcm_table.tsv, 1_errors.tsv and 1_summary.tsv; add the results to `outcome`;
    return the image ids.

    dcm_table and 1_summary are written as the results come, so give them in table order:
    by source name and path, and within a source by image id (as convert_source sorts
    them). That is the image ids' own order when the source names have one length, as UK
    Biobank's do, and memory does not grow with the images. 1_errors (rows for broken
    input only) is sorted here.
    """
    images: set[str] = set()
    errors = []
    with tsv_writer(workdir / TABLE_FILE, TABLE_COLUMNS) as table_row, \
            tsv_writer(workdir / SUMMARY_FILE, SUMMARY_COLUMNS) as summary_row:
        for source, result in results:
            for row in result.rows:
                images.add(row["Image"])
                table_row([row.get(c, "") for c in TABLE_COLUMNS])
            errors.extend(tuple(error[c] for c in ERROR_COLUMNS) for error in result.errors)
            summary = result.summary(source)
            summary_row([summary[c] for c in SUMMARY_COLUMNS])
            outcome.add(result)
    errors.sort()  # by file, member, reason
    write_tsv_rows(workdir / ERRORS_FILE, ERROR_COLUMNS, errors)
    return images


def _resolve_input(input_path: Path, workdir: Path) -> Path:
    if not os.path.lexists(input_path):
        raise HbrError(f"--input {input_path}: no such file or folder")
    resolved = input_path.resolve()  # the path given on the command line is followed, links inside are not
    if not resolved.exists():
        raise HbrError(f"--input {input_path}: broken symbolic link")
    if resolved == workdir:
        raise HbrError(f"--input {input_path} is the work directory; give the folder of zips")
    return resolved


def run_stage(
    input_path: str | Path, workdir: str | Path, cfg: DicomConfig, progress: bool = True,
    shard: Optional[Shard] = None,
) -> StageResult:
    """Run stage 1 on `input_path` into `workdir`; resumes from recorded sources. With a
    `shard`, only the sources it holds (none is fine: the tables are written empty).

    Raises HbrError when the input does not exist or holds nothing to read (the
    three tables are then written empty, and existing images are left alone).
    """
    workdir = Path(workdir).resolve()
    input_path = _resolve_input(Path(input_path), workdir)
    sources = discover_sources(input_path, workdir)
    if not sources:
        _write_tables(workdir, (), StageResult(workdir=workdir))
        raise HbrError(
            f"--input {input_path}: no zip, DICOM file or folder found; wrote empty tables in {workdir}"
        )
    if shard is not None:
        total = len(sources)
        sources = [source for source in sources if shard.holds(source.stem)]
        print(f"{STAGE}: shard {shard}: {len(sources)} of the input's {total} sources")
    sources, clashing = _duplicate_stems(sources)
    _remove_temporaries(workdir / STATE_DIR)
    pending = [source for source in sources if _load_state(workdir, source, cfg) is None]
    outcome = StageResult(workdir=workdir, resumed=len(sources) - len(pending))

    with progress_counter(len(sources), STAGE, "sources", initial=outcome.resumed, enabled=progress) as bar:

        def record(source: Source, result: SourceResult) -> None:
            # The result is not kept here: the tables are rebuilt from the state files.
            _save_state(workdir, source, cfg, result)
            bar.update(1)

        _run_pending(pending, workdir, cfg, record)

    def recorded() -> Iterator[tuple[Source, SourceResult]]:
        # Every table row comes from a state file, so a resumed run writes the same bytes;
        # in the tables' order (a clashing source has a summary row but no images)
        for source in sorted([*sources, *clashing], key=lambda s: (s.stem, s.path)):
            if source in clashing:
                yield source, clashing[source]
                continue
            result = _load_state(workdir, source, cfg, check_images=False)
            if result is None:
                raise HbrError(f"lost the result of {source.path} (were outputs deleted during the run?); re-run")
            yield source, result

    images = _write_tables(workdir, recorded(), outcome)
    # The image folders mirror the table: files of sources no longer in the input, and
    # temporaries of a killed run, go. They exist even when empty, for the next stage.
    for folder, suffix in ((NPY_DIR, ".npy"), (PNG_DIR, ".png")):
        (workdir / folder).mkdir(exist_ok=True)
        remove_stale(workdir / folder, {f"{image}{suffix}" for image in images})
    return outcome


def describe(outcome: StageResult) -> str:
    """The one-paragraph summary printed at the end of a run."""
    def counted(counts: collections.Counter) -> str:
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
        return f" ({kinds})" if kinds else ""

    w = outcome.workdir
    other = sum(outcome.other.values())
    others = f"{other} known non-image files{counted(outcome.other)}, " if other else ""
    missing = f", {outcome.missing} listed in a manifest but missing" if outcome.missing else ""
    return (
        f"{STAGE}: {outcome.sources} sources ({outcome.resumed} already done earlier), "
        f"{outcome.members} members: {outcome.images} Total Body images decoded, "
        f"{sum(outcome.skipped.values())} other images skipped{counted(outcome.skipped)}, {others}"
        f"{outcome.errors - outcome.missing} unreadable{missing}"
        f"{f' (reasons in {w / ERRORS_FILE})' if outcome.errors else ''}. "
        f"Table: {w / TABLE_FILE}; per source: {w / SUMMARY_FILE}; "
        f"images: {w / NPY_DIR}/ and {w / PNG_DIR}/."
    )


def check_some_images(outcome: StageResult, input_path: Path, protocol: str) -> None:
    """HbrError when the input's files gave no image at all: the later stages would have
    nothing to work on, and an exit status 0 would hide it (e.g. a folder of .txt files)."""
    if outcome.images:
        return
    w = outcome.workdir
    why = []
    if outcome.errors:
        why.append(f"{outcome.errors} unreadable, reasons in {w / ERRORS_FILE}")
    if outcome.skipped:
        why.append(f"{sum(outcome.skipped.values())} of other protocols, see {w / SUMMARY_FILE}")
    if outcome.other:
        why.append(f"{sum(outcome.other.values())} known non-image files")
    raise HbrError(f"--input {input_path}: no {protocol} image in {outcome.members} file(s) tried "
                   f"({'; '.join(why)})")


def run(ctx: cli.Context) -> StageResult:
    """Run stage 1 from the command line and print its summary; exit 1 when no image came out."""
    shard = ctx.options.shard
    outcome = run_stage(ctx.options.input, ctx.workdir, ctx.cfg.dicom, shard=shard)
    print(describe(outcome))
    if shard is None:
        check_some_images(outcome, ctx.options.input, ctx.cfg.dicom.protocol)
    elif outcome.sources and not outcome.images:
        # not a failure of the task: one would stop the merge of every other shard (which
        # fails instead when no shard decoded an image)
        print(f"{STAGE}: WARNING: shard {shard}: no {ctx.cfg.dicom.protocol} image in {outcome.members} file(s)")
    return outcome


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (1_dcm2img.py)."""
    return cli.entry(pipeline.stage(1), argv)


if __name__ == "__main__":
    raise SystemExit(main())
