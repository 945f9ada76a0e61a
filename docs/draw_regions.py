#!/usr/bin/env python3
"""Draw what each QC classifier sees (docs/regions.png): a phantom bone image with each
stage's input region outlined, and the model input itself at the size a config gives it.

    python docs/draw_regions.py [--config configs/demo.yaml] [--out docs/regions.png]

The regions and sizes come from the config and hbr.imaging.REGIONS, so the picture is
redrawn, not edited, when either changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hbr import phantom, pipeline  # noqa: E402
from hbr.config import load_config  # noqa: E402
from hbr.files import encode_png, write_bytes  # noqa: E402
from hbr.imaging import region_input, region_rows, to_canvas  # noqa: E402

SCALE = 2  # model inputs are small: shown enlarged, pixel for pixel


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """The tile (grey or BGR) under a line of text."""
    out = np.full((tile.shape[0] + 28, max(tile.shape[1], 8 * len(text) + 8), *tile.shape[2:]), 255, np.uint8)
    out[28:, : tile.shape[1]] = tile
    cv2.putText(out, text, (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
    return out


def draw(config: Path | None, out: Path) -> None:
    """Write the figure for `config` (None: the built-in defaults) to `out`."""
    cfg = load_config(config)
    p = phantom.make_participant(3, 0, None, False, True)
    bone, _, mask, _ = phantom.render(p)
    image = phantom.finish(bone, mask, False)
    canvas_h, canvas_w = cfg.canvas.height, cfg.canvas.width
    canvas, placed = to_canvas(image, canvas_h, canvas_w)
    outlined = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    colours = [(0, 0, 255), (0, 160, 0), (255, 0, 0), (0, 140, 255)]
    tiles = []
    for k, (colour, stage) in enumerate(zip(colours, pipeline.CLASSIFIERS.values())):
        region = cfg.classifier.stage(stage.task).region
        height, width = cfg.classifier.input_size(stage.task)
        for band in region_rows(placed, canvas_h, region):
            inset = 2 + 3 * k  # nested outlines where regions share rows
            cv2.rectangle(outlined, (inset, band.start + inset), (canvas_w - 1 - inset, band.stop - 1 - inset), colour, 2)
        seen = region_input(image, region, canvas_h, canvas_w, height, width).clip(0, 255).astype(np.uint8)
        seen = cv2.resize(seen, (width * SCALE, height * SCALE), interpolation=cv2.INTER_NEAREST)
        tiles.append(_label(seen, f"{stage.number} {stage.task}: {region} {height}x{width}"))
    left_bgr = _label(outlined, "canvas, regions outlined")
    column_w = max(t.shape[1] for t in tiles)
    column = np.full((max(left_bgr.shape[0], sum(t.shape[0] + 8 for t in tiles)), column_w), 255, np.uint8)
    y = 0
    for t in tiles:
        column[y: y + t.shape[0], : t.shape[1]] = t
        y += t.shape[0] + 8
    height = max(left_bgr.shape[0], column.shape[0])
    figure = np.full((height, left_bgr.shape[1] + 16 + column_w, 3), 255, np.uint8)
    figure[: left_bgr.shape[0], : left_bgr.shape[1]] = left_bgr
    figure[: column.shape[0], left_bgr.shape[1] + 16:] = column[..., None]
    write_bytes(out, encode_png(figure))
    print(f"regions -> {out}")


def main(argv=None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "regions.png")
    args = parser.parse_args(argv)
    draw(args.config, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
