"""Stage 4: split images by background colour (no model).

Background = mode of the top-left corner block: 0 -> black, 252 -> white (configurable).
Images of another background, or larger than the canvas, are removed and reported
with the reason; nothing is silently lost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from hbr import cli, pipeline
from hbr.cli import Context
from hbr.config import BackgroundConfig, CanvasConfig
from hbr.errors import HbrError
from hbr.files import keep_images, list_images, write_tsv
from hbr.parallel import map_in_order
from hbr.pipeline import BACKGROUNDS, image_folders

STAGE = pipeline.stage(4)
COLUMNS = ["Image", "corner_value", "background", "oversize", "decision", "reason"]


def corner_mode(image: np.ndarray, block: int) -> int:
    """Most frequent value of the top-left block x block pixels (smallest value on ties)."""
    values, counts = np.unique(image[:block, :block], return_counts=True)
    return int(values[np.argmax(counts)])


def classify_background(image: np.ndarray, bg: BackgroundConfig, canvas: CanvasConfig) -> dict:
    """Decision row (without Image) for one image: black, white, or remove with the reason."""
    value = corner_mode(image, bg.corner)
    background = {bg.black: "black", bg.white: "white"}.get(value, "other")
    rows, cols = image.shape[:2]
    oversize = rows > canvas.height or cols > canvas.width
    reasons = []
    if background == "other":
        reasons.append(f"unexpected background value {value} (expected {bg.black} or {bg.white})")
    if oversize:
        reasons.append(f"oversize {rows}x{cols} > canvas {canvas.height}x{canvas.width}")
    return {
        "corner_value": value,
        "background": background,
        "oversize": int(oversize),
        "decision": "remove" if reasons else background,
        "reason": "; ".join(reasons),
    }


def run(ctx: Context) -> None:
    """Decide the background of every image of stage 3 and link them into 4_bak_{black,white}."""
    name, source = STAGE.name, STAGE.input()
    npy_dir, _ = image_folders(ctx.workdir, source)
    if not npy_dir.is_dir():
        raise HbrError(f"input folder {npy_dir} not found: run {pipeline.producer(STAGE).script} first")
    ids = list_images(npy_dir)

    def decide(image_id: str) -> dict:
        try:
            # memory-mapped: only the header and the corner block are read
            image = np.load(npy_dir / f"{image_id}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            print(f"{name}: {npy_dir / image_id}.npy: cannot read ({exc})")
            return {"Image": image_id, "background": "", "decision": "remove", "reason": "unreadable image"}
        return {"Image": image_id, **classify_background(image, ctx.cfg.background, ctx.cfg.canvas)}

    rows = list(tqdm(map_in_order(decide, ids, 4, "hbr-background"), total=len(ids), desc=name, unit="img"))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table_path = ctx.workdir / STAGE.table_name()
    write_tsv(table_path, table)
    for bak in BACKGROUNDS:
        kept = table.loc[table["decision"] == bak, "Image"].tolist()
        keep_images(kept, source, STAGE.output(bak), ctx.workdir)
        print(f"{name}: {len(kept)} {bak}-background images -> {image_folders(ctx.workdir, STAGE.output(bak))[0]}")
    removed = table[table["decision"] == "remove"]
    for row in removed.itertuples(index=False):
        print(f"{name}: removed {row.Image}: {row.reason}")
    print(f"{name}: table of all {len(table)} images -> {table_path}")


def main(argv=None) -> int:
    """Command line of stage 4."""
    return cli.main(STAGE, lambda parser: None, run, argv)
