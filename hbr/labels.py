"""The user's label files (SPEC section 4): classifier TSVs and LabelMe JSON.

Every problem becomes an HbrError naming the file (and line or shape), never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import pandas as pd

from hbr.errors import HbrError
from hbr.files import read_npy, read_tsv
from hbr.landmarks import HEAD, LANDMARKS

@dataclass(frozen=True)
class ClassLabels:
    """Labelled images of a classifier: ids, their .npy paths and 0/1 labels."""

    ids: list[str]
    paths: list[Path]
    labels: list[int]


def read_class_labels(
    path: Path, npy_dir: Path, min_images: int = 10, warn=print, both_classes: bool = True
) -> ClassLabels:
    """Read a File_Name / Label / File_Name_npy TSV; images are looked up in `npy_dir`.

    A bad row (label other than 0/1, unknown image, duplicate) is reported with its
    line number through `warn` and skipped; a missing column, too few images or (with
    `both_classes`) a single class stop with an HbrError.
    """
    path = Path(path)
    if not path.is_file():
        raise HbrError(f"{path}: label file not found")
    try:
        table = read_tsv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HbrError(f"{path}: not a readable tab-separated table ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("File_Name", "Label") if c not in table.columns]
    if missing:
        raise HbrError(
            f"{path}: missing column(s) {', '.join(missing)}; expected File_Name, Label, File_Name_npy "
            f"(found: {', '.join(table.columns) or 'none'})"
        )
    ids, paths, labels, seen = [], [], [], set()
    for row_number, row in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
        image_id = re.sub(r"\.(npy|png|dcm)$", "", str(row.File_Name).strip())
        label = str(row.Label).strip()
        npy = npy_dir / f"{image_id}.npy"
        if label not in ("0", "1"):
            warn(f"{path} line {row_number}: Label {label!r} is not 0 or 1; row skipped")
        elif image_id in seen:
            warn(f"{path} line {row_number}: {image_id} is listed twice; row skipped")
        elif not npy.is_file():
            warn(f"{path} line {row_number}: unknown image {image_id!r} (no {npy}); row skipped")
        else:
            seen.add(image_id)
            ids.append(image_id)
            paths.append(npy)
            labels.append(int(label))
    if len(ids) < min_images:
        raise HbrError(f"{path}: only {len(ids)} usable labelled image(s); at least {min_images} are needed to train")
    if both_classes and len(set(labels)) < 2:
        raise HbrError(f"{path}: every image has Label {labels[0]}; both classes (0 and 1) are needed to train")
    return ClassLabels(ids, paths, labels)


# --- LabelMe -----------------------------------------------------------------------

_ALIASES = {frozenset(name.split("_")): name for name in LANDMARKS}


def canonical_landmark(label: str) -> Optional[str]:
    """Map a LabelMe label to a landmark name ('Left Shoulder' -> 'shoulder_left'), or None."""
    tokens = frozenset(t for t in re.split(r"[\s_\-]+", label.strip().lower()) if t)
    return _ALIASES.get(tokens)


@dataclass(frozen=True)
class LabelledImage:
    """One LabelMe file: the image and each landmark's points in original-image x, y."""

    source: Path
    image_id: str
    image: np.ndarray
    shapes: dict[str, np.ndarray]


def _shape_points(shape: dict, where: str) -> np.ndarray:
    points = shape.get("points")
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise HbrError(f"{where}: points {points!r} are not a list of [x, y]") from None
    if len(pts) == 0 or not np.isfinite(pts).all():
        raise HbrError(f"{where}: no usable points")
    kind = shape.get("shape_type") or ("point" if len(pts) == 1 else "polygon")
    if kind == "rectangle" and len(pts) == 2:
        (x0, y0), (x1, y1) = pts
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    elif kind == "circle" and len(pts) == 2:
        centre, edge = pts
        r = float(np.hypot(*(edge - centre)))
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = centre + r * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return pts


def _find_image(data: dict, path: Path, npy_dirs: Sequence[Path]) -> tuple[str, np.ndarray]:
    """The labelled image: a .npy of the work directory, else imagePath beside the JSON, else imageData."""
    image_path = str(data.get("imagePath") or "").replace("\\", "/")
    candidates = [path.stem] + ([Path(image_path).stem] if image_path else [])
    for npy_dir in npy_dirs:
        for stem in candidates:
            npy = Path(npy_dir) / f"{stem}.npy"
            if npy.is_file():
                return stem, read_npy(npy)
    if image_path:
        # imagePath as written, else its file name beside the JSON: a folder moved or copied from
        # another machine keeps its images but not the paths LabelMe wrote
        for beside in dict.fromkeys((path.parent / image_path, path.parent / Path(image_path).name)):
            if beside.is_file():
                image = cv2.imread(str(beside), cv2.IMREAD_GRAYSCALE)
                if image is not None:
                    return path.stem, image
    if data.get("imageData"):
        try:
            raw = np.frombuffer(base64.b64decode(data["imageData"]), np.uint8)
        except (binascii.Error, ValueError):
            raise HbrError(f"{path}: imageData is not valid base64") from None
        image = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE)
        if image is not None:
            return path.stem, image
        raise HbrError(f"{path}: imageData is not a readable image")
    other = Path(image_path).stem if image_path else path.stem
    names = f"{path.stem}.npy" + (f" or {other}.npy" if other != path.stem else "")
    raise HbrError(f"{path}: image not found (no {names} in the work directory, no imagePath file "
                   f"{image_path!r} here or beside the JSON, no imageData)")


def read_labelme(path: Path, npy_dirs: Sequence[Path] = (), landmarks: Sequence[str] = LANDMARKS) -> LabelledImage:
    """Parse one LabelMe JSON; shapes are found by label name, never by position."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise HbrError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise HbrError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise HbrError(f"{path}: not a LabelMe file (no 'shapes' list)")
    shapes: dict[str, np.ndarray] = {}
    for k, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict):
            raise HbrError(f"{path}: shape {k} is not an object")
        name = canonical_landmark(str(shape.get("label", "")))
        if name is None or name not in landmarks:
            continue
        if name in shapes:
            raise HbrError(f"{path}: more than one shape labelled {name}")
        pts = _shape_points(shape, f"{path}: shape {k} ({name})")
        if name == HEAD and len(pts) < 3:
            raise HbrError(f"{path}: head must be a polygon or rectangle, got {len(pts)} point(s)")
        shapes[name] = pts
    missing = [n for n in landmarks if n not in shapes]
    if missing:
        raise HbrError(f"{path}: missing landmark(s) {', '.join(missing)}")
    image_id, image = _find_image(data, path, npy_dirs)
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if height and width and (int(height), int(width)) != image.shape[:2]:
        raise HbrError(f"{path}: imageHeight x imageWidth {height}x{width} differs from the image {image.shape[:2]}")
    return LabelledImage(path, image_id, image, shapes)


def labelme_files(folder: Path) -> list[Path]:
    """The LabelMe JSON files of a label folder, sorted."""
    return sorted(p for p in Path(folder).glob("*.json") if p.is_file())


# Image-level LabelMe flag of a pre-annotation (hbr.labelling.preannotate): false until a
# person has checked the shapes and ticked it in LabelMe's Flags panel.
REVIEWED_FLAG = "reviewed"


def review_flag(path: Path) -> Optional[bool]:
    """The image-level `reviewed` flag of a LabelMe file: False for a pre-annotation not yet
    reviewed, True once ticked, None for a file without it (made by hand) or one that cannot
    be read (read_labelme reports that one when it is trained on)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    if f'"{REVIEWED_FLAG}"'.encode() not in raw:  # most hand-made files: no JSON parse needed
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    flags = data.get("flags") if isinstance(data, dict) else None
    value = flags.get(REVIEWED_FLAG) if isinstance(flags, dict) else None
    return value if isinstance(value, bool) else None


def trainable_labelme_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files to train on, pre-annotations not yet reviewed) of a LabelMe folder, each sorted.

    A file made by hand (no `reviewed` flag) or marked reviewed is trained on; one whose flag
    is false is a pre-annotation nobody has checked yet, never trained on.
    """
    used, unreviewed = [], []
    for path in labelme_files(folder):
        (unreviewed if review_flag(path) is False else used).append(path)
    return used, unreviewed


def unreviewed_note(folder: Path, count: int) -> str:
    """The one line that says a folder's unreviewed pre-annotations were left out of training."""
    return (f"{folder}: {count} pre-annotation{'s' if count != 1 else ''} not yet reviewed skipped: "
            f"tick '{REVIEWED_FLAG}' in LabelMe to train on them")
