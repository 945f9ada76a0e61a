#!/usr/bin/env python3
"""Demo wall time (issue 24): `0_pipeline.sh --demo` of one or more git revisions, one after
the other on this machine, with the CPU's flags, per-stage times, the ratio of each run's
total to the first's, and the demo's held-out accuracy lines. A benchmark, not a test.

    python bench/demo_time.py [--revisions REV ...] [--isa avx2|native] [--unseen SEED N] [--out DIR]

After each demo its models predict an unseen phantom set (seed 7, 150 participants) with
bench/accuracy.py, scored on its held-out split: the accuracy lines marked "unseen seed".

Each revision is checked out into a temporary git worktree and run with this repository's
.venv on PATH, exactly as `make demo` runs it (a fresh demo work directory, every model
trained from scratch). `--isa avx2` runs it as on a CPU without native bfloat16:
oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) and `runtime.cpu_bf16=false` (float32
models), so a machine with AVX-512 or AMX measures the float32 path the issue is about; the
clock speed stays this machine's. `--isa native` runs each revision as `make demo` would here.

Resumable: each revision's driver lines (stage times, accuracy) go to OUT/demo_<rev>_<isa>.log
(the whole output to a .partial file while it runs), and a log that
ends with the driver's "== finished in" line is read instead of run again (delete it to
re-measure). The table is printed and written to OUT/demo_time_<isa>.txt. Run the
revisions in one invocation (or right after one another): these machines drift by about
1.4x from day to day, so only ratios measured side by side mean something.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import accuracy  # noqa: E402  (bench/accuracy.py, beside this script)
from hbr.config import this_cpu_flags  # noqa: E402
STAGE_DONE = re.compile(r"^== stage (\d) done in (\d+) s \(log: .*/logs/(\S+)\.log\)")
FINISHED = re.compile(r"^== finished in (\d+) min (\d+) s")
ACCURACY = re.compile(r"(balanced accuracy|IoU median|centre error median|LHR relative error median|"
                      r"with a missing landmark)")
UNSEEN = "unseen seed"  # prefix of the accuracy lines of the demo's models on another phantom seed


def cpu_summary() -> str:
    """Model name and the vector/matrix flags that decide the CPU's float32 and bfloat16 speed."""
    model = "unknown CPU"
    try:
        model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    except OSError:
        pass
    flags = this_cpu_flags()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"


def run_demo(rev: str, isa: str, log: Path, unseen: tuple[int, int]) -> None:
    """Run `0_pipeline.sh --demo` of `rev` in a temporary worktree, then the revision's
    pipeline with the demo's models on an unseen phantom (seed, participants), scored with
    bench/accuracy.py; the output goes to `log`."""
    env = dict(os.environ, PATH=f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    overrides = ["runtime.cpu_bf16=false"] if isa == "avx2" else []
    with tempfile.TemporaryDirectory(prefix="hbr-demo-time-") as tmp:
        tree, demo, other = Path(tmp) / "tree", Path(tmp) / "demo_work", Path(tmp) / "unseen"
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            partial = log.with_suffix(".partial")
            with open(partial, "w") as out:
                out.write(f"# revision {rev} ({git_describe(rev)}), isa {isa}, started {time.ctime()}\n")
                out.flush()
                subprocess.run(["bash", "0_pipeline.sh", "--demo", "--workdir", str(demo),
                                *(arg for value in overrides for arg in ("--set", value))],
                               cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
                seed, n = unseen
                phantom = accuracy.make_phantom(other / "phantom", n, seed)
                accuracy.run_pipeline(other, phantom, tree / "configs" / "demo.yaml", "cpu", demo / "models",
                                      overrides, repo=tree)
                truth = accuracy.read_table(phantom / "ground_truth.tsv", ["Image", "split"])
                missing = [line for line in (other / "logs" / "bench_pipeline.log").read_text().splitlines()
                           if "with a missing landmark" in line]
                for line in accuracy.score(other, truth) + missing:
                    if ACCURACY.search(line):
                        out.write(f"{UNSEEN} {seed}, {n} participants: {line.strip()}\n")
            # the driver's stage lines and the accuracy lines are what the table reads; the
            # epoch lines of every training stay in the demo's own logs
            kept = [line for line in partial.read_text().splitlines()
                    if line.startswith(("#", "==", UNSEEN)) or ACCURACY.search(line)]
            log.write_text("\n".join(kept) + "\n")
            partial.unlink()
        finally:
            subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def git_describe(rev: str) -> str:
    """The short hash and subject of a revision."""
    return subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %s", rev],
                          capture_output=True, text=True, check=True).stdout.strip()[:100]


def read_log(log: Path) -> dict:
    """Total seconds, per-run seconds (stage log names) and accuracy lines of a finished demo log."""
    total, stages, scores = None, {}, []
    for line in log.read_text().splitlines():
        if m := STAGE_DONE.match(line):
            stages[m.group(3)] = int(m.group(2))
        elif m := FINISHED.match(line):
            total = 60 * int(m.group(1)) + int(m.group(2))
        elif ACCURACY.search(line) and not line.startswith("#"):
            scores.append(line.strip())
    return {"total": total, "stages": stages, "accuracy": scores}


def finished(log: Path) -> bool:
    """Whether `log` holds a whole demo run (the driver's last line)."""
    return log.is_file() and any(FINISHED.match(line) for line in log.read_text().splitlines())


def table(revs: list[str], runs: list[dict], isa: str) -> str:
    """The report: CPU, per-stage seconds per revision, totals and ratios, accuracy lines."""
    names = sorted({n for r in runs for n in r["stages"]}, key=lambda n: (n[0], n))
    lines = [f"# python bench/demo_time.py --isa {isa} --revisions {' '.join(revs)}",
             f"# {cpu_summary()}", f"# measured {time.strftime('%Y-%m-%d')}, one run of each, in this order", ""]
    lines.append("| stage run | " + " | ".join(revs) + " |")
    lines.append("|---" * (len(revs) + 1) + "|")
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r['stages'].get(name, '-')} s" for r in runs) + " |")
    first = runs[0]["total"]
    lines.append("| **total** | " + " | ".join(
        f"**{r['total'] // 60} min {r['total'] % 60} s** ({r['total'] / first:.2f}x)" for r in runs) + " |")
    for rev, r in zip(revs, runs):
        lines += ["", f"held-out accuracy, {rev}:"] + [f"    {a}" for a in r["accuracy"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", nargs="+", default=["HEAD"], help="git revisions, the baseline first")
    parser.add_argument("--isa", choices=("avx2", "native"), default="avx2")
    parser.add_argument("--unseen", type=int, nargs=2, default=(7, 150), metavar=("SEED", "N"),
                        help="phantom seed and participants of the unseen set the demo's models predict")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "demo_time")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.isa == "avx2":
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # for every process this run starts
    runs = []
    for rev in args.revisions:
        log = args.out / f"demo_{rev}_{args.isa}.log"
        if not finished(log):
            print(f"demo_time: running the demo of {rev} ({git_describe(rev)}) -> {log}", flush=True)
            run_demo(rev, args.isa, log, tuple(args.unseen))
        run = read_log(log)
        if run["total"] is None:
            print(f"demo_time: {log}: the demo of {rev} did not finish; see the log", file=sys.stderr)
            return 1
        runs.append(run)
    report = table(args.revisions, runs, args.isa)
    (args.out / f"demo_time_{args.isa}.txt").write_text(report)
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
