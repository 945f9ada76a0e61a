"""Stage 4: split images by background colour (no model).

Background = mode of the top-left corner block: 0 -> black, 252 -> white (configurable).
Images of another background, or larger than the canvas, are removed and reported
with the reason; nothing is silently lost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from hbr import cli
from hbr.cli import BACKGROUNDS, Context
from hbr.config import BackgroundConfig, CanvasConfig
from hbr.errors import HbrError
from hbr.files import image_folders, keep_images, list_images, write_tsv
from hbr.parallel import map_in_order

INPUT_PREFIX = "3_crop_predicted"
TABLE = "4_background.tsv"
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
    npy_dir, _ = image_folders(ctx.workdir, INPUT_PREFIX)
    if not npy_dir.is_dir():
        raise HbrError(f"input folder {npy_dir} not found: run stage 3 first")
    ids = list_images(npy_dir)

    def decide(image_id: str) -> dict:
        try:
            # memory-mapped: only the header and the corner block are read
            image = np.load(npy_dir / f"{image_id}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            print(f"4_background_class: {npy_dir / image_id}.npy: cannot read ({exc})")
            return {"Image": image_id, "background": "", "decision": "remove", "reason": "unreadable image"}
        return {"Image": image_id, **classify_background(image, ctx.cfg.background, ctx.cfg.canvas)}

    rows = list(tqdm(map_in_order(decide, ids, 4, "hbr-background"), total=len(ids), desc="4_background", unit="img"))
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_tsv(ctx.workdir / TABLE, table)
    for bak in BACKGROUNDS:
        kept = table.loc[table["decision"] == bak, "Image"].tolist()
        keep_images(kept, INPUT_PREFIX, f"4_bak_{bak}", ctx.workdir)
        print(f"4_background_class: {len(kept)} {bak}-background images -> {ctx.workdir / f'4_bak_{bak}_npy'}")
    removed = table[table["decision"] == "remove"]
    for row in removed.itertuples(index=False):
        print(f"4_background_class: removed {row.Image}: {row.reason}")
    print(f"4_background_class: table of all {len(table)} images -> {ctx.workdir / TABLE}")


def main(argv=None) -> int:
    """Command line of stage 4."""
    return cli.main("4_background_class", __doc__, lambda parser: None, run, argv)
