"""Landmark names and the box/centre record every stage passes around."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbr.errors import HbrError

HEAD = "head"
POINT_LANDMARKS = (
    "shoulder_left",
    "shoulder_right",
    "hip_left",
    "hip_right",
    "ankle_left",
    "ankle_right",
)
LANDMARKS = (HEAD,) + POINT_LANDMARKS


def mirrored(name: str) -> str:
    """Name of the landmark on the other side of the body (head maps to itself)."""
    if name.endswith("_left"):
        return name[: -len("_left")] + "_right"
    if name.endswith("_right"):
        return name[: -len("_right")] + "_left"
    return name


def check_landmarks(names) -> tuple[str, ...]:
    """Return `names` as a tuple in canonical order; unknown names raise HbrError listing valid ones."""
    names = tuple(names)
    unknown = [n for n in names if n not in LANDMARKS]
    if unknown:
        raise HbrError(f"unknown landmark(s) {', '.join(unknown)}; valid: {', '.join(LANDMARKS)}")
    return tuple(n for n in LANDMARKS if n in names)


@dataclass(frozen=True)
class Box:
    """Axis-aligned box (x, y, w, h) and centre (cx, cy), in original-image pixels."""

    x: float
    y: float
    w: float
    h: float
    cx: float
    cy: float


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (x, y, w, h) row by row, as areas of [x, x+w) x [y, y+h); 0 for a missing box."""
    ax0, ay0, aw, ah = a.T
    bx0, by0, bw, bh = b.T
    iw = np.clip(np.minimum(ax0 + aw, bx0 + bw) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay0 + ah, by0 + bh) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    valid = (aw > 0) & (ah > 0) & (bw > 0) & (bh > 0) & (union > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(valid, inter / np.where(union > 0, union, 1), 0.0)
    return np.nan_to_num(iou, nan=0.0)
