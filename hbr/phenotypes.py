"""Head-body-ratio phenotypes (SPEC section 5) as small pure functions.

Every length is first a pixel displacement (dx, dy) between landmark features, so
the same function gives the height-scaled value (|d| x cm_per_px, treating pixels
as square) and the scanner-scaled value (|(dx*sx, dy*sy)| in mm from ExposedArea).
Widths use landmark *centres*; upstream measured from the left landmark's box edge.
A function returns None when a landmark it needs is missing.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

from hbr.landmarks import Box

Geometry = Mapping[str, Optional[Box]]
Displacement = Optional[tuple[float, float]]


def _mean(*values: float) -> float:
    return sum(values) / len(values)


def _have(g: Geometry, *names: str) -> bool:
    return all(g.get(n) is not None for n in names)


def height_px(g: Geometry) -> Displacement:
    """Vertex of the head (top of the head box) to the mean ankle centre."""
    if not _have(g, "head", "ankle_left", "ankle_right"):
        return None
    return 0.0, _mean(g["ankle_left"].cy, g["ankle_right"].cy) - g["head"].y


def head_length(g: Geometry) -> Displacement:
    """Height of the head box."""
    return (0.0, g["head"].h) if _have(g, "head") else None


def head_width(g: Geometry) -> Displacement:
    """Width of the head box."""
    return (g["head"].w, 0.0) if _have(g, "head") else None


def _between_centres(g: Geometry, a: str, b: str) -> Displacement:
    if not _have(g, a, b):
        return None
    return g[a].cx - g[b].cx, g[a].cy - g[b].cy


def shoulder_width(g: Geometry) -> Displacement:
    """Distance between the two shoulder centres."""
    return _between_centres(g, "shoulder_left", "shoulder_right")


def hip_width(g: Geometry) -> Displacement:
    """Distance between the two hip centres."""
    return _between_centres(g, "hip_left", "hip_right")


def _vertical(g: Geometry, upper: tuple[str, ...], lower: tuple[str, ...]) -> Displacement:
    if not _have(g, *upper, *lower):
        return None
    return 0.0, _mean(*(g[n].cy for n in lower)) - _mean(*(g[n].cy for n in upper))


def trunk_length(g: Geometry) -> Displacement:
    """Mean hip height minus mean shoulder height (vertical)."""
    return _vertical(g, ("shoulder_left", "shoulder_right"), ("hip_left", "hip_right"))


def trunk_length_left(g: Geometry) -> Displacement:
    """Left hip minus left shoulder (vertical)."""
    return _vertical(g, ("shoulder_left",), ("hip_left",))


def trunk_length_right(g: Geometry) -> Displacement:
    """Right hip minus right shoulder (vertical)."""
    return _vertical(g, ("shoulder_right",), ("hip_right",))


def leg_length(g: Geometry) -> Displacement:
    """Mean ankle height minus mean hip height (vertical)."""
    return _vertical(g, ("hip_left", "hip_right"), ("ankle_left", "ankle_right"))


def leg_length_left(g: Geometry) -> Displacement:
    """Left ankle minus left hip (vertical)."""
    return _vertical(g, ("hip_left",), ("ankle_left",))


def leg_length_right(g: Geometry) -> Displacement:
    """Right ankle minus right hip (vertical)."""
    return _vertical(g, ("hip_right",), ("ankle_right",))


LENGTHS: dict[str, Callable[[Geometry], Displacement]] = {
    "head_length": head_length,
    "head_width": head_width,
    "shoulder_width": shoulder_width,
    "hip_width": hip_width,
    "trunk_length": trunk_length,
    "trunk_length_left": trunk_length_left,
    "trunk_length_right": trunk_length_right,
    "leg_length": leg_length,
    "leg_length_left": leg_length_left,
    "leg_length_right": leg_length_right,
}

# ratio name -> (numerator, denominator); "Height" is the stature in cm.
RATIOS: dict[str, tuple[str, str]] = {
    "LHR": ("head_length", "Height"),
    "WHR": ("head_width", "Height"),
    "LSR": ("head_length", "shoulder_width"),
    "WSR": ("head_width", "shoulder_width"),
    "LTR": ("head_length", "trunk_length"),
    "WTR": ("head_width", "trunk_length"),
    "LLeR": ("head_length", "leg_length"),
    "WLeR": ("head_width", "leg_length"),
    "LHiR": ("head_length", "hip_width"),
    "WHiR": ("head_width", "hip_width"),
}


def cm_per_px(g: Geometry, height_cm: Optional[float]) -> Optional[float]:
    """Stature in cm over stature in pixels; None without a usable height or landmarks."""
    d = height_px(g)
    if d is None or height_cm is None or not height_cm > 0 or not d[1] > 0:
        return None
    return height_cm / d[1]


def length_cm(d: Displacement, scale: Optional[float]) -> Optional[float]:
    """Euclidean length of a pixel displacement at `scale` cm per (square) pixel."""
    if d is None or scale is None:
        return None
    return math.hypot(*d) * scale


def length_mm(d: Displacement, spacing_mm: Optional[tuple[float, float]]) -> Optional[float]:
    """Euclidean length of a pixel displacement with anisotropic spacing (sx, sy) in mm."""
    if d is None or spacing_mm is None:
        return None
    sx, sy = spacing_mm
    return math.hypot(d[0] * sx, d[1] * sy)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator, None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return numerator / denominator


def phenotype_columns() -> list[str]:
    """Column names of `compute_phenotypes`, in table order."""
    cols = ["Height_cm", "height_px", "cm_per_px"]
    cols += [f"{name}_cm" for name in LENGTHS]
    cols += list(RATIOS)
    cols += ["stature_mm"] + [f"{name}_mm" for name in LENGTHS]
    return cols


def compute_phenotypes(
    g: Geometry,
    height_m: Optional[float],
    spacing_mm: Optional[tuple[float, float]] = None,
) -> dict[str, Optional[float]]:
    """All phenotypes of one image: lengths in cm (height-scaled), ratios, lengths in mm.

    `g` maps landmark name to its Box (or None when not found), `height_m` is the DICOM
    PatientSize in metres, `spacing_mm` the (x, y) pixel spacing from ExposedArea.
    """
    height_cm = 100.0 * height_m if height_m is not None and height_m > 0 else None
    scale = cm_per_px(g, height_cm)
    h_px = height_px(g)
    out: dict[str, Optional[float]] = {
        "Height_cm": height_cm,
        "height_px": h_px[1] if h_px else None,
        "cm_per_px": scale,
    }
    lengths = {name: fn(g) for name, fn in LENGTHS.items()}
    cm = {name: length_cm(d, scale) for name, d in lengths.items()}
    out.update({f"{name}_cm": v for name, v in cm.items()})
    # A ratio of two body lengths does not depend on the cm scale (it cancels), so it is
    # taken from pixel lengths and survives a missing or zero PatientSize; only the
    # ratios over Height need the stature in cm.
    px = {name: length_cm(d, 1.0) for name, d in lengths.items()}
    for r, (num, den) in RATIOS.items():
        if den == "Height":
            out[r] = ratio(cm[num], height_cm if scale is not None else None)
        else:
            out[r] = ratio(px[num], px[den])
    out["stature_mm"] = length_mm(h_px, spacing_mm)
    out.update({f"{name}_mm": length_mm(d, spacing_mm) for name, d in lengths.items()})
    return out
