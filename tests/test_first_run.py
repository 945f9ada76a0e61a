"""The first run on real scans (issue 26): what a new user meets before any label or model.

- `0_pipeline.sh --input zips/` without labels or --models: stage 1's work is kept, then one
  line says which label file is missing and the two ways on; exit status 1.
- File-system errors say what failed without claiming a write that was a read.
- Progress works in a pipe: plain lines at an interval, no `\\r`-joined bars.
- `-h` of every stage script answers without importing torch.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hbr import pipeline
from hbr.cli import describe_os_error
from hbr.progress import INTERVAL_ENV, LineProgress, Meter, format_duration, progress
from hbr.resume import run_chunks

from conftest import build_dicom, build_zip

REPO_ROOT = Path(__file__).resolve().parents[1]


def visit_zip(folder: Path, stem: str = "1000001_20158_2_0") -> Path:
    """A small UK-Biobank-like visit: Total Body 11 and 12, one AP Spine, and the manifest."""
    members = {
        "tissue.dcm": build_dicom(instance=11),
        "bone.dcm": build_dicom(instance=12),
        "spine.dcm": build_dicom(protocol="AP Spine", instance=18),
    }
    listing = "filename,patientid\n" + "".join(f"{name},{stem[:7]}\n" for name in members)
    return build_zip(folder / f"{stem}.zip", members | {"manifest.cvs": listing.encode()})


def run(cmd: list, **env: str) -> subprocess.CompletedProcess:
    """A command from the repository root, output captured (a pipe, as under tee), its result."""
    environment = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=600)


def test_first_run_without_labels_or_models_says_what_to_do(tmp_path):
    """`0_pipeline.sh --input zips/` with an empty label folder and no --models: exit 1 after
    stage 1 (its tables and images kept), naming the first model stage's label file and the
    two ways on: the labelling tools (README section) or --models."""
    visit_zip(tmp_path / "zips")
    labels = tmp_path / "labels"
    labels.mkdir()
    workdir = tmp_path / "work"
    result = run(["bash", REPO_ROOT / "0_pipeline.sh", "--input", tmp_path / "zips", "--workdir", workdir,
                  "--labels", labels])  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    table = pd.read_csv(workdir / pipeline.DCM_TABLE, sep="\t")
    assert len(table) == 2 and len(list(pipeline.total_body_npy(workdir).glob("*.npy"))) == 2  # stage 1 kept
    first = next(s for s in pipeline.STAGES if s.has_model)
    message = result.stderr
    assert f"{labels / first.label_names()[0]} not found" in message, message
    assert f"python -m hbr.labelling.pick {first.number} --workdir {workdir}" in message
    assert f"python -m hbr.labelling.page --workdir {workdir} --labels {labels}" in message
    assert "'Labelling your own scans'" in message and "--models DIR" in message
    assert "cannot write" not in message and "Traceback" not in message
    assert "## Labelling your own scans" in (REPO_ROOT / "README.md").read_text()  # the section pointed to


def test_file_errors_do_not_claim_a_write():
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "labels/2_class_label.tsv")
    assert describe_os_error(missing) == "labels/2_class_label.tsv: no such file or folder"
    full = OSError(errno.ENOSPC, "No space left on device", "work/dcm_table.tsv")
    assert describe_os_error(full) == "work/dcm_table.tsv: cannot write: the disk is full"
    denied = PermissionError(errno.EACCES, "Permission denied", "work")
    assert "permission denied" in describe_os_error(denied) and "write or read" not in describe_os_error(denied)


# --------------------------------------------------------------------------- progress in a pipe


def test_stage1_progress_in_a_pipe_is_clean_lines(tmp_path):
    """Under a pipe stage 1 writes plain count lines with rate and ETA (here every update:
    HBR_PROGRESS_SECONDS=0) and one closing line; no carriage returns, no bar."""
    for i in range(3):
        visit_zip(tmp_path / "zips", f"100000{i}_20158_2_0")
    result = run([sys.executable, REPO_ROOT / "1_dcm2img.py", "--input", tmp_path / "zips",
                  "--workdir", tmp_path / "work", "--set", "dicom.workers=0"], **{INTERVAL_ENV: "0"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "%|" not in result.stderr  # no tqdm bar
    assert [line.split(" sources")[0] for line in lines[:3]] == [f"1_dcm2img: {n}/3" for n in (1, 2, 3)], lines
    assert "sources/s" in lines[0] and "ETA" in lines[0]
    assert lines[3].startswith("1_dcm2img: 3/3 sources in ") and len(lines) == 4


def test_run_chunks_counts_within_chunks_in_a_pipe(tmp_path, monkeypatch, capsys):
    """Stages 2-7 predict in resumable chunks; progress moves with each batch inside a chunk."""
    monkeypatch.setenv(INTERVAL_ENV, "0")

    def process(chunk, advance):
        for image in chunk:
            advance(1)
        return pd.DataFrame({"Image": chunk})

    table = run_chunks([f"i{n}" for n in range(5)], tmp_path / "state", "v1", 3, process, desc="2_body_class")
    assert list(table["Image"]) == [f"i{n}" for n in range(5)]
    err = capsys.readouterr().err
    assert [line.split(" img")[0] for line in err.splitlines()] == [f"2_body_class: {n}/5" for n in range(1, 6)] + [
        "2_body_class: 5/5"]
    assert "\r" not in err
    # resumed: the chunks done earlier count from the start, nothing is redone
    again = run_chunks([f"i{n}" for n in range(5)], tmp_path / "state", "v1", 3,
                       lambda chunk, advance: pytest.fail("a finished chunk was redone"), desc="2_body_class")
    assert again.equals(table) and capsys.readouterr().err == ""


def test_line_progress_at_an_interval():
    """Lines only when the interval has passed; done/total, rate, ETA; quiet when short."""
    now = [0.0]
    out = []

    class Sink:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    bar = LineProgress(100, "stage", "img", file=Sink(), interval=10)
    bar.meter = Meter(100, interval=10, clock=lambda: now[0])
    for t in (4.0, 11.0, 12.0, 25.0):  # a line at 11 s and at 25 s (10 s after the last)
        now[0] = t
        bar.update(10)
    bar.close()
    assert out == ["stage: 20/100 img (20.0 %), 1.82 img/s, ETA 44 s\n",
                   "stage: 40/100 img (40.0 %), 1.6 img/s, ETA 38 s\n",
                   "stage: 40/100 img in 25 s\n"]  # fmt: skip
    quiet = LineProgress(5, "stage", "img", file=Sink(), interval=10)
    quiet.update(5)
    quiet.close()
    assert len(out) == 3  # a short task writes nothing: the stage's summary says it all
    assert format_duration(42) == "42 s" and format_duration(185) == "3 min 05 s"
    assert format_duration(7620) == "2 h 07 min"


def test_progress_on_a_terminal_is_a_tqdm_bar():
    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            pass

        def flush(self):
            pass

    bar = progress(3, "stage", "img", file=Terminal())
    assert type(bar).__module__.startswith("tqdm")
    bar.close()


# --------------------------------------------------------------------------- -h without torch


@pytest.mark.parametrize("script", [s.script for s in pipeline.STAGES])
def test_help_does_not_import_torch(script):
    """-h answers before the stage module (and torch, 5-7 s) is imported."""
    code = (f"import sys, runpy; sys.argv = [{script!r}, '-h']\n"
            f"try:\n    runpy.run_path({str(REPO_ROOT / script)!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("NO TORCH"), result.stdout[-300:]
    assert f"Stage {pipeline.stage(Path(script).stem).number}:" in result.stdout


# --------------------------------------------------------------------------- the driver's own command line


def test_driver_and_stages_print_their_version():
    import hbr

    assert run(["bash", REPO_ROOT / "0_pipeline.sh", "--version"]).stdout.strip() == f"hbr {hbr.__version__}"
    assert run([sys.executable, REPO_ROOT / "2_body_class.py", "--version"]).stdout.strip() == f"hbr {hbr.__version__}"


@pytest.mark.parametrize("option", ["--input", "--workdir", "--models", "--set", "--shard"])
def test_driver_option_without_a_value_is_a_usage_line(tmp_path, option):
    result = run(["bash", REPO_ROOT / "0_pipeline.sh", "--workdir", tmp_path / "w", option])
    assert result.returncode == 2 and f"{option} needs a value" in result.stderr, result.stderr
    assert "unbound variable" not in result.stderr and not (tmp_path / "w").exists()


def test_driver_without_input_creates_nothing(tmp_path):
    result = run(["bash", REPO_ROOT / "0_pipeline.sh", "--workdir", tmp_path / "w"])
    assert result.returncode == 2 and "--input is required" in result.stderr
    assert not (tmp_path / "w").exists()
