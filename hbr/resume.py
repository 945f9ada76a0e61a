"""Resumable work in chunks: each finished chunk's rows are kept in a small state file.

A re-run after a kill recomputes only the chunks without a state file; the table is
always assembled from the state files, so an interrupted and an uninterrupted run
give byte-identical tables.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from hbr.errors import HbrError
from hbr.files import read_tsv, write_tsv
from hbr.progress import progress


def _chunk_name(version: str, chunk: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(chunk).encode()).hexdigest()[:12]
    return f"{version}-{digest}.tsv"


def run_chunks(
    items: Sequence[str],
    state_dir: Path,
    version: str,
    chunk_size: int,
    process: Callable[[list[str], Callable[[int], None]], pd.DataFrame],
    desc: str = "",
) -> pd.DataFrame:
    """Apply `process(chunk, advance)` to consecutive chunks of `items`, skipping chunks done
    by an earlier run; `process` may call `advance(n)` as it finishes items within the chunk,
    so progress (hbr.progress) moves between chunks too.

    `state_dir` belongs to one stage; `version` must change whenever the result would
    (e.g. a model or config hash), so a state file is only reused for the same work.
    State files of other versions or other item lists, and temporaries a killed run left, are
    removed at the end.
    """
    if chunk_size < 1:
        raise HbrError(f"chunk size must be at least 1 (predict.chunk_size), got {chunk_size}")
    state_dir.mkdir(parents=True, exist_ok=True)
    parts, used = [], set()
    chunks = [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
    paths = [state_dir / _chunk_name(version, chunk) for chunk in chunks]
    # chunks an earlier run finished count as done from the start, not in the rate
    resumed = sum(len(chunk) for chunk, path in zip(chunks, paths) if path.exists())
    with progress(len(items), desc, "img", initial=resumed) as bar:
        for chunk, path in zip(chunks, paths):
            used.add(path.name)
            if not path.exists():
                advanced = 0

                def advance(n: int) -> None:
                    nonlocal advanced
                    advanced += n
                    bar.update(n)

                write_tsv(path, process(chunk, advance))
                if advanced < len(chunk):
                    bar.update(len(chunk) - advanced)  # what `process` did not count itself
            parts.append(read_tsv(path))
    for stale in state_dir.glob("*.tsv"):  # other versions, and temporaries a killed run left
        if stale.name not in used:
            stale.unlink(missing_ok=True)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
