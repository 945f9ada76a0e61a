"""Stage 4: split images by background colour (no model).

Background = mode of the top-left corner block: 0 -> black, 252 -> white (configurable).
Images of another background, or larger than the canvas, are removed and reported
with the reason; nothing is silently lost.
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np
import pandas as pd

from hbr import cli, pipeline
from hbr.cli import Context
from hbr.config import BackgroundConfig, CanvasConfig
from hbr.errors import HbrError
from hbr.files import keep_images, list_images, write_tsv
from hbr.parallel import map_in_order
from hbr.pipeline import BACKGROUNDS, image_folders
from hbr.progress import track

STAGE = pipeline.stage(4)
COLUMNS = ["Image", "corner_value", "background", "oversize", "decision", "reason"]


def corner_mode(image: np.ndarray, block: int) -> int:
    """Most frequent value of the top-left block x block pixels (smallest value on ties)."""
    values, counts = np.unique(image[:block, :block], return_counts=True)
    return int(values[np.argmax(counts)])


def image_background(image: np.ndarray, bg: BackgroundConfig) -> Optional[str]:
    """'black' or 'white' as the image's own top-left block says (see corner_mode); None for another value."""
    return {bg.black: "black", bg.white: "white"}.get(corner_mode(image, bg.corner))


class BackgroundCheck:
    """The background of labelled images, checked against the label file they came from.

    A black-background image listed in a `_white_` label file (or a LabelMe file of it in
    7_segment_white/) would be inverted and trained on in the wrong polarity. Calling the
    check gives the background the image truly has by its own corner value (the listed one
    when the corner is neither), so it is used in its true polarity; `report` then names
    the images that were listed under the other background, one line per label file.
    """

    def __init__(self, bg: BackgroundConfig):
        self.bg = bg
        self.wrong: dict[tuple[str, str, str], list[str]] = {}  # (label file, listed, true) -> images

    def __call__(self, image: np.ndarray, listed: Optional[str], name: str, source: object) -> Optional[str]:
        """The background to treat `image` (named `name` in label file `source`) as."""
        actual = image_background(image, self.bg) if listed is not None else None
        if actual is None or actual == listed:
            return listed
        self.wrong.setdefault((str(source), listed, actual), []).append(name)
        return actual

    def report(self, log=print) -> None:
        """One line per label file that listed images of the other background."""
        for (source, listed, actual), names in self.wrong.items():
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            log(f"{source}: {len(names)} image(s) listed for the {listed} background have a {actual} background "
                f"by their corner value ({shown}); used in {actual} polarity, as their own background")
        self.wrong.clear()


def classify_background(image: np.ndarray, bg: BackgroundConfig, canvas: CanvasConfig) -> dict:
    """Decision row (without Image) for one image: black, white, or remove with the reason."""
    value = corner_mode(image, bg.corner)
    background = image_background(image, bg) or "other"
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

    rows = list(track(map_in_order(decide, ids, 4, "hbr-background"), len(ids), name, "img"))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table_path = ctx.workdir / STAGE.table_name()
    write_tsv(table_path, table)
    for bak in BACKGROUNDS:
        kept = table.loc[table["decision"] == bak, "Image"].tolist()
        keep_images(kept, source, STAGE.output(bak), ctx.workdir)
        print(f"{name}: {len(kept)} {bak}-background images -> {image_folders(ctx.workdir, STAGE.output(bak))[0]}")
    removed = table[table["decision"] == "remove"]
    if len(removed):
        # one line, not one per image: a cohort has thousands of oversize images
        kinds = collections.Counter(removal_kind(reason) for reason in removed["reason"])
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        examples = ", ".join(removed["Image"].head(3)) + (" ..." if len(removed) > 3 else "")
        print(f"{name}: removed {len(removed)} images ({counts}; e.g. {examples}); "
              f"each with its reason in {table_path}")
    print(f"{name}: table of all {len(table)} images -> {table_path}")


def removal_kind(reason: str) -> str:
    """The kind of a stage-4 removal reason, for the summary line (oversize, other background, ...)."""
    if reason.startswith("oversize"):
        return "oversize"
    if reason.startswith("unexpected background"):
        return "other background" + (" and oversize" if "oversize" in reason else "")
    return reason


def main(argv=None) -> int:
    """Command line of stage 4."""
    return cli.entry(STAGE, argv)
