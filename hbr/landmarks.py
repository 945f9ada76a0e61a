"""Landmark names and the box/centre record every stage passes around."""

from __future__ import annotations

from dataclasses import dataclass

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
