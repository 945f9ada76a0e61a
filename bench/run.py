#!/usr/bin/env python3
"""Speed, memory and disk of every stage on a phantom set, with the SPEC 7 goals beside them.

    python bench/run.py --n 100 [--config configs/demo.yaml] [--workdir DIR] [--device cpu|cuda]
                        [--models DIR] [--memory-check [--memory-sizes 600 6000]] [--profile STAGE ...]

1. Generates a phantom set of --n participants (2 Total Body images each) into
   WORKDIR/phantom (reused when it exists for the same --n and --seed).
2. Models: --models DIR, or trained untimed by running 0_pipeline.sh once in
   WORKDIR/train on a phantom set of --train-n participants (default max(N, 300): smaller
   sets can lack a defect class on the white background) with its train-split labels
   (reused when all models exist).
3. Timed run in a fresh WORKDIR/timed: every stage (1, 2, 3, 4, then 5-8 per background)
   in order, each as its own process, in predict mode with the models. Per stage:
   - seconds and images per second: the stage's main() in the process, after imports
     (Python start-up and imports are printed separately as "process s");
   - share of time outside the model forward pass (model stages): the same checkpoint
     on random tensors through the stage's own prediction loop (hbr.prediction: same
     number of images, chunks, batch size, lanes or loader workers, autocast and
     channels_last) with nothing to read or prepare, timed in a fresh process just before
     and just after each stage run; per timed run, share = 1 - mean of those two forward
     times / stage time, and the median over the runs is reported (goal <= 25 %): the
     machine's speed drifts, so only neighbouring runs are compared;
   - peak resident memory: the stage process and its largest worker (ru_maxrss), and the
     peak of the whole process tree's summed RSS (psutil polling, 20 Hz), in the last of
     the --repeat runs only: polling costs CPU, so the times come from the runs before it;
   - bytes written per input image: sizes of files with inodes new to the work directory
     (a hard link of an existing file costs nothing; a file linked twice counts once),
     and that over the mean npy + png size of a stage-1 image (goal <= 1.2 over all
     stages, plus the masks).
   Stage 1 is also compared with the upstream-style serial baseline of
   bench/bench_dcm2img.py on the same zips (timed in this process before and after).
4. --memory-check: the same stage chain on --memory-sizes sets of zips (hard links of the
   phantom zips under new participant ids), fresh work directories; peak memory per stage
   at each size and its growth (goal: within 10 % from 100 to 1,000 images). A stage that
   gets fewer than 100 images in the smaller run is printed but not judged: a few images
   do not fill both prediction lanes' batches, so its peak would measure that, not growth.
   With --n 1000, the default 600 and 6,000 zips give the stage with the fewest images
   (7 white) 106 and about 1,000.

Timings on a shared machine are noisy: compare ratios taken within one run. Not run by
the tests.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH))

from hbr import pipeline  # noqa: E402  (after the path: the bench runs from any folder)
from hbr.landmarks import LANDMARKS  # noqa: E402
from hbr.pipeline import image_folders  # noqa: E402

MASK_FOLDERS = {pipeline.mask_folder(Path(), lm, bak).name for lm in LANDMARKS for bak in pipeline.BACKGROUNDS}
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
GOAL_OVERHEAD = 0.25
GOAL_DISK_RATIO = 1.2
GOAL_MEMORY_GROWTH = 0.10
GOAL_MEMORY_MIN_IMAGES = 100  # the goal compares 100 with 1,000 images
POLL_S = 0.05


# =============================================================== child processes


def _peak_mb() -> tuple[float, float]:
    """Peak RSS (MB) of this process since it started, and of its largest finished child.

    The own peak is VmHWM of /proc/self/status: ru_maxrss would also hold the RSS of the
    process that forked this one before the exec (Linux keeps it across execve).
    The children's ru_maxrss counts the pages a forked worker shares with this process.
    """
    with open("/proc/self/status") as fh:
        own = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _rss_mb() -> float:
    """Current resident memory of this process, MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process, all its threads, and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_stage(result: Path, profile: Optional[Path], script: str, argv: list[str]) -> None:
    """Run one stage script in this process; time its main() after the imports."""
    import importlib
    import re

    import_start = time.perf_counter()
    # the heavy imports happen before the clock starts: exactly the module the entry script uses
    module = re.search(r"^from (hbr\.stages\.\w+) import main", (REPO_ROOT / script).read_text(), re.M)
    if module:
        importlib.import_module(module.group(1))
        if module.group(1) == "hbr.stages.segment":  # hbr.models imports smp only when a segmenter is built
            importlib.import_module("segmentation_models_pytorch")
    imports = time.perf_counter() - import_start
    rss_imports = _rss_mb()
    sys.argv = [script, *argv]
    code = 0
    profiler = cProfile.Profile() if profile else None
    start, cpu = time.perf_counter(), _cpu_s()
    try:
        if profiler:
            profiler.enable()
        runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if profiler:
            profiler.disable()
    seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
    own, worker = _peak_mb()
    if profiler:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        profile.write_text(text.getvalue())
    result.write_text(json.dumps({"seconds": seconds, "cpu_s": cpu, "imports_s": imports, "exit": code,
                                  "self_mb": own, "worker_mb": worker, "imports_mb": rss_imports}))


class _RandomInputs:
    """A dataset of `n` copies of one random input tensor, shaped like the stage's items."""

    def __init__(self, n: int, x, shape):
        self.n, self.x, self.shape = n, x, shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.x, i, True, self.shape


def child_forward(result: Path, checkpoint: Path, images: int, batch: int, chunk: int, device_name: str,
                  config: Path, overrides: list[str]) -> None:
    """Time the model on random tensors through the stage's own prediction loop (hbr.prediction):
    the same chunks, batches, lanes or loader workers, autocast and channels_last, but
    nothing to read or prepare."""
    import torch

    from hbr.config import load_config
    from hbr.devices import configure_threads, resolve_device, to_device_for_inference
    from hbr.models import load_checkpoint
    from hbr.prediction import predict_batches

    cfg = load_config(config, overrides)
    configure_threads(cfg.runtime)
    device = resolve_device(device_name)
    model, meta = load_checkpoint(checkpoint)
    model = to_device_for_inference(model, device, cfg.runtime)
    p = meta["preprocess"]
    x = torch.randn(1, p["input_h"], p["input_w"], generator=torch.Generator().manual_seed(0))
    shape = torch.tensor([791, 272])  # an original image's (rows, cols), as hbr.data.PredictionSet gives
    chunks = [min(chunk, images - first) for first in range(0, images, chunk)]
    batches = 0

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    start, cpu = time.perf_counter(), _cpu_s()
    for in_chunk in chunks:
        for _ in predict_batches(model, _RandomInputs(in_chunk, x, shape), batch, cfg.predict.workers, device, cfg.runtime):
            batches += 1
    sync()
    seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
    result.write_text(json.dumps({"seconds": seconds, "cpu_s": cpu, "batches": batches, "threads": torch.get_num_threads()}))


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench/run.py --child")
    parser.add_argument("kind", choices=["stage", "forward"])
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--images", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    split = argv.index("--") if "--" in argv else len(argv)
    args, rest = parser.parse_args(argv[:split]), argv[split + 1 :]  # after --: the stage script and its options
    if args.kind == "stage":
        child_stage(args.result, args.profile, rest[0], rest[1:])
    else:
        child_forward(args.result, args.checkpoint, args.images, args.batch, args.chunk, args.device,
                      args.config, args.overrides)


# =============================================================== measuring in the parent


def _pss_kb(pid: int) -> int:
    """Proportional set size of a process (shared pages split between their users), kB; 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def run_child(args: list[str], log: Path, result: Path, poll: bool = True) -> tuple[dict, float, dict]:
    """Run `bench/run.py --child ...`; (its result JSON, wall seconds, peaks of its process tree).

    With `poll`, the tree (the child and its workers) is sampled every POLL_S: peak of the
    summed RSS (shared pages counted in every process) and of the summed PSS (shared pages
    split). Sampling costs CPU (reading smaps of every process at 20 Hz slowed a 2-s
    stage by about 30 % on 2 cores), so timed runs are made without it.
    """
    import psutil

    result.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        peak_rss = peak_pss = 0.0
        try:
            root = psutil.Process(proc.pid)
            while poll and proc.poll() is None:
                rss = pss = 0
                try:
                    for p in [root, *root.children(recursive=True)]:
                        try:
                            rss += p.memory_info().rss
                            pss += _pss_kb(p.pid) * 1024
                        except psutil.Error:
                            pass
                except psutil.Error:
                    pass
                peak_rss, peak_pss = max(peak_rss, rss / 2**20), max(peak_pss, pss / 2**20)
                time.sleep(POLL_S)
        finally:
            code = proc.wait()  # without polling: just wait for the child
        wall = time.perf_counter() - start
    if code != 0 or not result.exists():
        tail = "\n".join(log.read_text().splitlines()[-15:])
        sys.exit(f"run: child {' '.join(args[:1] + args[-6:])} failed (exit {code}); log {log}:\n{tail}")
    data = json.loads(result.read_text())
    if data.get("exit", 0) != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        sys.exit(f"run: stage failed (exit {data['exit']}); log {log}:\n{tail}")
    return data, wall, {"tree_rss_mb": peak_rss, "tree_pss_mb": peak_pss}


def inodes(folder: Path) -> dict[tuple[int, int], tuple[int, str]]:
    """(device, inode) -> (size, one path) of every regular file under `folder`."""
    out: dict[tuple[int, int], tuple[int, str]] = {}
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    out.setdefault((st.st_dev, st.st_ino), (st.st_size, e.path))
    return out


def count_paths(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


@dataclass
class Stage:
    name: str  # e.g. 5_contrast_class_black
    script: str
    args: list[str]
    input_npy: Optional[str] = None  # folder whose .npy files are the stage's input images
    model: Optional[str] = None  # model folder name under the models directory
    stats: dict = field(default_factory=dict)


def stage_plan(zips: Path, models: Path) -> list[Stage]:
    """Every stage in pipeline order (hbr.pipeline), in predict mode with `models`."""
    m = ["--mode", "predict", "--models", str(models)]
    plan = []
    for st, bak in pipeline.run_order():
        args = [bak] if bak else []
        if st.kind == pipeline.DICOM:
            args += ["--input", str(zips)]
        elif st.has_model:
            args += m
        input_npy = image_folders(Path(), st.input(bak))[0].name if st.input_prefix else None
        plan.append(Stage(st.run_name(bak), st.script, args, input_npy, st.run_name(bak) if st.has_model else None))
    return plan


class Runner:
    """Runs the stage chain in one work directory and records what each stage cost.

    With `repeat` > 1 a stage first runs repeat - 1 times in a scratch copy of the work
    directory (hard links, `cp -al`: every output is written to a new file, so the copy
    never changes the original), timed, then once for real with its memory sampled; the
    fastest timed run counts. The copies are set aside, not deleted, until the timing is
    over (see `set_aside`).
    A model stage's forward reference runs before each of them and after the last.
    """

    def __init__(self, args, workdir: Path, models: Path, measure_disk: bool, forward: bool, repeat: int = 1,
                 profile: tuple = ()):
        self.args, self.workdir, self.models = args, workdir, models
        self.measure_disk, self.forward, self.repeat, self.profile = measure_disk, forward, max(repeat, 1), profile
        self.logs, self.scratch = self.side_folders(workdir)
        self.trash = workdir.parent / TRASH
        from hbr.config import load_config

        self.cfg = load_config(args.config, args.overrides)

    @staticmethod
    def side_folders(workdir: Path) -> tuple[Path, Path]:
        """(logs, scratch copy) of a Runner on `workdir`, beside it."""
        return workdir.parent / f"{workdir.name}_bench_logs", workdir.parent / f"{workdir.name}_scratch"

    def common(self, workdir: Path) -> list[str]:
        sets = [x for o in self.args.overrides for x in ("--set", o)]
        return ["--workdir", str(workdir), "--config", str(self.args.config), "--device", self.args.device, *sets]

    def batch_size(self, stage: Stage) -> int:
        """The prediction batch of a model stage: stage 7 predicts in the segmenter's batches."""
        p = self.cfg.predict
        return p.segmenter_batch_size if stage.script == "7_segment.py" else p.batch_size

    def forward_time(self, stage: Stage, images: int, tag: str) -> dict:
        sets = [x for o in self.args.overrides for x in ("--set", o)]
        result = self.logs / f"{stage.name}.forward_{tag}.json"
        data, _, _ = run_child(
            ["forward", "--result", str(result), "--checkpoint", str(self.models / stage.model / "model.pt"),
             "--images", str(images), "--batch", str(self.batch_size(stage)), "--chunk",
             str(self.cfg.predict.chunk_size), "--device", self.args.device, "--config", str(self.args.config), *sets],
            self.logs / f"{stage.name}.forward_{tag}.log", result, poll=False,
        )
        return data

    def _once(self, stage: Stage, workdir: Path, tag: str, profile: Optional[Path] = None, poll: bool = True):
        result = self.logs / f"{stage.name}.{tag}.json"
        extra = ["--profile", str(profile)] if profile else []
        return run_child(["stage", "--result", str(result), *extra, "--", stage.script, *stage.args,
                          *self.common(workdir)], self.logs / f"{stage.name}.{tag}.log", result, poll)

    def _in_scratch(self, stage: Stage, tag: str, profile: Optional[Path] = None, poll: bool = True):
        set_aside(self.scratch, self.trash)
        if self.workdir.exists():
            subprocess.run(["cp", "-al", str(self.workdir), str(self.scratch)], check=True)
        try:
            return self._once(stage, self.scratch, tag, profile, poll)
        finally:
            set_aside(self.scratch, self.trash)

    def run(self, stage: Stage, between=None) -> None:
        """Run one stage (repeatedly) as a process, forward references around it; fill stage.stats.

        `between` (e.g. the stage-1 baseline) is called after each run of the stage.
        """
        from hbr.files import list_images, read_tsv

        s = stage.stats
        images = len(list_images(self.workdir / stage.input_npy)) if stage.input_npy else None
        with_forward = bool(stage.model and self.forward and images)
        forward, runs = [], []
        if stage.name in self.profile:  # an extra, untimed run first (cProfile slows what it watches)
            s["profile"] = self.logs / f"{stage.name}.profile.txt"
            self._in_scratch(stage, "profiled", s["profile"])
        for r in range(self.repeat):
            if with_forward:
                forward.append(self.forward_time(stage, images, str(r)))
            if r < self.repeat - 1:  # timed only: not slowed by memory sampling
                runs.append(self._in_scratch(stage, f"run{r}", poll=False))
            else:
                exists = self.workdir.exists()
                old = inodes(self.workdir) if self.measure_disk and exists else {}
                paths_before = count_paths(self.workdir) if self.measure_disk and exists else 0
                runs.append(self._once(stage, self.workdir, f"run{r}"))
            if between:
                between()
        if with_forward:
            forward.append(self.forward_time(stage, images, "last"))
            s.update(forward_all=[f["seconds"] for f in forward], forward_cpu_all=[f["cpu_s"] for f in forward])
            # Each timed stage run against the forward references just before and after it:
            # the machine's speed drifts by tens of percent within minutes, so only
            # neighbouring runs are compared, and the median of those ratios is reported.
            timed_runs = range(max(self.repeat - 1, 1))
            for key, fwd_key, out in (("seconds", "seconds", "share"), ("cpu_s", "cpu_s", "share_cpu")):
                shares = [1 - (forward[r][fwd_key] + forward[r + 1][fwd_key]) / 2 / runs[r][0][key] for r in timed_runs]
                s[out], s[f"{out}_all"] = float(statistics.median(shares)), shares
            s["forward_s"] = float(statistics.median(s["forward_all"]))
            s["forward_cpu_s"] = float(statistics.median(s["forward_cpu_all"]))
        if stage.name == pipeline.stage(1).name:
            images = len(read_tsv(self.workdir / "dcm_table.tsv"))
        data, wall, tree = runs[-1]  # memory of the real run, the only one sampled
        timed = runs[:-1] or runs  # with repeat > 1 the times come from the unsampled runs
        s.update(images=images, seconds=min(r[0]["seconds"] for r in timed), seconds_all=[r[0]["seconds"] for r in runs],
                 cpu_s=min(r[0]["cpu_s"] for r in timed), cpu_all=[r[0]["cpu_s"] for r in runs],
                 process_s=min(r[1] for r in timed), imports_s=data["imports_s"], imports_mb=data["imports_mb"],
                 self_mb=data["self_mb"], worker_mb=data["worker_mb"], tree_mb=tree["tree_rss_mb"],
                 pss_mb=tree["tree_pss_mb"])
        if self.measure_disk:
            new = inodes(self.workdir)
            fresh = {k: v for k, v in new.items() if k not in old}
            s["bytes"] = sum(size for size, _ in fresh.values())
            s["new_files"] = len(fresh)
            s["new_paths"] = count_paths(self.workdir) - paths_before
            if stage.name.startswith(pipeline.stage(7).name):
                s["mask_bytes"] = sum(size for size, p in fresh.values() if Path(p).parent.name in MASK_FOLDERS)


# =============================================================== data sets and models


TRASH = "trash"  # folders set aside during the timed runs, deleted after them


def set_aside(path: Path, trash: Path) -> None:
    """Move `path`, if it exists, into `trash` (one rename) instead of deleting it between
    timed runs. On an AVX2 development machine's ext4 (without a journal), creating files in
    a folder tree where thousands had just been deleted took 0.74-0.95 ms of kernel time a
    file, against 75 us 5 minutes later (perf: the inode allocator's `recently_deleted`
    check); the scratch copy is deleted and made again in the same place, so deleting it
    between runs could charge the benchmark's own clean-up to the next run. (Stage 7 right
    after deleting an unrelated 20,000-file tree was not slower: 2.5-2.9 against 3.0-3.9 s
    of system time, 2 rounds.)"""
    if path.exists():
        trash.mkdir(parents=True, exist_ok=True)
        path.rename(trash / f"{path.name}.{time.time_ns()}")


def make_phantom(folder: Path, n: int, seed: int) -> Path:
    from accuracy import make_phantom as shared  # one phantom helper for both benchmarks

    return shared(folder, n, seed)


def replicate_zips(source: Path, folder: Path, n: int) -> Path:
    """`n` zips: hard links of the phantom zips (cycled) under new participant ids."""
    zips = sorted(source.glob("*.zip"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / f"{3000000 + i}_20158_2_0.zip"
        if not target.exists():
            try:
                os.link(zips[i % len(zips)], target)
            except OSError:
                shutil.copyfile(zips[i % len(zips)], target)
    return folder


def expected_models(models: Path) -> list[Path]:
    names = [s.model for s in stage_plan(Path("."), models) if s.model]
    return [models / n / "model.pt" for n in names]


def ensure_models(args, workdir: Path, phantom: Path) -> Path:
    """--models, or models trained (untimed) by the pipeline on a training phantom set in WORKDIR/train."""
    if args.models is not None:
        missing = [str(p) for p in expected_models(args.models.resolve()) if not p.is_file()]
        if missing:
            sys.exit(f"run: --models {args.models} lacks {', '.join(missing)}")
        print(f"models: {args.models.resolve()} (given)")
        return args.models.resolve()
    train = workdir / "train"
    models = train / "models"
    if all(p.is_file() for p in expected_models(models)):
        print(f"models: reusing {models} (trained earlier)")
        return models
    # every label file needs both classes: a small set (e.g. 100) can lack a white-background defect
    train_n = args.train_n or max(args.n, 300)
    train_phantom = phantom if train_n == args.n else make_phantom(workdir / f"train_phantom_n{train_n}", train_n, args.seed)
    print(f"models: training every model untimed with 0_pipeline.sh on {train_n} participants in {train} ...",
          flush=True)
    sets = [x for o in args.overrides for x in ("--set", o)]
    start = time.perf_counter()
    log = workdir / "train_pipeline.log"
    with open(log, "w") as fh:
        code = subprocess.call(["bash", str(REPO_ROOT / "0_pipeline.sh"), "--input", str(train_phantom / "zips"),
                                "--labels", str(train_phantom / "labels"), "--config", str(args.config), "--workdir",
                                str(train), "--device", args.device, *sets],
                               stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHON": sys.executable})
    if code != 0:
        sys.exit(f"run: training pipeline failed; log {log}:\n" + "\n".join(log.read_text().splitlines()[-10:]))
    print(f"models: trained in {(time.perf_counter() - start) / 60:.1f} min (log {log})")
    return models


# =============================================================== reporting


def ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


def image_bytes(workdir: Path) -> float:
    """Mean npy + png bytes of one stage-1 image."""
    npy_dir, png_dir = image_folders(workdir, pipeline.TOTAL_BODY)
    npy = list(npy_dir.glob("*.npy"))
    png = sum(p.stat().st_size for p in png_dir.glob("*.png"))
    return (sum(p.stat().st_size for p in npy) + png) / max(len(npy), 1)


def report_timed(plan: list[Stage], per_image: float, n_images: int) -> None:
    print()
    print(f"per stage (mean npy + png of a stage-1 image: {per_image / 1024:.1f} KiB):")
    head = (f"{'stage':22s} {'images':>6s} {'s':>7s} {'img/s':>7s} {'fwd s':>6s} {'outside fwd':>13s} "
            f"{'CPU s':>6s} {'fwd CPU':>7s} {'outside (CPU)':>13s} "
            f"{'imports':>7s} {'self MB':>7s} {'worker':>6s} {'PSS MB':>6s} {'KiB/img':>7s} {'/(npy+png)':>10s} {'process s':>9s}")
    print(head)
    total_bytes = 0

    def share_text(share):
        if share is None:
            return "-"
        return f"{100 * share:5.1f}% {ok(share <= GOAL_OVERHEAD)}"

    for st in plan:
        s = st.stats
        n = s["images"] or 0
        rate = n / s["seconds"] if s["seconds"] > 0 else float("nan")
        fwd, fwd_cpu = s.get("forward_s"), s.get("forward_cpu_s")
        per = s["bytes"] / n if n else float("nan")
        total_bytes += s["bytes"]
        nan = float("nan")
        print(f"{st.name:22s} {n:6d} {s['seconds']:7.2f} {rate:7.1f} {fwd if fwd is not None else nan:6.2f} "
              f"{share_text(s.get('share')):>13s} {s['cpu_s']:6.2f} {fwd_cpu if fwd_cpu is not None else nan:7.2f} "
              f"{share_text(s.get('share_cpu')):>13s} {s['imports_mb']:7.0f} {s['self_mb']:7.0f} {s['worker_mb']:6.0f} "
              f"{s['pss_mb']:6.0f} {per / 1024:7.1f} {per / per_image:10.3f} {s['process_s']:9.2f}")
    print(f"goal: outside the forward pass <= {100 * GOAL_OVERHEAD:.0f} % of a model stage's time (SPEC 7).")
    print("  s = fastest timed stage run (its main(), after imports); fwd s = median of the same model on random "
          "tensors through the stage's own prediction loop (lanes or workers, chunks, batches) in a fresh process, "
          "run before and after each stage run; "
          "outside fwd = median over the timed stage runs of 1 - (forward before + forward after) / 2 / stage run. "
          "CPU s, fwd CPU, outside (CPU): the same with CPU seconds (all threads and worker processes). "
          "process s = whole stage process with Python start-up and imports.")
    print("  MB: RSS of the stage process after its imports (imports) and its peak (self, VmHWM); peak RSS of its "
          "largest worker process (ru_maxrss, counts the pages it shares with the stage process); PSS: peak of the "
          "process tree's summed proportional set size (shared pages split), sampled at 20 Hz.")
    for st in plan:
        s = st.stats
        if "forward_s" in s:
            print(f"  {st.name}: stage runs {' '.join(f'{t:.2f}' for t in s['seconds_all'])} s "
                  f"(CPU {' '.join(f'{t:.2f}' for t in s['cpu_all'])}); forward runs "
                  f"{' '.join(f'{t:.2f}' for t in s['forward_all'])} s "
                  f"(CPU {' '.join(f'{t:.2f}' for t in s['forward_cpu_all'])}); "
                  f"stage {1000 * s['seconds'] / max(s['images'], 1):.1f} ms/img, "
                  f"forward {1000 * s['forward_s'] / max(s['images'], 1):.1f} ms/img; outside fwd per timed run "
                  f"{' '.join(f'{100 * x:.0f}%' for x in s['share_all'])} "
                  f"(CPU {' '.join(f'{100 * x:.0f}%' for x in s['share_cpu_all'])})")
    masks = sum(st.stats.get("mask_bytes", 0) for st in plan)
    segmented = sum(st.stats["images"] or 0 for st in plan if st.name.startswith("7_segment"))
    other = total_bytes - masks
    ratio = other / n_images / per_image
    print(f"disk: all stages wrote {total_bytes / 2**20:.1f} MiB for {n_images} stage-1 images; without masks "
          f"{other / n_images / 1024:.1f} KiB per image = {ratio:.3f} x (npy+png) (goal <= {GOAL_DISK_RATIO} x) "
          f"{ok(ratio <= GOAL_DISK_RATIO)}")
    if segmented:
        per_mask_img = masks / segmented
        print(f"      masks: {per_mask_img / 1024:.1f} KiB per segmented image (7 uint8 PNGs) = "
              f"{per_mask_img / per_image:.3f} x (npy+png) ({segmented} images segmented)")
    links = [f"{st.name} {st.stats['new_paths'] - st.stats['new_files']}" for st in plan
             if st.stats["new_paths"] > st.stats["new_files"]]
    if links:
        print("      hard links made (no bytes): " + ", ".join(links))


def stage1_vs_baseline(zips: Path, tmp: Path, stage1: dict, timings: list[float]) -> None:
    import bench_dcm2img as b1

    n_zips = len(list(zips.glob("*.zip")))
    base = min(timings)
    speed = base / stage1["seconds"]
    print()
    print(f"stage 1 vs upstream-style baseline (bench_dcm2img.baseline: serial, unzip to disk, decode every member) "
          f"on the same {n_zips} phantom zips:")
    print(f"  baseline {' '.join(f'{t:.2f}' for t in timings)} s (before and after each stage run; the fastest counts), "
          f"{stage1['images'] / base:.1f} images/s; hbr stage 1 {stage1['seconds']:.2f} s, "
          f"{stage1['images'] / stage1['seconds']:.1f} images/s")
    print(f"  speed-up {speed:.1f}x (bench_dcm2img goal >= {b1.GOAL_SPEEDUP:g}x on the real examples, 8 members/zip; "
          f"phantom zips hold 3-5 members, 2 of them Total Body) {ok(speed >= b1.GOAL_SPEEDUP)}")
    sample = tmp / "decode_sample"
    replicate_zips(zips, sample / "zips", 20)
    from hbr.config import DicomConfig

    with b1.counting_pixel_decodes() as ours:
        b1.ours(sample / "zips", sample / "work", DicomConfig(workers=0))
    with b1.counting_pixel_decodes() as base_count:
        b1.baseline(sample / "zips", sample / "baseline")
    shutil.rmtree(sample)
    per_zip = ours["decodes"] / 20
    print(f"  pixel arrays decoded per zip: ours {per_zip:.2f} (goal {b1.GOAL_DECODES_PER_ZIP}) "
          f"{ok(per_zip == b1.GOAL_DECODES_PER_ZIP)}; baseline {base_count['decodes'] / 20:.2f}")


def memory_check(args, phantom: Path, models: Path, root: Path) -> None:
    sizes = sorted(args.memory_sizes)
    print()
    print(f"memory check: the stage chain on {' and '.join(map(str, sizes))} zips (hard links of the phantom zips)")
    peaks: dict[int, list[Stage]] = {}
    for n in sizes:
        work = root / f"mem{n}"
        for leftover in (work, *Runner.side_folders(work), root / f"mem{n}_zips"):
            shutil.rmtree(leftover, ignore_errors=True)
        zips = replicate_zips(phantom / "zips", root / f"mem{n}_zips", n)
        runner = Runner(args, work, models, measure_disk=False, forward=False)
        plan = stage_plan(zips, models)
        wanted = [s for s in plan if not args.memory_stages or any(s.name.startswith(p) for p in args.memory_stages)]
        # the stages before the last wanted one run too, unreported: they make its inputs
        for st in plan[: plan.index(wanted[-1]) + 1] if wanted else []:
            runner.run(st)
            if st not in wanted:
                continue
            print(f"  {n:5d} zips {st.name:22s} {st.stats['images'] or 0:5d} images {st.stats['seconds']:7.2f} s; "
                  f"RSS after imports {st.stats['imports_mb']:5.0f} MB, peak {st.stats['self_mb']:5.0f} MB; "
                  f"largest worker {st.stats['worker_mb']:5.0f} MB; tree PSS {st.stats['pss_mb']:5.0f} MB, "
                  f"RSS {st.stats['tree_mb']:5.0f} MB", flush=True)
        peaks[n] = wanted
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(root / f"mem{n}_zips", ignore_errors=True)
    small, large = sizes[0], sizes[-1]
    print(f"memory growth {small} -> {large} zips (goal within {100 * GOAL_MEMORY_GROWTH:.0f} %):")
    print(f"  {'stage':22s} {'images':>13s} {'peak RSS MB':>15s} {'growth':>7s} {'tree PSS MB':>15s} {'growth':>7s} "
          f"{'KiB/image':>9s}")
    for a, b in zip(peaks[small], peaks[large]):
        sa, sb = a.stats, b.stats
        g_self = sb["self_mb"] / sa["self_mb"] - 1
        g_pss = sb["pss_mb"] / sa["pss_mb"] - 1 if sa["pss_mb"] else float("nan")
        worst = max(abs(g_self), abs(g_pss)) if sa["pss_mb"] else abs(g_self)
        few = (sa["images"] or 0) < GOAL_MEMORY_MIN_IMAGES
        verdict = f"not judged: under {GOAL_MEMORY_MIN_IMAGES} images" if few else ok(worst <= GOAL_MEMORY_GROWTH)
        added = (sb["images"] or 0) - (sa["images"] or 0)
        per_image = f"{1024 * (sb['self_mb'] - sa['self_mb']) / added:9.1f}" if added > 0 else f"{'':9s}"
        print(f"  {a.name:22s} {sa['images'] or 0:5d} -> {sb['images'] or 0:5d} {sa['self_mb']:6.0f} -> {sb['self_mb']:6.0f} "
              f"{100 * g_self:+6.1f}% {sa['pss_mb']:6.0f} -> {sb['pss_mb']:6.0f} {100 * g_pss:+6.1f}% {per_image}  "
              f"{verdict}")
    print("  (KiB/image: peak RSS growth over the added images; whole-run tables grow with the run's images, "
          "which stage 8 rebuilds whatever its own count)")
    print("  (peak RSS: the stage process, VmHWM; tree PSS: peak summed proportional set size of the stage process "
          "and its workers, sampled at 20 Hz, so a short peak between samples can be missed)")


# =============================================================== main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--n", type=int, default=100, help="phantom participants (2 Total Body images each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every stage (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="bench folder (default TMP/hbr-bench/run_n{N}_s{SEED}); phantom and models are kept")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--models", type=Path, default=None, help="trained models to use (skips training)")
    parser.add_argument("--train-n", type=int, default=None,
                        help="participants of the phantom set the models are trained on (default max(N, 300))")
    parser.add_argument("--memory-check", action="store_true", help="also peak memory at --memory-sizes zips")
    parser.add_argument("--memory-only", action="store_true", help="only the memory check (no timed run)")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[600, 6000], metavar=("SMALL", "LARGE"),
                        help="zips of the two memory-check runs (default 600 6000: with --n 1000, at least 100 images "
                             "in every stage)")
    parser.add_argument("--memory-stages", nargs="*", default=None,
                        help="stage name prefixes for the memory check (default: every stage; the stages "
                             "before them run too, unreported, to make their inputs)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the stage-1 baseline comparison")
    parser.add_argument("--profile", nargs="*", default=[], metavar="STAGE",
                        help="cProfile these stages (full names, e.g. 2_body_class) in the timed run")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of each stage in the timed run: repeat - 1 timed (the fastest counts), "
                             "then one with memory sampling")
    parser.add_argument("--keep", action="store_true", help="keep the timed and memory-check work directories")
    args = parser.parse_args()
    args.config = args.config.resolve()
    root = (args.workdir or Path(tempfile.gettempdir()) / "hbr-bench" / f"run_n{args.n}_s{args.seed}").resolve()
    root.mkdir(parents=True, exist_ok=True)

    import torch

    print(f"bench/run.py: n={args.n} seed={args.seed} config={args.config} device={args.device} "
          f"overrides={args.overrides or 'none'} workdir={root}")
    from hbr.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(f"machine: {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; predict batch {cfg.predict.batch_size} "
          f"(segmenter {cfg.predict.segmenter_batch_size}), workers {cfg.predict.workers}; runtime {cfg.runtime}; "
          f"dicom workers {cfg.dicom.workers}")
    phantom = make_phantom(root / "phantom", args.n, args.seed)
    models = ensure_models(args, root, phantom)

    if not args.memory_only:
        work = root / "timed"
        for leftover in (work, *Runner.side_folders(work)):
            set_aside(leftover, root / TRASH)
        zips = phantom / "zips"
        runner = Runner(args, work, models, measure_disk=True, forward=True, repeat=args.repeat,
                        profile=tuple(args.profile))
        plan = stage_plan(zips, models)
        baseline_s = []
        print(f"timed run in {work} (logs {runner.logs}); each stage {args.repeat}x, the fastest of the first {max(args.repeat - 1, 1)} counts (the last samples memory):", flush=True)
        for st in plan:
            between = None
            if st.name == pipeline.stage(1).name and not args.no_baseline:
                import bench_dcm2img as b1

                def between():
                    out = root / "baseline_out"
                    set_aside(out, root / TRASH)
                    start = time.perf_counter()
                    b1.baseline(zips, out)
                    baseline_s.append(time.perf_counter() - start)
                    set_aside(out, root / TRASH)

                between()
            runner.run(st, between)
            s = st.stats
            fwd = (f"; forward {' '.join(f'{t:.2f}' for t in s['forward_all'])} s "
                   f"(CPU {' '.join(f'{t:.2f}' for t in s['forward_cpu_all'])})") if "forward_s" in s else ""
            print(f"  {st.name:22s} {s['images'] or 0:5d} images; stage {' '.join(f'{t:.2f}' for t in s['seconds_all'])} s"
                  f" (CPU {' '.join(f'{t:.2f}' for t in s['cpu_all'])}){fwd}", flush=True)
        report_timed(plan, image_bytes(work), plan[0].stats["images"])
        if baseline_s:
            stage1_vs_baseline(zips, root, plan[0].stats, baseline_s)
        profiled = [st.stats["profile"] for st in plan if st.stats.get("profile")]  # noqa: E501
        for p in profiled:
            print(f"profile: {p}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root / TRASH, ignore_errors=True)
    if args.memory_check or args.memory_only:
        memory_check(args, phantom, models, root)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
