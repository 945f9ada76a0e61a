#!/usr/bin/env python3
"""Benchmark of stage 1 against an upstream-style baseline, and its memory at scale.

    python bench/bench_dcm2img.py --zips 200 [--memory 200 1000] [--workers N] [--repeat 3]

A zip of the 8 real example DICOMs (../shared/ukb_dxa_examples) is replicated (hard
links) to N participant zips in a temporary folder. Measured:
  (a) the baseline, serial as upstream: unzip each zip to a folder on disk, dcmread
      every member with its pixels, decode every pixel array, keep the Total Body
      ones (np.save + cv2.imwrite), delete the folder;
  (b) our stage through its Python API (hbr.stages.dcm2img.run_stage, workers =
      config default unless --workers);
then the number of pixel arrays each decodes per zip, and the peak RSS of our stage
run in a fresh process at each --memory size (the stage process plus its largest
worker). Goals are printed beside the values. Timings are the best of --repeat
alternating runs, as the machine may be shared. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from hbr.config import DicomConfig, load_config  # noqa: E402
from hbr.stages import dcm2img  # noqa: E402

REAL_DICOM_DIR = REPO_ROOT.parent / "shared" / "ukb_dxa_examples"
GOAL_SPEEDUP = 5.0
GOAL_DECODES_PER_ZIP = 2
GOAL_MEMORY_GROWTH = 0.10


def make_master_zip(folder: Path) -> Path:
    """One visit zip of the real example DICOMs."""
    files = sorted(REAL_DICOM_DIR.glob("*.dcm"))
    if not files:
        sys.exit(f"bench_dcm2img: no real example DICOMs in {REAL_DICOM_DIR}")
    path = folder / "master.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for dcm in files:
            archive.write(dcm, dcm.name)
    return path


def replicate(master: Path, folder: Path, n: int) -> Path:
    """`n` participant zips (hard links of the master, a copy where links are impossible)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / f"{1000000 + i}_20158_2_0.zip"
        try:
            os.link(master, target)
        except OSError:
            shutil.copyfile(master, target)
    return folder


# ---------------------------------------------------------------- the two contenders


def baseline(zips: Path, out: Path, protocol: str = "Total Body") -> int:
    """Upstream-style serial conversion; returns the number of Total Body images kept."""
    (out / "npy").mkdir(parents=True)
    (out / "png").mkdir()
    kept, rows = 0, []
    for zip_path in sorted(zips.glob("*.zip")):
        extracted = out / "unzipped" / zip_path.stem
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(extracted)
        for dcm in sorted(extracted.rglob("*.dcm")):
            ds = pydicom.dcmread(dcm)
            pixels = ds.pixel_array
            if ds.get("ProtocolName") == protocol:
                image = f"{zip_path.stem}_{ds.InstanceNumber}"
                np.save(out / "npy" / f"{image}.npy", pixels)
                cv2.imwrite(str(out / "png" / f"{image}.png"), pixels)
                rows.append((zip_path.stem, ds.SOPInstanceUID, ds.get("PatientSize"), image))
                kept += 1
        shutil.rmtree(extracted)
    with open(out / "dcm_table.tsv", "w") as fh:
        fh.writelines("\t".join(map(str, row)) + "\n" for row in rows)
    return kept


def ours(zips: Path, work: Path, cfg: DicomConfig) -> int:
    """Our stage through its Python API; returns the number of images decoded."""
    return dcm2img.run_stage(zips, work, cfg, progress=False).images


@contextmanager
def counting_pixel_decodes():
    """Count pixel_array decodes in this process (pydicom's Dataset.pixel_array property)."""
    original = pydicom.dataset.Dataset.pixel_array
    counter = {"decodes": 0}

    def counted(self):
        counter["decodes"] += 1
        return original.fget(self)

    pydicom.dataset.Dataset.pixel_array = property(counted)
    try:
        yield counter
    finally:
        pydicom.dataset.Dataset.pixel_array = original


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the stage's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = function(*args)
    return time.perf_counter() - start, _cpu_seconds() - cpu, result


# ---------------------------------------------------------------- memory, in a fresh process


def memory_child(zips: str, work: str, workers: int) -> None:
    """Run the stage and print its peak RSS (this process, and its largest worker) as JSON."""
    cfg = DicomConfig(workers=workers) if workers >= 0 else load_config(REPO_ROOT / "configs" / "default.yaml").dicom
    images = ours(Path(zips), Path(work), cfg)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux -> MB
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": images, "parent_mb": own, "worker_mb": worker}))


def peak_memory(master: Path, tmp: Path, n: int, workers: int) -> dict:
    zips = replicate(master, tmp / f"mem{n}" / "zips", n)
    work = tmp / f"mem{n}" / "work"
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(zips), str(work), str(workers)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    shutil.rmtree(tmp / f"mem{n}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zips", type=int, default=200, help="participant zips for the speed comparison")
    parser.add_argument("--memory", type=int, nargs="*", default=[200, 1000], help="zip counts for peak memory")
    parser.add_argument("--workers", type=int, default=-1, help="stage workers (default: config default)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each contender; the best counts")
    parser.add_argument("--tmp", type=Path, default=None, help="where to put the zips and outputs (default: system temp)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], args.child[1], int(args.child[2]))
        return

    cfg = load_config(REPO_ROOT / "configs" / "default.yaml").dicom
    if args.workers >= 0:
        cfg = DicomConfig(protocol=cfg.protocol, max_member_mb=cfg.max_member_mb, workers=args.workers)
    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hbr-bench-dcm2img-", dir=args.tmp))
    try:
        master = make_master_zip(tmp)
        zips = replicate(master, tmp / "zips", args.zips)
        print(f"{args.zips} zips of {master.stat().st_size / 2**20:.2f} MB (8 DICOMs, 2 Total Body each) in {tmp}; "
              f"{os.cpu_count()} CPUs; our workers: {cfg.workers}")  # fmt: skip

        # Best of --repeat runs, alternating, since this machine may be shared with other work.
        base_times, ours_times, base_cpu, ours_cpu = [], [], [], []
        for attempt in range(args.repeat):
            base_s, base_c, base_images = timed(baseline, zips, tmp / f"baseline{attempt}")
            ours_s, ours_c, ours_images = timed(ours, zips, tmp / f"work{attempt}", cfg)
            base_times.append(base_s)
            ours_times.append(ours_s)
            base_cpu.append(base_c)
            ours_cpu.append(ours_c)
            shutil.rmtree(tmp / f"baseline{attempt}")
            shutil.rmtree(tmp / f"work{attempt}")
        base_s, ours_s = min(base_times), min(ours_times)
        print(f"runs (s): baseline {' '.join(f'{t:.2f}' for t in base_times)}; "
              f"ours {' '.join(f'{t:.2f}' for t in ours_times)}; best of each below")  # fmt: skip
        assert base_images == ours_images == 2 * args.zips, (base_images, ours_images)
        speedup = base_s / ours_s
        print(f"(a) baseline (serial, unzip to disk, decode all): {base_s:6.2f} s  "
              f"{base_images / base_s:7.1f} images/s  {args.zips / base_s:6.1f} zips/s")  # fmt: skip
        print(f"(b) hbr stage 1                                 : {ours_s:6.2f} s  "
              f"{ours_images / ours_s:7.1f} images/s  {args.zips / ours_s:6.1f} zips/s")  # fmt: skip
        print(f"speed-up: {speedup:.1f}x  (goal >= {GOAL_SPEEDUP:g}x)  {'OK' if speedup >= GOAL_SPEEDUP else 'MISSED'}")
        print(f"CPU time (all processes, best run): baseline {min(base_cpu):.2f} s, ours {min(ours_cpu):.2f} s "
              f"= {min(base_cpu) / min(ours_cpu):.1f}x less work")  # fmt: skip

        sample = replicate(master, tmp / "sample", 20)
        with counting_pixel_decodes() as ours_count:
            ours(sample, tmp / "sample_work", DicomConfig(workers=0))  # in-process, so every decode is counted
        with counting_pixel_decodes() as base_count:
            baseline(sample, tmp / "sample_baseline")
        per_zip = ours_count["decodes"] / 20
        print(f"pixel arrays decoded per zip: ours {per_zip:.2f} (goal {GOAL_DECODES_PER_ZIP}) "
              f"{'OK' if per_zip == GOAL_DECODES_PER_ZIP else 'MISSED'}; baseline {base_count['decodes'] / 20:.2f}")  # fmt: skip

        peaks = {}
        for n in args.memory:
            peak = peak_memory(master, tmp, n, args.workers if args.workers >= 0 else cfg.workers)
            peaks[n] = peak["parent_mb"] + peak["worker_mb"]
            print(f"peak RSS at {n:5d} zips: stage process {peak['parent_mb']:.0f} MB + largest worker "
                  f"{peak['worker_mb']:.0f} MB = {peaks[n]:.0f} MB")  # fmt: skip
        if len(peaks) >= 2:
            small, large = min(peaks), max(peaks)
            growth = peaks[large] / peaks[small] - 1
            print(f"memory growth {small} -> {large} zips: {growth * 100:+.1f}% "
                  f"(goal within {GOAL_MEMORY_GROWTH * 100:.0f}%)  {'OK' if abs(growth) <= GOAL_MEMORY_GROWTH else 'MISSED'}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
