"""Pre-annotate the head and six landmarks for LabelMe from stage 7's masks (the round trip).

    python -m hbr.labelling.preannotate {black|white} --workdir WORK [--pick PICK.tsv] [--out DIR]
                                        [--threshold 0.5]

For each image (those of a pick list, else every image stage 7 wrote masks of for that
background) this writes, into --out (default WORK/preannotate/7_segment_{bak}/):

  {Image}.png   stage 1's PNG of the image (a hard link where possible, else a copy)
  {Image}.json  a LabelMe file: the head as a polygon (about 20 vertices) traced from the
                predicted head mask, the six landmarks as points at the predicted centres,
                all in original-image pixels; each shape's confidence (mean and peak mask
                probability) in its description; the image-level flag `reviewed: false`.

Open the folder in LabelMe, correct what is wrong, tick `reviewed` in the Flags panel and
save; then train stage 7 with --labels pointing at the folder (or write the pre-annotations
straight into your label folder with --out labels/7_segment_{bak}). Stage 7 trains on files
made by hand and files marked reviewed; pre-annotations not yet reviewed are skipped with one
line, and never make the U-Net retrain.

Nothing you labelled is overwritten: an existing JSON in --out is replaced only while it is an
unreviewed pre-annotation exactly as this tool wrote it (a record of what was written is kept
in --out/.hbr-preannotate.tsv). Files marked reviewed, made by hand, or edited since are kept
and counted in the summary. An image with no head mask, or with landmarks not found, gets the
shapes that were found and one line naming the missing ones; an image whose PNG is gone gets
one line and is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from hbr import cli, pipeline
from hbr.errors import HbrError
from hbr.landmarks import HEAD, LANDMARKS

PROG = "python -m hbr.labelling.preannotate"
SEGMENT_STAGE = next(s for s in pipeline.STAGES if s.kind == pipeline.SEGMENTER)
PREANNOTATE_DIR = "preannotate"  # default --out: WORKDIR/preannotate/{stage 7's label folder name}
RECORD = ".hbr-preannotate.tsv"  # in --out: Image and SHA-256 of each JSON as written (not *.json: not a label)
RECORD_COLUMNS = ("Image", "sha256")

# The LabelMe file format written: the fields and types of LabelMe's own loader
# (labelme/_label_file.py), which LabelMe 5, 6 and 7 all read; LabelMe only warns about a
# version from another major release
LABELME_VERSION = "5.4.1"
POLYGON_VERTICES = (12, 30)  # head polygon: enough to follow the skull, few enough to correct by hand
TARGET_VERTICES = 20
DECIMALS = 2  # coordinates, as LabelMe writes them
MAX_LISTED = 10  # image names listed in one summary line


@dataclass
class Summary:
    """What a run did: images written (and which shapes each lacks), kept and skipped."""

    out: Path
    written: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)  # written over this tool's own unreviewed file
    missing: dict[str, list[str]] = field(default_factory=dict)  # image -> shapes not found
    kept: list[str] = field(default_factory=list)  # an existing JSON that is not ours to replace
    skipped: list[str] = field(default_factory=list)  # no PNG, unreadable PNG or no masks


# --- reading what stage 7 wrote ------------------------------------------------------------------


def default_output(workdir: Path, bak: str) -> Path:
    """WORKDIR/preannotate/7_segment_{bak}: stage 7's own label-folder name, so that
    --labels WORKDIR/preannotate finds it."""
    return Path(workdir) / PREANNOTATE_DIR / SEGMENT_STAGE.label_names(bak)[0]


def _mask_folders(workdir: Path, bak: str) -> dict[str, Path]:
    return {name: pipeline.mask_folder(workdir, name, bak) for name in LANDMARKS}


def stage7_images(workdir: Path, bak: str) -> list[str]:
    """Every image stage 7 wrote a mask of for this background (any landmark), sorted."""
    from hbr.files import TMP_PREFIX

    folders = [f for f in _mask_folders(workdir, bak).values() if f.is_dir()]
    if not folders:
        raise HbrError(f"no stage-7 masks in {pipeline.mask_folder(workdir, '{landmark}', bak)}: "
                       f"run {SEGMENT_STAGE.script} {bak} --workdir {workdir} first")
    return sorted({p.stem for f in folders for p in f.glob("*.png") if not p.name.startswith(TMP_PREFIX)})


def read_pick(path: Path) -> list[str]:
    """The images of a pick list (see hbr.labelling.pick.read_pick), in order, once each."""
    from hbr.labelling.pick import read_pick as read_rows

    return [row["Image"] for row in read_rows(path)]


# --- masks -> LabelMe shapes -------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One landmark found in its mask: points (x, y) in original-image pixels and its confidence."""

    points: np.ndarray
    mean: float  # mean probability over the landmark's component
    peak: float  # highest probability in it


def _component(prob: np.ndarray, threshold: float, box) -> tuple[np.ndarray, np.ndarray]:
    """(outer contour in image coordinates, pixel mask within the box) of the component box_from_mask chose.

    box_from_mask keeps the largest 8-connected component; its outer contour is the one with
    the same bounding box (cv2 traces outer borders with 8-connectivity too).
    """
    import cv2

    from hbr.masks import probability_scale

    crop = prob[box.y : box.y + box.h, box.x : box.x + box.w]
    binary = np.ascontiguousarray(crop > threshold * probability_scale(prob)).view(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    spanning = [c for c in contours if cv2.boundingRect(c) == (0, 0, box.w, box.h)]
    contour = spanning[0] if spanning else max(contours, key=cv2.contourArea)
    inside = np.zeros_like(binary)
    cv2.drawContours(inside, [contour], 0, 1, thickness=cv2.FILLED)
    return contour.reshape(-1, 2) + (box.x, box.y), (inside & binary).astype(bool)


def _simplified(contour: np.ndarray) -> np.ndarray:
    """The contour as a polygon of POLYGON_VERTICES vertices, nearest TARGET_VERTICES (approxPolyDP
    with the tolerance that gives it); a contour shorter than that is kept as it is."""
    import cv2

    low, high = POLYGON_VERTICES
    if len(contour) <= high:
        return contour.astype(np.float64)
    closed = contour.reshape(-1, 1, 2).astype(np.int32)
    perimeter = cv2.arcLength(closed, True)
    best, fallback = None, None
    # tolerance from coarse to fine: the vertex count grows (almost always) as it shrinks
    for eps in perimeter * 0.1 * 0.85 ** np.arange(60):
        approx = cv2.approxPolyDP(closed, float(eps), True).reshape(-1, 2)
        if len(approx) > high:
            break
        fallback = approx
        off_target = abs(len(approx) - TARGET_VERTICES)
        if len(approx) >= low and (best is None or off_target < abs(len(best) - TARGET_VERTICES)):
            best = approx
    chosen = best if best is not None else fallback if fallback is not None else contour
    return chosen.astype(np.float64)


def _area_matched(polygon: np.ndarray, pixels: int) -> np.ndarray:
    """The polygon scaled about its centroid to cover as much area as the mask's pixels.

    The contour runs through the centres of the boundary pixels and the simplified polygon
    cuts across it, so it would lose about a pixel all round: a pre-annotation accepted as it
    is would teach the next U-Net a smaller head every round.
    """
    x, y = polygon[:, 0], polygon[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    if abs(area) < 1e-9 or pixels <= 0:
        return polygon
    centre = np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * area)
    return centre + (polygon - centre) * np.sqrt(pixels / abs(area))


def find_landmark(prob: np.ndarray, threshold: float, polygon: bool) -> Optional[Found]:
    """The landmark a stage-7 mask shows, or None when nothing is above `threshold`.

    A point is the probability-weighted centre of the largest component (as stage 8 measures
    it); the head is that component's outline as a polygon. Confidence: the mean and the peak
    probability over the component's pixels.
    """
    from hbr.masks import box_from_mask, probability_scale

    box = box_from_mask(prob, threshold)
    if box is None:
        return None
    contour, pixels = _component(prob, threshold, box)
    values = prob[box.y : box.y + box.h, box.x : box.x + box.w][pixels].astype(np.float64) / probability_scale(prob)
    mean, peak = (float(values.mean()), float(values.max())) if values.size else (0.0, 0.0)
    if not polygon:
        return Found(np.array([[box.cx, box.cy]]), mean, peak)
    outline = _area_matched(_simplified(contour), int(pixels.sum()))
    if len(outline) < 3:  # a speck of a head: its box, for the user to redraw
        x0, y0, x1, y1 = box.x - 0.5, box.y - 0.5, box.x + box.w - 0.5, box.y + box.h - 0.5
        outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    # inside the image: LabelMe before 7 does not let a vertex outside it be moved
    height, width = prob.shape
    outline = np.clip(outline, 0, [width - 1, height - 1])
    return Found(outline, mean, peak)


def labelme_shape(label: str, found: Found, shape_type: str) -> dict:
    """One shape as LabelMe writes it (same keys and order as LabelMe 6.3.1's files)."""
    points = [[round(float(x), DECIMALS), round(float(y), DECIMALS)] for x, y in found.points]
    return {
        "label": label,
        "points": points,
        "group_id": None,
        # shape flags must map names to booleans in LabelMe: the confidence goes here
        "description": f"hbr confidence {found.mean:.3f} (mean mask probability; peak {found.peak:.3f})",
        "shape_type": shape_type,
        "flags": {},
        "mask": None,
    }


def labelme_document(image_id: str, shapes: list[dict], height: int, width: int) -> dict:
    """A whole LabelMe file: the image beside it by relative path, no embedded image data, and the
    image-level flag stage 7 reads (hbr.labels.REVIEWED_FLAG) set to false."""
    from hbr.labels import REVIEWED_FLAG

    return {
        "version": LABELME_VERSION,
        "flags": {REVIEWED_FLAG: False},
        "shapes": shapes,
        "imagePath": f"{image_id}.png",
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }


def preannotation(workdir: Path, bak: str, image_id: str, height: int, width: int,
                  threshold: float) -> tuple[Optional[dict], dict[str, str]]:
    """(LabelMe document, or None when stage 7 has no mask of the image; landmark -> why it is missing)."""
    from hbr.masks import read_mask

    shapes, missing, any_mask = [], {}, False
    for name, folder in _mask_folders(workdir, bak).items():
        path = folder / f"{image_id}.png"
        mask = read_mask(path) if path.is_file() else None  # is_file first: OpenCV warns about a missing file
        if mask is None:
            missing[name] = "no mask file" if not path.exists() else "unreadable mask"
            continue
        any_mask = True
        if mask.shape != (height, width):  # left from an earlier image of this name
            missing[name] = f"mask of {mask.shape[0]}x{mask.shape[1]} pixels, image of {height}x{width}"
            continue
        found = find_landmark(mask, threshold, polygon=name == HEAD)
        if found is None:
            missing[name] = f"nothing above {threshold:g}"
        else:
            shapes.append(labelme_shape(name, found, "polygon" if name == HEAD else "point"))
    if not any_mask:
        return None, missing
    return labelme_document(image_id, shapes, height, width), missing


# --- writing, never over what a person made -------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_record(out: Path) -> dict[str, str]:
    from hbr.files import read_tsv

    path = out / RECORD
    if not path.is_file():
        return {}
    try:
        table = read_tsv(path)
    except ValueError:  # damaged: nothing is known to be ours, so nothing is replaced
        return {}
    if not set(RECORD_COLUMNS) <= set(table.columns):
        return {}
    return dict(zip(table["Image"], table["sha256"]))


def replaceable(json_path: Path, written: Optional[str]) -> bool:
    """True when no JSON is at `json_path`, or it is an unreviewed pre-annotation byte for byte as
    this tool wrote it (SHA-256 `written`); anything a person made, ticked or edited is not."""
    from hbr.labels import review_flag

    if not json_path.exists():
        return True
    if review_flag(json_path) is not False or written is None:
        return False
    try:
        return _sha256(json_path.read_bytes()) == written
    except OSError:
        return False


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def run(workdir: Path, bak: str, pick: Optional[Path] = None, out: Optional[Path] = None,
        threshold: float = 0.5, log: Callable[[str], None] = print) -> Summary:
    """Write the LabelMe pre-annotations of one background's images; one line per problem, then a summary."""
    import cv2

    from hbr.files import link_or_copy, write_text, write_tsv_rows

    workdir = Path(workdir)
    if bak not in pipeline.BACKGROUNDS:
        raise HbrError(f"background {bak!r}: give one of {', '.join(pipeline.BACKGROUNDS)}")
    if not 0 <= threshold < 1:
        raise HbrError(f"threshold {threshold}: give a probability in [0, 1)")
    png_dir = pipeline.image_folders(workdir, pipeline.TOTAL_BODY)[1]
    if not png_dir.is_dir():
        first = next(s for s in pipeline.STAGES if s.kind == pipeline.DICOM)
        raise HbrError(f"{png_dir} not found: run {first.script} --workdir {workdir} first, then stage 7")
    predicted = stage7_images(workdir, bak)  # says to run stage 7 first when it has not
    images = read_pick(pick) if pick is not None else predicted
    out = Path(out) if out is not None else default_output(workdir, bak)
    out.mkdir(parents=True, exist_ok=True)
    record = _read_record(out)
    summary = Summary(out)
    try:
        for image_id in images:
            png = png_dir / f"{image_id}.png"
            json_path = out / f"{image_id}.json"
            if not replaceable(json_path, record.get(image_id)):
                summary.kept.append(image_id)
                continue
            if not png.is_file():
                log(f"{image_id}: no image at {png}; skipped")
                summary.skipped.append(image_id)
                continue
            image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
            if image is None:
                log(f"{image_id}: {png} is not a readable PNG; skipped")
                summary.skipped.append(image_id)
                continue
            document, missing = preannotation(workdir, bak, image_id, *image.shape[:2], threshold)
            if document is None:
                log(f"{image_id}: no stage-7 {bak} masks (stage 7 has not predicted it for this background); skipped")
                summary.skipped.append(image_id)
                continue
            link_or_copy(png, out / png.name)
            data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
            existed = json_path.exists()
            write_text(json_path, data.decode("utf-8"))
            record[image_id] = _sha256(data)
            (summary.refreshed if existed else summary.written).append(image_id)
            if missing:
                summary.missing[image_id] = list(missing)
                by_reason: dict[str, list[str]] = {}
                for name, why in missing.items():
                    by_reason.setdefault(why, []).append(name)
                reasons = next(iter(by_reason)) if len(by_reason) == 1 else "; ".join(
                    f"{', '.join(names)}: {why}" for why, names in by_reason.items())
                log(f"{image_id}: {', '.join(missing)} not found ({reasons}): written without, draw "
                    f"{'it' if len(missing) == 1 else 'them'} in LabelMe")
    finally:  # what was written is recorded even when interrupted, so it stays replaceable
        write_tsv_rows(out / RECORD, RECORD_COLUMNS, sorted(record.items()))
    _report(summary, log)
    return summary


def _report(s: Summary, log: Callable[[str], None]) -> None:
    from hbr.labels import REVIEWED_FLAG

    done = len(s.written) + len(s.refreshed)
    refreshed = f" ({len(s.refreshed)} unreviewed ones of an earlier run replaced)" if s.refreshed else ""
    log(f"{PROG}: {done} pre-annotation(s) written to {s.out}{refreshed}")
    if s.missing:
        log(f"{PROG}: {len(s.missing)} of them lack shapes not found in the masks (listed above)")
    if s.kept:
        log(f"{PROG}: {len(s.kept)} existing file(s) kept, never overwritten (reviewed, made by hand or edited "
            f"since written): {_listed(s.kept)}")
    if s.skipped:
        log(f"{PROG}: {len(s.skipped)} image(s) skipped (listed above)")
    if done:
        log(f"{PROG}: open {s.out} in LabelMe, correct the shapes, tick '{REVIEWED_FLAG}' and save; "
            f"stage 7 trains only on reviewed or hand-made files")


# --- command line --------------------------------------------------------------------------------


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the pre-annotator (nothing heavy is imported for them: -h is instant)."""
    cli.add_background_argument(parser)
    parser.add_argument("--workdir", type=Path, default=Path("work"), metavar="DIR",
                        help="work directory where stage 7 has run (default: ./work)")
    parser.add_argument("--pick", type=Path, default=None, metavar="PICK.tsv",
                        help="pick list: a TSV with an Image column (default: every image stage 7 has masks of "
                             "for this background)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder for the PNG + LabelMe JSON pairs (default: WORKDIR/"
                             f"{PREANNOTATE_DIR}/{SEGMENT_STAGE.labels[0]})")
    parser.add_argument("--threshold", type=_probability, default=0.5, metavar="P",
                        help="mask probability a landmark's pixels must exceed (default: 0.5)")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Pre-annotate: 0 done, 1 a problem with the input (one line on stderr), 2 a bad command line."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # -h (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    status, _ = cli.call_reporting_errors(
        PROG, lambda: run(args.workdir, args.background, args.pick, args.out, args.threshold),
        after_interrupt="; the files written so far are complete and recorded")
    return status


if __name__ == "__main__":
    sys.exit(main())
