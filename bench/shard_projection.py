#!/usr/bin/env python3
"""Projected wall time of a sharded run (README "Running on a cluster"): how long N zips take
on M machines, from what one shard costs per zip on this machine.

    python bench/shard_projection.py [--configs configs/demo.yaml configs/default.yaml]
                                     [--zips 100000] [--machines 1 10 50 100] [--device cpu]

Per config, every model stage's network is built from the config's names with random
weights (speed does not depend on the weights) and timed through the stages' own
prediction loop (hbr.prediction: batch size, lanes, autocast, padding) on random inputs of
the stage's input size, after one warm-up batch. Stage 1 is timed on copies of a zip of the
real example DICOMs (../shared/ukb_dxa_examples; phantom zips when it is absent).

A UK Biobank zip holds two Total Body images (tissue and bone): stage 2 sees both, stages
3, 5, 6 and 7 the bone image at most (every bone image is assumed to pass QC: an upper
bound). Beside the forward passes, the CPU work per image is timed on the decoded real bone
image: reading its npy and preparing each stage's input (hbr.imaging), and stage 7's seven
masks mapped back and written as PNG. Each task also pays a fixed start-up (Python and torch
in each of 11 stage processes, --startup-s). A machine's projection: ceil(N / M) zips per
machine, one task each. The GPU figure is an estimate until measured on a GPU: the forward
passes taken as free, the same CPU work per zip as here.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from hbr import pipeline  # noqa: E402
from hbr.config import load_config, this_cpu_has_native_bf16  # noqa: E402
from hbr.devices import configure_threads, resolve_device, to_device_for_inference  # noqa: E402
from hbr.landmarks import LANDMARKS  # noqa: E402
from hbr.models import create_model  # noqa: E402
from hbr.prediction import predict_batches  # noqa: E402

REAL_EXAMPLES = REPO_ROOT.parent / "shared" / "ukb_dxa_examples"
IMAGES_PER_ZIP = {2: 2.0, 3: 1.0, 5: 1.0, 6: 1.0, 7: 1.0}  # Total Body images each model stage sees per zip


def cpu_seconds_per_image(image, cfg) -> dict[int, float]:
    """Stage number -> seconds of CPU work per image outside the forward pass: reading the
    npy and preparing the stage's input; for stage 7 also writing the seven masks."""
    import numpy as np

    from hbr.files import encode_png, write_npy, read_npy
    from hbr.imaging import mask_to_original, place, region_input

    c, s, canvas = cfg.classifier, cfg.segmenter, cfg.canvas
    sizes = {stage.number: (c.stage(task).region, *c.input_size(task)) for task, stage in pipeline.CLASSIFIERS.items()}
    sizes[7] = ("whole", s.input_height, s.input_width)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.npy"
        write_npy(path, image)
        for number, (region, h, w) in sizes.items():
            start, repeats = time.perf_counter(), 20
            for _ in range(repeats):
                region_input(read_npy(path), region, canvas.height, canvas.width, h, w)
            seconds[number] = (time.perf_counter() - start) / repeats
    # stage 7's masks: a blob per landmark on a near-zero map, as a trained model gives
    h, w = s.input_height, s.input_width
    yy, xx = np.mgrid[0:h, 0:w]
    prob = np.where((yy - h // 4) ** 2 + (xx - w // 2) ** 2 < (h // 20) ** 2, 0.9, 0.001).astype(np.float32)
    placement = place(*image.shape, canvas.height, canvas.width)
    start, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        for _ in LANDMARKS:
            encode_png(mask_to_original(prob, placement, s.mask_floor), "none")
    seconds[7] += (time.perf_counter() - start) / repeats
    return seconds


def stage_networks(cfg) -> dict[int, tuple[torch.nn.Module, tuple[int, int], int]]:
    """Stage number -> (randomly initialised network, input (h, w), batch size) of every model stage."""
    c, s, p = cfg.classifier, cfg.segmenter, cfg.predict
    networks = {}
    for task, stage in pipeline.CLASSIFIERS.items():
        model = create_model({"kind": "classifier", "arch": c.arch, "num_outputs": 2})
        networks[stage.number] = (model, c.input_size(task), p.batch_size)
    unet = create_model({"kind": "segmenter", "arch": s.arch, "encoder": s.encoder, "classes": len(LANDMARKS)})
    networks[pipeline.stage(7).number] = (unet, (s.input_height, s.input_width), p.segmenter_batch_size)
    return networks


def seconds_per_image(model, size: tuple[int, int], batch: int, images: int, device, runtime) -> float:
    """Forward time per image through hbr.prediction, after a warm-up batch."""
    model = to_device_for_inference(model.eval(), device, runtime)
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    items = [(x, i) for i in range(images)]

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in predict_batches(model, items[:n], batch, 0, device, runtime):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    run(min(batch, images))
    return run(images) / images


def stage1_seconds_per_zip(zips: int, workdir: Path, cfg):
    """Stage 1 on `zips` copies of one zip: (seconds per zip, what the zip held, its last image)."""
    import zipfile

    from hbr.stages.dcm2img import run_stage

    source = workdir / "one.zip"
    if REAL_EXAMPLES.is_dir():
        with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as archive:
            for dcm in sorted(REAL_EXAMPLES.glob("*.dcm")):
                archive.write(dcm, dcm.name)
        what = "the 8 real example DICOMs"
    else:
        from hbr.phantom import main as phantom_main

        phantom_main(["--out", str(workdir / "phantom"), "--n", "1", "--seed", "0"])
        shutil.copy(next((workdir / "phantom" / "zips").glob("*.zip")), source)
        what = "a phantom visit (2 images)"
    folder = workdir / "zips"
    folder.mkdir()
    for i in range(zips):
        os.link(source, folder / f"{1000000 + i}_20158_2_0.zip")
    start = time.perf_counter()
    run_stage(folder, workdir / "work", cfg.dicom, progress=False)
    seconds = (time.perf_counter() - start) / zips
    from hbr.files import read_npy

    return seconds, what, read_npy(sorted((workdir / "work" / "1_Total_Body_npy").glob("*.npy"))[-1])


def duration(seconds: float) -> str:
    """'2 h 05 min' or '7 min'."""
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", type=Path,
                        default=[REPO_ROOT / "configs" / "demo.yaml", REPO_ROOT / "configs" / "default.yaml"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--zips", type=int, default=100_000, help="zips of the projected run")
    parser.add_argument("--machines", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--images", type=int, default=32, help="images timed per classifier (half for the U-Net)")
    parser.add_argument("--stage1-zips", type=int, default=100)
    parser.add_argument("--startup-s", type=float, default=45.0, help="fixed start-up of one task (11 processes)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {device}, "
          f"native bfloat16: {this_cpu_has_native_bf16()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        stage1, what, image = stage1_seconds_per_zip(args.stage1_zips, Path(tmp), load_config(args.configs[0]))
    print(f"stage 1: {stage1 * 1000:.1f} ms per zip ({args.stage1_zips} copies of a zip of {what}); "
          f"the other stages' CPU work timed on its image of {image.shape[0]}x{image.shape[1]}")
    for config in args.configs:
        cfg = load_config(config)
        configure_threads(cfg.runtime)
        per_zip = around = stage1  # around: the CPU work beside the forward passes
        cpu_work = cpu_seconds_per_image(image, cfg)
        print(f"\n{config.name}: classifier {cfg.classifier.arch}, U-Net {cfg.segmenter.encoder} at "
              f"{cfg.segmenter.input_height}x{cfg.segmenter.input_width}, bfloat16 on CPU: {cfg.runtime.cpu_bf16}")
        for number, (model, size, batch) in stage_networks(cfg).items():
            images = args.images if number != 7 else max(args.images // 2, batch)
            seconds = seconds_per_image(model, size, batch, images, device, cfg.runtime)
            per_zip += IMAGES_PER_ZIP[number] * (seconds + cpu_work[number])
            around += IMAGES_PER_ZIP[number] * cpu_work[number]
            print(f"  stage {number}: input {size[0]}x{size[1]}, batch {batch}: forward {seconds * 1000:.1f} ms per "
                  f"image ({images} images), other CPU work {cpu_work[number] * 1000:.1f} ms")
        print(f"  one task: {per_zip:.2f} s per zip, {3600 / per_zip:.0f} zips per hour; "
              f"{around * 1000:.0f} ms per zip beside the forward passes")
        for machines in args.machines:
            zips = math.ceil(args.zips / machines)
            print(f"  {args.zips} zips on {machines} machine(s) like this one: "
                  f"{duration(zips * per_zip + args.startup_s)}; on {machines} GPU node(s), estimated: "
                  f"{duration(zips * around + args.startup_s)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
