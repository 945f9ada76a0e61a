"""slurm/submit.sh on a real single-node SLURM cluster started on this machine (issue 23).

`make test-slurm` installs Debian's slurm-wlm and munge when they are missing, then runs
this; `make test` does not (it never installs system packages or starts daemons). The
cluster is private to the test: its own munge key and socket, a generated slurm.conf for
this host (proctrack/linuxproc, no cgroups) on free ports, and every daemon stopped at the
end. Where the daemons cannot start, the test is skipped and says why.

One tiny phantom set: a local run trains the models and gives the reference tables; then
slurm/submit.sh submits the shards as a job array and the merge after them. One task is
cancelled while it runs and re-submitted alone, as the README tells, and the merge is
submitted again after it. The merged tables must equal the local run's, byte for byte.
Set HBR_SLURM_REPORT=FILE to keep the test's timings and comparison in FILE.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tiny import DEMO_CONFIG, N_PARTICIPANTS, REPO_ROOT, SETS, STAGE_TABLES

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo")
ZIPS_PER_TASK = 9  # the phantom's 26 zips in 3 tasks
START_TIMEOUT_S = 60
RUN_TIMEOUT_S = 900


def find(program: str) -> Optional[str]:
    """A program on PATH or in /usr/sbin (daemons are not on a user's PATH)."""
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """A running single-node cluster: the environment its client commands need."""

    root: Path
    env: dict

    def run(self, *command: str, timeout: float = 60) -> str:
        """A SLURM command's stdout (CalledProcessError when it fails)."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True,
                              timeout=timeout).stdout

    def jobs(self) -> set[str]:
        """Ids of the jobs (and array tasks) still queued or running."""
        return set(self.run("squeue", "-h", "-r", "-o", "%i").split())

    def wait_for(self, jobs: set[str], timeout: float = RUN_TIMEOUT_S) -> None:
        """Until none of `jobs` (ids or array job ids) is in the queue."""
        end = time.monotonic() + timeout
        while any(j == w or j.startswith(f"{w}_") for j in self.jobs() for w in jobs):
            if time.monotonic() > end:
                pytest.fail(f"SLURM jobs {jobs} still queued after {timeout} s:\n{self.run('squeue')}")
            time.sleep(1)


def slurm_conf(root: Path, host: str) -> str:
    """slurm.conf of a one-node cluster on this host, everything under `root`."""
    return "\n".join([
        "ClusterName=hbrtest",
        f"SlurmctldHost={host}",
        f"SlurmUser={os.environ.get('USER', 'root') if os.getuid() else 'root'}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root / 'munge.socket'}",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",  # no cgroups: works in a container
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",  # one task per CPU, several on the node
        "MpiDefault=none",
        "ReturnToService=2",
        f"NodeName={host} CPUs={os.cpu_count() or 1} State=UNKNOWN",
        f"PartitionName=hbr Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _log_tail(root: Path) -> str:
    return "\n".join(f"{p.name}: {p.read_text(errors='replace')[-600:]}" for p in sorted(root.glob("*.log")))


def stop(root: Path) -> None:
    """Stop the daemons started from `root` (by their pid files)."""
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = root / f"{name}.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
        except (OSError, ValueError):
            pass  # not started, or gone already


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Start munged, slurmctld and slurmd for this test; stop them at the end."""
    missing = [p for p in DAEMONS + COMMANDS if find(p) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): run `make test-slurm`, which installs "
                    "Debian's slurm-wlm and munge")
    if os.getuid() != 0:
        pytest.skip("slurmd must run as root to start jobs; run `make test-slurm` as root (as CI does)")
    # a short path: the munge socket's path must fit in a Unix socket address
    root = Path(subprocess.run(["mktemp", "-d", "/tmp/hbr-slurm.XXXXXX"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (root / "state").mkdir()
    (root / "spool").mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run([find("munged"), "--force", f"--socket={root / 'munge.socket'}", f"--key-file={key}",
                        f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
                        f"--seed-file={root / 'munged.seed'}"], check=True, capture_output=True, timeout=30)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([find(daemon), "-f", str(conf)], env=env, check=True, capture_output=True, timeout=30)
        started = Cluster(root, env)
        end = time.monotonic() + START_TIMEOUT_S
        while "idle" not in started.run("sinfo", "-h", "-o", "%t"):
            if time.monotonic() > end:
                raise TimeoutError(f"the node is not idle after {START_TIMEOUT_S} s")
            time.sleep(0.5)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, TimeoutError, OSError) as exc:
        stop(root)
        pytest.skip(f"a single-node SLURM cannot start on this machine ({exc}); logs: {_log_tail(root)}")
    try:
        yield started
    finally:
        # jobs still running (after a failure) end before their daemons do: else their
        # slurmstepd processes would wait for a slurmd that is gone
        try:
            started.run("scancel", "--user", os.environ.get("USER", "root"))
            started.wait_for(started.jobs(), timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        finally:
            stop(root)
            shutil.rmtree(root, ignore_errors=True)


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=REPO_ROOT, **kwargs)
    assert result.returncode == 0, f"{' '.join(result.args)}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def submitted_jobs(output: str) -> tuple[str, str]:
    """(array job id, merge job id) from submit.sh's output."""
    line = next(line for line in output.splitlines() if line.startswith("array job "))
    words = line.split()
    return words[2], words[words.index("merge") + 2]


def resubmit_command(workdir: Path, task: int) -> list[str]:
    """The command submit.sh printed for re-submitting one task, for task `task`."""
    lines = (workdir / "logs" / "slurm_submit.txt").read_text().splitlines()
    line = lines[lines.index(next(l for l in lines if l.startswith("if a task fails"))) + 1]
    return [word.replace("--array=I", f"--array={task}") for word in line.split()]


def test_array_with_a_killed_task_merges_to_the_local_tables(cluster: Cluster, tmp_path: Path):
    report = []
    env = {**cluster.env, "PYTHON": str(Path(REPO_ROOT / ".venv" / "bin" / "python"))}
    start = time.monotonic()
    local = tmp_path / "local"  # trains the models, and is the reference
    run(["bash", REPO_ROOT / "0_pipeline.sh", "--demo", "--demo-size", N_PARTICIPANTS, "--workdir", local, *SETS],
        env=env, timeout=RUN_TIMEOUT_S)
    report.append(f"local run ({N_PARTICIPANTS} participants, training the tiny models): "
                  f"{time.monotonic() - start:.0f} s")

    workdir = tmp_path / "sharded"
    start = time.monotonic()
    submitted = run(["bash", REPO_ROOT / "slurm" / "submit.sh", "--input", local / "phantom" / "zips",
                     "--workdir", workdir, "--models", local / "models", "--zips-per-task", ZIPS_PER_TASK,
                     "--cpus", 1, "--time", "30:00", "--config", DEMO_CONFIG, *SETS], env=env)
    assert "3 tasks of up to 9 zips" in submitted.stdout, submitted.stdout
    array_job, merge_job = submitted_jobs(submitted.stdout)

    # task 1 is cancelled once it is past stage 1, and re-submitted alone
    log = workdir / "logs" / f"slurm-{array_job}_1.out"
    end = time.monotonic() + RUN_TIMEOUT_S
    while "== stage 2:" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < end, f"task 1 never reached stage 2:\n{cluster.run('squeue')}"
        time.sleep(0.5)
    cluster.run("scancel", f"{array_job}_1")
    cluster.wait_for({f"{array_job}_1"})
    assert "has not finished" in run_merge_refusal(workdir, env)
    again = run(resubmit_command(workdir, 1), env=env).stdout.split()[-1]  # "Submitted batch job N"
    cluster.run("scancel", merge_job)  # it would wait for the cancelled task forever
    cluster.wait_for({array_job})  # the other tasks
    merge = run(["sbatch", "--parsable", f"--dependency=afterok:{again}",
                 f"--output={workdir / 'logs' / 'slurm-merge-%j.out'}",
                 REPO_ROOT / "slurm" / "merge.sbatch", REPO_ROOT, workdir], env=env).stdout.strip().split(";")[0]
    cluster.wait_for({again, merge})
    report.append(f"array of 3 tasks (one CPU each), one cancelled and re-submitted, and the merge: "
                  f"{time.monotonic() - start:.0f} s")
    merged_log = (workdir / "logs" / f"slurm-merge-{merge}.out").read_text()
    assert "merged 3 shards" in merged_log, merged_log
    resumed = (workdir / "logs" / f"slurm-{again}_1.out").read_text()
    assert "already done earlier" in resumed and "(0 already done earlier)" not in resumed, resumed

    for name in STAGE_TABLES:
        same = (workdir / name).read_bytes() == (local / name).read_bytes()
        report.append(f"{name}: {'identical' if same else 'DIFFERENT'}")
        assert same, name
    if os.environ.get("HBR_SLURM_REPORT"):
        Path(os.environ["HBR_SLURM_REPORT"]).write_text("\n".join(report) + "\n")


def run_merge_refusal(workdir: Path, env: dict) -> str:
    """The merge's one-line refusal while a shard has not finished."""
    result = subprocess.run(["bash", str(REPO_ROOT / "0_pipeline.sh"), "--merge", "--workdir", str(workdir)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr  # the driver logs the merge's output, errors too
