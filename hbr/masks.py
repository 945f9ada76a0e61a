"""From a landmark probability mask to its box and centre (SPEC 2, stage 8), and back to table cells.

A mask is thresholded, only its largest 8-connected component is kept (a stray blob
elsewhere must not move the landmark), and the component gives the bounding box
(x, y, w, h as OpenCV's component statistics: top-left pixel index and pixel extent)
and the probability-weighted centroid. Coordinates are pixel indices of the array the
mask was given in; stage 7 writes masks at the original image size, so they are
original-image pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import cv2
import numpy as np

from hbr.landmarks import LANDMARKS, Box

BOX_FIELDS = ("x", "y", "w", "h")
CENTRE_FIELDS = ("cx", "cy")
NOT_FOUND = -1  # value of every geometry cell of a landmark that was not found (upstream)


def probability_scale(prob: np.ndarray) -> float:
    """Value that stands for probability 1: 255 for integer masks (uint8 PNG), 1 for float maps."""
    if prob.dtype == bool:
        return 1.0
    if np.issubdtype(prob.dtype, np.integer):
        return 255.0
    return 1.0


def box_from_mask(prob: np.ndarray, threshold: float) -> Optional[Box]:
    """Box and weighted centre of the largest component of `prob > threshold`; None when nothing is above it.

    `prob` is a 2-D probability map, uint8 0..255 (= round(p*255)) or float 0..1;
    `threshold` is a probability in [0, 1) on either scale. NaN counts as 0. Of two
    components of equal area the first in raster order wins, so the result is
    deterministic. The centre is the centroid of the component's pixels weighted by
    their probability, which is sub-pixel and robust to a ragged mask edge.
    """
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {prob.shape}")
    above = prob > threshold * probability_scale(prob)  # NaN > t is False
    rows = np.flatnonzero(above.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(above.any(axis=0))
    # label only the part of the mask that has foreground: masks are mostly empty, and
    # this makes the component search several times faster on full-size masks
    top, left = int(rows[0]), int(cols[0])
    region = np.ascontiguousarray(above[top : rows[-1] + 1, left : cols[-1] + 1])
    n, labels, stats, _ = cv2.connectedComponentsWithStats(region.view(np.uint8), connectivity=8)
    # label 0 is the background; argmax takes the first of equal areas (raster order)
    best = 1 + int(np.argmax(stats[1:n, cv2.CC_STAT_AREA]))
    rx, ry, w, h = (int(stats[best, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    x, y = left + rx, top + ry
    inside = labels[ry : ry + h, rx : rx + w] == best
    weights = np.where(inside, prob[y : y + h, x : x + w], 0).astype(np.float64)
    weights = np.nan_to_num(weights, nan=0.0)
    total = weights.sum()
    if not total > 0:  # threshold 0 with an all-zero component cannot happen, but stay safe
        weights, total = inside.astype(np.float64), float(inside.sum())
    cy = y + float((weights.sum(axis=1) * np.arange(h)).sum() / total)
    cx = x + float((weights.sum(axis=0) * np.arange(w)).sum() / total)
    return Box(x=x, y=y, w=w, h=h, cx=cx, cy=cy)


def read_mask(path: str | Path) -> Optional[np.ndarray]:
    """A stage-7 mask as a 2-D array (uint8 PNG, or float .npy); None when it cannot be read."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return mask if mask.ndim == 2 else None
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # None for a missing or corrupt file
    if mask is None or mask.ndim != 2:
        return None
    return mask


def geometry_columns(landmarks=LANDMARKS) -> list[str]:
    """Table columns of the landmark geometry: per landmark {lm}_x, _y, _w, _h, _cx, _cy."""
    return [f"{lm}_{f}" for lm in landmarks for f in BOX_FIELDS + CENTRE_FIELDS]


def geometry_cells(boxes: Mapping[str, Optional[Box]], landmarks=LANDMARKS) -> dict[str, object]:
    """Table cells of the geometry: integer box, centre to 1/1000 px, -1 everywhere for a missing landmark."""
    cells: dict[str, object] = {}
    for lm in landmarks:
        box = boxes.get(lm)
        for f in BOX_FIELDS:
            cells[f"{lm}_{f}"] = NOT_FOUND if box is None else int(getattr(box, f))
        for f in CENTRE_FIELDS:
            cells[f"{lm}_{f}"] = NOT_FOUND if box is None else round(float(getattr(box, f)), 3)
    return cells


def boxes_from_cells(row: Mapping[str, object], landmarks=LANDMARKS) -> dict[str, Optional[Box]]:
    """Inverse of `geometry_cells` for one table row (strings or numbers): -1 or empty gives None."""
    boxes: dict[str, Optional[Box]] = {}
    for lm in landmarks:
        try:
            values = {f: float(row[f"{lm}_{f}"]) for f in BOX_FIELDS + CENTRE_FIELDS}
        except (KeyError, TypeError, ValueError):
            boxes[lm] = None
            continue
        found = values["w"] > 0 and values["h"] > 0 and not any(np.isnan(v) for v in values.values())
        boxes[lm] = Box(**values) if found else None
    return boxes
