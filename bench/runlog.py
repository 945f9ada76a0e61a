"""What the resumable benchmarks share: one JSON line per finished unit of work, and stage
scripts run as subprocesses with their output logged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def read_results(path: Path, prog: str) -> list[dict]:
    """The finished units' lines (a torn last line of a killed run is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"{prog}: {path}: skipping an unreadable line (a run stopped while writing it?)")
    return records


def append_result(path: Path, record: dict) -> None:
    """Append one unit's line in one write, flushed: a kill leaves whole lines only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_script(script: str, args: list[str], log: Path, prog: str) -> float:
    """Run a stage script of the repository with this Python in its own process group, output to
    `log`; the seconds it took. Exits with the log's tail when the stage fails (a unit with a
    failed stage is not recorded).

    On an interrupt (Ctrl-C, or SIGTERM turned into one) the whole group is killed, so a
    stopped benchmark leaves no stage running (stage 1's readers are processes of their own).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO_ROOT / script), *args]
    start = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(" ".join(command) + "\n")
        fh.flush()
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-12:])
        sys.exit(f"{prog}: {script} {' '.join(args[:3])} failed (exit {code}; log {log}):\n{tail}")
    return time.perf_counter() - start


def stage_args(args, workdir: Path) -> list[str]:
    """Options every stage takes: work directory, and the benchmark's --config, --device and --set."""
    out = ["--workdir", str(workdir), "--config", str(args.config), "--device", args.device]
    for override in args.set:
        out += ["--set", override]
    return out


def git_commit() -> str:
    """The repository's commit (for the record), or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
