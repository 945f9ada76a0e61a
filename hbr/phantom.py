"""A synthetic, seeded, UK-Biobank-like whole-body DXA data set (the demo and test data).

`python -m hbr.phantom --out DIR --n N --seed S [--variant alt] [--defect-rate R]` writes

    DIR/zips/{eid}_20158_2_0.zip   bone (InstanceNumber 12) and tissue (11) "Total Body"
                                   images plus 1-3 other protocols that stage 1 must skip
    DIR/labels/                    label files of SPEC section 4 (train split only)
    DIR/ground_truth.tsv           true QC classes, landmarks, head box and phenotypes

Each body is drawn from a few proportions (stature, head length and width, shoulder,
hip and ankle width, leg proportion, girth, position, slight rotation), so phenotypes
vary as in people. The landmarks sit exactly on the anatomy drawn for them: the head
polygon is the skull outline, the points are the centres of the humeral heads, femoral
heads and tali. Left/right are the patient's: the left is on the image right (L\\F).
Defects (bad crop, abnormal contrast, tilted head, oversize) and the white background
are allocated in fixed, stratified shares; the same seed gives byte-identical files.

A second generator for checks that must not depend on this one (`--variant alt`, see
VARIANTS): other proportions (longer legs, shorter trunk, wider heads, arms held
closer to the body) and defect kinds the default never makes: heads turned (yaw: the skull
squeezed sideways and asymmetric, the face shifted toward the turn) beside tilted ones,
head or feet cut off by smaller margins, and abnormal contrast by a gamma curve or a
bone window that blanks the soft tissue. Its ground truth has the same columns plus
`defect_kind`. `--defect-rate R` makes each QC defect R of the participants (real
cohorts: a few percent) and `--train-share` sizes the labelled split; the defaults give
today's set.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian

from hbr import pipeline
from hbr.files import encode_png, write_bytes, write_text, write_tsv
from hbr.landmarks import LANDMARKS, POINT_LANDMARKS, Box
from hbr.phenotypes import compute_phenotypes

ROWS, COLS = 791, 272  # UK Biobank iDXA total body image
EXPOSED_MM = (658, 1920)  # ExposedArea (width, height) of that image: ~2.42 mm per pixel
MM_PER_PX = 2.42
OVERSIZE_SHAPES = ((1000, 400), (1024, 416), (984, 392))
WHITE = 252
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
GE_UID_ROOT = "1.2.840.113619.2.110.210419"  # GE Lunar root + device serial, as in the real files
STUDY_UID_ROOT = "1.2.826.0.1.4978912.2154"
OTHER_PROTOCOLS = {"AP Spine": 3, "Left Femur": 5, "Left Ortho Knee": 6, "LVA": 7, "Right Femur": 8}
DEFECT_RATES = {"bad_crop": 0.09, "bad_contrast": 0.09, "bad_pose": 0.09, "oversize": 0.03}
QC_DEFECTS = ("bad_crop", "bad_contrast", "bad_pose")
WHITE_SHARE, TRAIN_SHARE = 0.25, 0.7
ETHNIC = (("White", 0.88), ("Asian", 0.05), ("Black", 0.03), ("Mixed", 0.02), ("Chinese", 0.02))  # SH: <= 16 chars
CENTRES = ("Cheadle", "Reading", "Newcastle", "Stockport")
# one independent random stream per purpose, so changing one never shifts another
# (new purposes go at the end: the indices of the others, and so the default set, stay)
STREAM = {name: k for k, name in enumerate(("plan", "body", "date", "noise", "names", "others", "labelme", "kind"))}
SOFTWARE = ("16.20.059", "16.10.151", "16.0.149")
# defect kinds per variant: each QC defect's kinds (drawn with equal chance) and
# "oversize"; the alt kinds are those the default does not make, or harder versions of them
VARIANTS = {
    "default": {"bad_crop": ("head_cut", "feet_cut"), "bad_contrast": ("saturated", "washed_out", "dark"),
                "bad_pose": ("tilted",), "oversize": ("oversize",)},
    "alt": {"bad_crop": ("head_cut", "feet_cut"), "bad_contrast": ("gamma", "bone_window"),
            "bad_pose": ("tilted", "turned"), "oversize": ("oversize",)},
}


@dataclass(frozen=True)
class Body:
    """One participant's anatomy in millimetres (body frame: x to the image right, y down, vertex 0)."""

    sex: str
    age: int
    weight_kg: float
    ethnic: str
    height_m: float  # PatientSize as recorded (2 decimals)
    stature_mm: float  # vertex to sole as drawn: height_m plus posture/measurement noise
    head_len: float  # vertex to chin
    head_w: float
    shoulder_w: float  # between the humeral head centres
    hip_w: float  # between the femoral head centres
    ankle_w: float  # between the ankle centres
    hip_frac: float  # femoral heads below the vertex, as a fraction of stature (leg proportion)
    girth: float  # soft-tissue width factor from BMI
    arm_deg: float  # arm abduction
    head_roll_deg: float  # a few degrees; 20-35 for a non-standard pose
    body_deg: float  # whole-body rotation in the image
    head_turn: float = 0.0  # yaw as a signed squeeze fraction (alt variant): <= 0.04, or 0.2-0.35 when turned


@dataclass(frozen=True)
class Participant:
    """One zip: its body, image size and placement, background, defect and split."""

    seed: int
    index: int
    eid: int
    body: Body
    rows: int
    cols: int
    top_px: float  # vertex row before the whole-body rotation
    centre_x_px: float
    white: bool
    defect: Optional[str]  # one of QC_DEFECTS, "oversize" or None
    contrast_kind: str
    train: bool
    study_time: datetime
    protocols: tuple[str, ...]
    variant: str = "default"
    defect_kind: str = ""  # one of VARIANTS[variant][defect], "" without a defect
    contrast_strength: float = 0.0  # the alt contrast kinds' parameter (gamma, window floor)

    @property
    def spacing(self) -> tuple[float, float]:
        """(x, y) mm per pixel, exactly as stage 1 derives it from ExposedArea."""
        w, h = self.exposed_area
        return w / self.cols, h / self.rows

    @property
    def exposed_area(self) -> tuple[int, int]:
        """ExposedArea (width, height) in mm, consistent with the size at ~2.42 mm per pixel."""
        return round(self.cols * EXPOSED_MM[0] / COLS), round(self.rows * EXPOSED_MM[1] / ROWS)


# ---------------------------------------------------------------- planning the set
def _share(count: int, rate: float) -> int:
    return int(math.floor(count * rate + 0.5))  # round half up: 9 % of 6 is one image, not zero


def defect_rates(rate: Optional[float] = None) -> dict[str, float]:
    """Share of participants per defect: DEFECT_RATES, or `rate` for each QC defect (oversize stays)."""
    if rate is None:
        return dict(DEFECT_RATES)
    rates = {name: (rate if name in QC_DEFECTS else share) for name, share in DEFECT_RATES.items()}
    if rate < 0 or sum(rates.values()) > 1:
        raise ValueError(f"defect rate {rate}: each of the {len(QC_DEFECTS)} QC defects takes that share of the "
                         f"participants (oversize {DEFECT_RATES['oversize']}), so it must lie in "
                         f"[0, {(1 - DEFECT_RATES['oversize']) / len(QC_DEFECTS):.3f}]")
    return rates


def plan_categories(n: int, seed: int, rates: Optional[dict[str, float]] = None,
                    train_share: float = TRAIN_SHARE) -> list[tuple[Optional[str], bool, bool]]:
    """(defect, white, train) per participant, stratified so every class lands in both splits.

    `rates` (see defect_rates) and `train_share` default to the demo set's.
    """
    rng = np.random.default_rng([seed, STREAM["plan"]])
    defects: list[Optional[str]] = []
    for name, rate in (rates or DEFECT_RATES).items():
        defects += [name] * _share(n, rate)
    defects += [None] * (n - len(defects))
    defects = [defects[i] for i in rng.permutation(n)]
    white, train = [False] * n, [False] * n
    for category in (*(rates or DEFECT_RATES), None):
        members = [i for i in range(n) if defects[i] == category]
        whites = set(rng.permutation(members)[: _share(len(members), WHITE_SHARE)].tolist())
        for bak in (True, False):
            cell = [i for i in members if (i in whites) == bak]
            for i in rng.permutation(cell)[: _share(len(cell), train_share)].tolist():
                train[i] = True
            for i in cell:
                white[i] = bak
    return list(zip(defects, white, train))


def draw_body(rng: np.random.Generator, defect: Optional[str]) -> Body:
    """Random but plausible proportions; a tilted head only for the bad_pose defect."""
    male = rng.random() < 0.5
    # the scan field is 1920 mm: the tallest must still fit with their feet
    height_m = round(float(np.clip(rng.normal(1.755 if male else 1.625, 0.065), 1.50, 1.88)), 2)
    s = height_m * 1000 * (1 + float(np.clip(rng.normal(0, 0.008), -0.02, 0.02)))
    bmi = float(np.clip(rng.normal(27, 4), 18, 40))
    ref = 1755 if male else 1625
    jitter = lambda sd: 1 + float(np.clip(rng.normal(0, sd), -2.5 * sd, 2.5 * sd))  # noqa: E731
    roll = float(np.clip(rng.normal(0, 1.5), -4, 4))
    if defect == "bad_pose":
        roll = float(rng.choice([-1, 1]) * rng.uniform(20, 35))
    return Body(
        sex="M" if male else "F", age=int(rng.integers(45, 81)),
        weight_kg=round(bmi * height_m**2, 1), ethnic=_pick(rng, ETHNIC), height_m=height_m, stature_mm=s,
        head_len=(228 if male else 214) * (s / ref) ** 0.4 * jitter(0.04),
        head_w=(152 if male else 145) * (s / ref) ** 0.2 * jitter(0.045),
        shoulder_w=(0.203 if male else 0.192) * s * jitter(0.045),
        hip_w=(0.093 if male else 0.100) * s * jitter(0.05),
        ankle_w=0.092 * s * jitter(0.12),
        hip_frac=0.465 * jitter(0.02), girth=0.85 + 0.3 * (bmi - 18) / 22,
        arm_deg=float(rng.uniform(3, 9)), head_roll_deg=roll, body_deg=float(np.clip(rng.normal(0, 1), -2.5, 2.5)),
    )


def _pick(rng: np.random.Generator, weighted: Sequence[tuple[str, float]]) -> str:
    names, weights = zip(*weighted)
    return names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]


def draw_body_alt(rng: np.random.Generator, kind: str, krng: np.random.Generator) -> Body:
    """The alt variant's proportions: longer legs and a shorter trunk, wider heads, arms held
    closer to the body, heavier people; a tilted (roll) or turned (yaw) head for those kinds."""
    male = rng.random() < 0.5
    height_m = round(float(np.clip(rng.normal(1.755 if male else 1.625, 0.07), 1.50, 1.88)), 2)
    s = height_m * 1000 * (1 + float(np.clip(rng.normal(0, 0.008), -0.02, 0.02)))
    bmi = float(np.clip(rng.normal(28.5, 5), 17, 42))
    ref = 1755 if male else 1625
    jitter = lambda sd: 1 + float(np.clip(rng.normal(0, sd), -2.5 * sd, 2.5 * sd))  # noqa: E731
    roll = float(np.clip(krng.normal(0, 1.5), -4, 4))
    turn = float(np.clip(krng.normal(0, 0.015), -0.04, 0.04))  # people never face exactly up
    if kind == "tilted":
        roll = float(krng.choice([-1, 1]) * krng.uniform(20, 35))
    elif kind == "turned":
        turn = float(krng.choice([-1, 1]) * krng.uniform(0.2, 0.35))
    return Body(
        sex="M" if male else "F", age=int(rng.integers(45, 81)),
        weight_kg=round(bmi * height_m**2, 1), ethnic=_pick(rng, ETHNIC), height_m=height_m, stature_mm=s,
        head_len=(222 if male else 208) * (s / ref) ** 0.4 * jitter(0.04),
        head_w=(166 if male else 158) * (s / ref) ** 0.2 * jitter(0.05),
        shoulder_w=(0.203 if male else 0.192) * s * jitter(0.05),
        hip_w=(0.097 if male else 0.104) * s * jitter(0.05),
        ankle_w=0.105 * s * jitter(0.15),
        hip_frac=0.44 * jitter(0.02), girth=0.85 + 0.3 * (bmi - 18) / 22,
        arm_deg=float(rng.uniform(0.5, 4)), head_roll_deg=roll,
        body_deg=float(np.clip(rng.normal(0, 1.2), -2.5, 2.5)), head_turn=turn,
    )


def make_participant(index: int, seed: int, defect: Optional[str], white: bool, train: bool,
                     variant: str = "default", kind: Optional[str] = None) -> Participant:
    """Body, framing and DICOM context of participant `index` (own random streams per participant).

    The defect kind is drawn from VARIANTS[variant][defect] unless `kind` names one (previews,
    tests). The default variant draws exactly as it always did, so its sets stay byte-identical;
    what only the alt variant draws comes from a stream of its own.
    """
    kinds = _kinds(variant, defect)
    if kind is not None and kind not in kinds:
        raise ValueError(f"defect {defect!r} of variant {variant!r} has kinds {kinds}, not {kind!r}")
    alt = variant != "default"
    rng = np.random.default_rng([seed, STREAM["body"], index])
    krng = np.random.default_rng([seed, STREAM["kind"], index])
    if alt and kind is None and kinds:
        kind = str(kinds[int(krng.integers(len(kinds)))])
    b = draw_body_alt(rng, kind or "", krng) if alt else draw_body(rng, defect)
    rows, cols = OVERSIZE_SHAPES[int(rng.integers(len(OVERSIZE_SHAPES)))] if defect == "oversize" else (ROWS, COLS)
    sy = EXPOSED_MM[1] / ROWS
    extent_px = (0.96 + 0.045) * b.stature_mm / sy  # vertex to toes
    top = rng.uniform(6, max(7.0, min(40.0, rows - extent_px - 6)))
    if defect == "bad_crop":
        head_cut = rng.random() < 0.5
        kind = kind or ("head_cut" if head_cut else "feet_cut")
        # alt: smaller margins (harder): 10-30 % of the skull above the image, or ankles from
        # 18 px above the bottom edge (only the toes cut) to 25 px below it
        if kind == "head_cut":
            top = -(krng.uniform(0.1, 0.3) if alt else rng.uniform(0.3, 0.7)) * b.head_len / sy  # vertex above
        else:
            top = rows + (krng.uniform(-18, 25) if alt else rng.uniform(-12, 20)) - 0.96 * b.stature_mm / sy
    shift = float(np.clip(rng.normal(0, 4), -10, 10))
    b = _fit_arms(b, (cols / 2 - 8 - abs(shift)) * EXPOSED_MM[0] / COLS)
    first_day = int(np.random.default_rng([seed, STREAM["date"]]).integers(0, 1500))  # same for the whole set
    base = datetime(2014, 5, 1, 8, 0) + timedelta(days=first_day)
    names = list(OTHER_PROTOCOLS)
    protocols = tuple(sorted((names[k] for k in rng.permutation(len(names))[: int(rng.integers(1, 4))]),
                             key=OTHER_PROTOCOLS.get))
    contrast_kind = str(rng.choice(["saturated", "washed_out", "dark"]))  # drawn for everyone: keeps the stream
    strength = 0.0
    if defect == "bad_contrast":
        contrast_kind = kind = kind or contrast_kind
        if kind == "gamma":  # mid-tones crushed (gamma > 1) or lifted (< 1); ends stay
            strength = float(krng.uniform(2.2, 3.0) if krng.random() < 0.5 else krng.uniform(0.3, 0.45))
        elif kind == "bone_window":  # the window's floor: soft tissue below it goes black
            strength = float(krng.uniform(95, 125))
    if defect in ("bad_pose", "oversize"):
        kind = kind or kinds[0]
    return Participant(seed=seed, index=index, eid=1000000 + index, body=b, rows=rows, cols=cols, top_px=float(top),
                       centre_x_px=cols / 2 + shift, white=white, defect=defect, contrast_kind=contrast_kind,
                       train=train, study_time=base + timedelta(minutes=37 * index + int(rng.integers(0, 20))),
                       protocols=protocols, variant=variant, defect_kind=kind or "", contrast_strength=strength)


def _kinds(variant: str, defect: Optional[str]) -> tuple[str, ...]:
    """The kinds of `defect` in `variant` (none without a defect)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown phantom variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[variant][defect] if defect else ()


def _fit_arms(b: Body, half_width_mm: float) -> Body:
    """Less abduction when the hands would leave the image sideways."""
    s = b.stature_mm
    reach = (0.17 + 0.145 + 0.05) * s
    room = half_width_mm - b.shoulder_w / 2 - 0.03 * s
    limit = math.degrees(math.asin(max(0.0, min(1.0, room / reach))))
    return Body(**{**b.__dict__, "arm_deg": min(b.arm_deg, limit)})


# ---------------------------------------------------------------- drawing
def _rotate(points: np.ndarray, centre: Sequence[float], degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    d = np.asarray(points, float) - centre
    return np.stack([centre[0] + c * d[:, 0] - s * d[:, 1], centre[1] + s * d[:, 0] + c * d[:, 1]], axis=1)


def _ellipse(centre, ax: float, ay: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + ax * np.cos(t), centre[1] + ay * np.sin(t)], axis=1)


def _band(a, b, width: float) -> np.ndarray:
    """Quad of `width` around segment a-b: a bone shaft with an exact sub-pixel width."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * width / 2
    return np.array([a + nrm, b + nrm, b - nrm, a - nrm])


def skull_outline(length: float, width: float) -> np.ndarray:
    """Head polygon, vertex (0, 0) to chin (0, length): cranial arc, tapering jaw, 21 vertices."""
    equator = 0.42 * length
    t = np.linspace(np.pi, 0, 11)  # left ear over the vertex (t = pi/2) to the right ear
    arc = np.stack([width / 2 * np.cos(t), equator - equator * np.sin(t)], axis=1)
    u = np.array([0.25, 0.5, 0.72, 0.9])
    jaw = np.stack([width / 2 * (1 - 0.68 * u**1.6), equator + u * (length - equator)], axis=1)
    chin = np.array([[0.17 * width, length], [-0.17 * width, length]])
    left_jaw = jaw[::-1] * [-1, 1]
    return np.concatenate([arc, jaw, chin, left_jaw])


def turn_head(pts: np.ndarray, length: float, width: float, turn: float) -> np.ndarray:
    """Head points (vertex (0, 0), chin (0, length)) of a head turned about the body's long
    axis (yaw) as a frontal projection shows it: the skull squeezed sideways by |turn| on
    average, more on the side turned away from, and its lower part (the jaw) shifted toward
    the turn, the more the lower it lies (the vault barely moves). The face structures
    inside move further (see _draw_head): they lie in front of the turning axis."""
    x, y = pts[:, 0], pts[:, 1]
    side = np.sign(turn)
    squeeze = abs(turn) * np.where(x * side > 0, 0.6, 1.4)
    jaw = np.clip((y - 0.4 * length) / (0.5 * length), 0.0, 1.0)
    return np.stack([x * (1 - squeeze) + side * 0.3 * abs(turn) * width * jaw, y], axis=1)


class Painter:
    """Draws body-frame (mm) shapes into float layers through one affine map to pixels."""

    def __init__(self, shape: tuple[int, int], matrix: np.ndarray, head_pivot, head_roll: float,
                 head_turn: float = 0.0, head_size: tuple[float, float] = (1.0, 1.0)):
        self.matrix = matrix
        self.head_pivot, self.head_roll = head_pivot, head_roll
        self.head_turn, self.head_size = head_turn, head_size  # (length, width) of the skull, for turn_head
        self.layers = {k: np.zeros(shape, np.float32) for k in ("soft", "extra", "bone", "mask")}

    def px(self, pts, head: bool = False) -> np.ndarray:
        """Pixel coordinates of body-frame points; head parts first turn (yaw), then tilt about the neck."""
        pts = np.atleast_2d(np.asarray(pts, float))
        if head and self.head_turn:
            pts = turn_head(pts, *self.head_size, self.head_turn)
        if head and self.head_roll:
            pts = _rotate(pts, self.head_pivot, self.head_roll)
        return pts @ self.matrix[:, :2].T + self.matrix[:, 2]

    def fill(self, layer: str, pts, value: float, head: bool = False) -> None:
        """Filled polygon (overwrites: later shapes lie on top)."""
        poly = np.round(self.px(pts, head) * 16).astype(np.int32)
        cv2.fillPoly(self.layers[layer], [poly], float(value), cv2.LINE_8, shift=4)

    def line(self, layer: str, pts, value: float, width_mm: float, head: bool = False) -> None:
        """Open polyline of roughly `width_mm` (whole pixels; for thin bones such as ribs)."""
        poly = np.round(self.px(pts, head) * 16).astype(np.int32)
        width = max(1, int(round(width_mm / MM_PER_PX)))
        cv2.polylines(self.layers[layer], [poly], False, float(value), width, cv2.LINE_8, shift=4)

    def shaft(self, a, b, width: float, cortex: float, marrow: float) -> None:
        """Long bone: bright cortex with a darker medullary canal."""
        self.fill("bone", _band(a, b, width), cortex)
        self.fill("bone", _band(a, b, 0.45 * width), marrow)

    def body_part(self, pts, thickness: float, head: bool = False) -> None:
        """Soft tissue: thickness drives both images; the mask marks non-background pixels."""
        self.fill("soft", pts, thickness, head)
        self.fill("mask", pts, 1.0, head)


def _image_matrix(p: Participant) -> np.ndarray:
    """mm body frame -> pixels: scale by the spacing, rotate about mid-body, place."""
    b, (sx, sy) = p.body, p.spacing
    t = math.radians(b.body_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ np.diag([1 / sx, 1 / sy])
    mid_px = np.array([p.centre_x_px, p.top_px + b.stature_mm / 2 / sy])
    return np.hstack([rot, (mid_px - rot @ [0, b.stature_mm / 2])[:, None]])


def key_points(b: Body) -> dict[str, np.ndarray]:
    """Joint centres in the body frame (mm); '+x' is the patient's left (image right)."""
    s = b.stature_mm
    ys, yh, ya = b.head_len + 0.045 * s, b.hip_frac * s, 0.96 * s
    yk = yh + 0.53 * (ya - yh)
    k = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        sh = np.array([sign * b.shoulder_w / 2, ys])
        arm = math.radians(b.arm_deg)
        elbow = sh + [sign * math.sin(arm) * 0.17 * s, math.cos(arm) * 0.17 * s]
        wrist = elbow + [sign * math.sin(arm * 1.2) * 0.145 * s, math.cos(arm * 1.2) * 0.145 * s]
        hip, ankle = np.array([sign * b.hip_w / 2, yh]), np.array([sign * b.ankle_w / 2, ya])
        knee = np.array([sign * (0.5 * (abs(hip[0]) + abs(ankle[0])) - 0.004 * s), yk])
        k.update({f"shoulder_{side}": sh, f"elbow_{side}": elbow, f"wrist_{side}": wrist,
                  f"hip_{side}": hip, f"knee_{side}": knee, f"ankle_{side}": ankle})
    return k


def _draw_envelope(pt: Painter, b: Body, k: dict, skull: np.ndarray) -> None:
    s, g = b.stature_mm, b.girth
    L, xs, ys, yh = b.head_len, b.shoulder_w / 2, k["shoulder_left"][1], k["hip_left"][1]
    xh, xa, ya = k["hip_left"][0], k["ankle_left"][0], k["ankle_left"][1]
    xk, yk = k["knee_left"]
    yc, xc = yk + 0.12 * s, xk + 0.45 * (xa - xk)
    half = [(0.034 * s * g**0.5, L - 0.01 * s), (0.04 * s * g**0.5, ys - 0.035 * s), (xs + 0.012 * s, ys - 0.03 * s),
            (xs + 0.03 * s, ys + 0.01 * s), (0.085 * s * g, ys + 0.09 * s), (0.08 * s * g, yh - 0.13 * s),
            (xh + 0.065 * s * g, yh - 0.02 * s), (xh + 0.058 * s * g, yh + 0.08 * s), (xk + 0.035 * s, yk),
            (xc + 0.034 * s * g**0.5, yc), (xa + 0.02 * s, ya - 0.015 * s), (xa + 0.025 * s, ya + 0.02 * s),
            (xa + 0.012 * s, ya + 0.045 * s), (xa - 0.012 * s, ya + 0.043 * s), (xa - 0.018 * s, ya - 0.005 * s),
            (xc - 0.028 * s * g**0.5, yc), (xk - 0.03 * s, yk), (max(0.004 * s, xh - 0.05 * s * g), yh + 0.1 * s)]
    half = np.array(half)
    outline = np.concatenate([half, [(0, yh + 0.07 * s)], half[::-1] * [-1, 1]])
    pt.body_part(outline, 1.0)
    trunk = np.concatenate([half[2:7], half[6:1:-1] * [-1, 1]])
    pt.fill("soft", trunk, 1.3)  # the trunk is thicker than the limbs
    shin = half[[8, 9, 10, 14, 15, 16]]
    for mirror in (1, -1):
        pt.fill("soft", shin * [mirror, 1], 0.85)
    for side in ("left", "right"):
        sh, el, wr = k[f"shoulder_{side}"], k[f"elbow_{side}"], k[f"wrist_{side}"]
        pt.body_part(_band(sh, el, 0.058 * s * g), 1.05)
        pt.body_part(_ellipse(sh + [0, 0.01 * s], 0.03 * s * g, 0.035 * s), 1.05)
        pt.body_part(_ellipse(el, 0.025 * s * g, 0.02 * s), 1.0)
        pt.body_part(_band(el, wr + (wr - el) * 0.05, 0.043 * s * g**0.5), 0.95)
        pt.body_part(_ellipse(wr + (wr - el) * 0.38, 0.022 * s, 0.052 * s), 0.85)
        sign = 1 if side == "left" else -1
        pt.fill("extra", _ellipse((sign * 0.052 * s, ys + 0.1 * s), 0.043 * s, 0.09 * s), -55)  # lung
    pt.fill("extra", _ellipse((0, yh - 0.08 * s), 0.07 * s * g, 0.07 * s), 18)  # abdomen
    head_centre = (0, 0.45 * L)
    pt.body_part(head_centre + (skull - head_centre) * 1.08, 0.8, head=True)


def _draw_head(pt: Painter, b: Body, skull: np.ndarray) -> None:
    L, W = b.head_len, b.head_w
    # a turned head's face lies in front of the turning axis: it moves sideways more than the outline
    face = (lambda pts: np.asarray(pts, float) + [0.6 * b.head_turn * W, 0]) if b.head_turn else np.asarray
    pt.fill("bone", skull, 170, head=True)
    pt.line("bone", skull[:11], 200, 7, head=True)  # dense cranial vault
    for sign in (-1, 1):
        pt.fill("bone", face(_ellipse((sign * 0.23 * W, 0.48 * L), 0.13 * W, 0.075 * L)), 85, head=True)  # orbit
    pt.fill("bone", face([(-0.07 * W, 0.68 * L), (0.07 * W, 0.68 * L), (0, 0.55 * L)]), 80, head=True)  # nasal aperture
    pt.fill("bone", face(_ellipse((0, 0.79 * L), 0.26 * W, 0.055 * L)), 185, head=True)  # teeth
    pt.line("bone", 0.93 * skull[10:18] + [0, 0.06 * L], 175, 8, head=True)  # mandible


def _draw_axial(pt: Painter, b: Body, k: dict) -> None:
    s, L = b.stature_mm, b.head_len
    ys, yh = k["shoulder_left"][1], k["hip_left"][1]
    levels = [(7, 0.86 * L, ys - 0.01 * s, 0.022), (12, ys - 0.01 * s, yh - 0.19 * s, 0.027),
              (5, yh - 0.19 * s, yh - 0.075 * s, 0.036)]
    for count, top, bottom, width in levels:  # cervical, thoracic, lumbar vertebrae
        step = (bottom - top) / count
        for i in range(count):
            y = top + step * (i + 0.5)
            w = width * s * (0.85 + 0.3 * i / count)
            pt.fill("bone", _ellipse((0, y), w / 2, step * 0.38, n=12), 115)
            pt.fill("bone", _ellipse((0, y), 0.006 * s, step * 0.2, n=8), 150)  # spinous process
    rib_top, rib_step = ys - 0.01 * s, (yh - 0.21 * s - ys) / 11
    for i in range(12):
        y = rib_top + i * rib_step
        reach = (0.045 + 0.05 * math.sin(math.pi * min(i, 7) / 14)) * s
        for sign in (-1, 1):
            rib = [(sign * 0.012 * s, y), (sign * 0.6 * reach, y - 0.004 * s), (sign * reach, y + 0.02 * s),
                   (sign * reach * 0.96, y + 0.055 * s), (sign * reach * 0.7, y + 0.08 * s)]
            pt.line("bone", rib, 62, 4)
    for sign in (-1, 1):
        xs = abs(k["shoulder_left"][0])
        clavicle = [(sign * 0.014 * s, ys - 0.032 * s), (sign * 0.5 * xs, ys - 0.04 * s),
                    (sign * 0.92 * xs, ys - 0.028 * s)]
        pt.line("bone", clavicle, 125, 11)
        pt.fill("bone", [(sign * 0.95 * xs, ys - 0.02 * s), (sign * 0.5 * xs, ys + 0.005 * s),
                         (sign * 0.72 * xs, ys + 0.1 * s)], 30)  # scapula


def _draw_limbs(pt: Painter, b: Body, k: dict) -> None:
    s = b.stature_mm
    yh = k["hip_left"][1]
    pt.fill("bone", [(-0.035 * s, yh - 0.085 * s), (0.035 * s, yh - 0.085 * s), (0, yh + 0.02 * s)], 95)  # sacrum
    for side, sign in (("left", 1.0), ("right", -1.0)):
        sh, el, wr = k[f"shoulder_{side}"], k[f"elbow_{side}"], k[f"wrist_{side}"]
        hip, knee, ankle = k[f"hip_{side}"], k[f"knee_{side}"], k[f"ankle_{side}"]
        xh = abs(hip[0])
        ilium = np.array([(0.03, -0.09), (xh / s + 0.02, -0.13), (xh / s + 0.05, -0.112), (xh / s + 0.058, -0.085),
                          (xh / s + 0.04, -0.045), (xh / s + 0.018, -0.016), (xh / s - 0.01, -0.014),
                          (0.03, -0.045)]) * s
        ilium = ilium * [sign, 1] + [0, yh]
        pt.fill("bone", ilium, 42)
        pt.line("bone", ilium[:5], 105, 6)  # iliac crest
        pt.line("bone", ilium[5:], 95, 5)  # pelvic brim
        pt.line("bone", _ellipse((sign * (xh - 0.03 * s), yh + 0.04 * s), 0.02 * s, 0.018 * s, n=16)[[*range(16), 0]],
                95, 6)  # pubic ring around the obturator foramen
        trochanter = hip + [sign * 0.035 * s, 0.018 * s]
        pt.fill("bone", _band(hip, trochanter, 0.02 * s), 125)  # femoral neck
        pt.shaft(trochanter - [sign * 0.006 * s, 0], knee - [0, 0.01 * s], 0.016 * s, 140, 105)
        pt.fill("bone", _ellipse(knee - [0, 0.008 * s], 0.027 * s, 0.016 * s), 125)  # condyles
        pt.fill("bone", _ellipse(knee + [0, 0.024 * s], 0.026 * s, 0.011 * s), 118)  # tibial plateau
        pt.fill("bone", _ellipse(knee - [0, 0.01 * s], 0.012 * s, 0.014 * s), 140)  # patella
        pt.line("bone", [knee + [sign * 0.022 * s, 0.03 * s], ankle + [sign * 0.019 * s, -0.004 * s]], 92, 8)  # fibula
        pt.shaft(knee + [0, 0.03 * s], ankle - [0, 0.02 * s], 0.013 * s, 135, 100)  # tibia
        pt.fill("bone", _ellipse(ankle + [sign * 0.004 * s, 0.02 * s], 0.016 * s, 0.015 * s), 105)  # hind foot
        for toe in np.linspace(-0.012, 0.016, 5):
            pt.line("bone", [ankle + [sign * 0.004 * s, 0.025 * s], ankle + [sign * toe * s, 0.043 * s]], 95, 4)
        pt.fill("bone", _ellipse(ankle - [0, 0.016 * s], 0.015 * s, 0.009 * s), 150)  # distal tibia
        pt.fill("bone", _ellipse(ankle, 0.013 * s, 0.0095 * s), 165)  # talus: the ankle landmark
        pt.fill("bone", _ellipse(hip, 0.0125 * s, 0.0125 * s), 160)  # femoral head: the hip landmark
        pt.line("bone", _ellipse(hip, 0.0145 * s, 0.0145 * s, n=24)[8:21], 150, 5)  # acetabular roof
        # arm: humerus, radius and ulna, hand
        pt.line("bone", _ellipse(sh, 0.013 * s, 0.013 * s)[[*range(24), 0]], 165, 3)
        pt.shaft(sh, el + (el - sh) * 0.04, 0.0095 * s, 130, 100)
        pt.fill("bone", _ellipse(el, 0.014 * s, 0.009 * s), 130)
        across = np.array([-(wr - el)[1], (wr - el)[0]]) / np.hypot(*(wr - el)) * 0.0055 * s
        for offset in (across, -across):
            pt.line("bone", [el + offset, wr + offset * 1.3], 108, 8)
        pt.fill("bone", _ellipse(wr + (wr - el) * 0.12, 0.014 * s, 0.012 * s), 90)  # carpals
        for finger in np.linspace(-0.011, 0.011, 4):
            tip = wr + (wr - el) * 0.62 + [finger * s, 0]
            pt.line("bone", [wr + (wr - el) * 0.2 + [finger * s * 0.5, 0], tip], 80, 4)
        pt.fill("bone", _ellipse(sh, 0.0125 * s, 0.0125 * s), 145)  # humeral head: the shoulder landmark


def render(p: Participant) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Bone and tissue images (float, black background), body mask and landmarks in pixels."""
    b = p.body
    skull = skull_outline(b.head_len, b.head_w)
    pt = Painter((p.rows, p.cols), _image_matrix(p), (0.0, 0.9 * b.head_len), b.head_roll_deg,
                 b.head_turn, (b.head_len, b.head_w))
    k = key_points(b)
    _draw_envelope(pt, b, k, skull)
    _draw_axial(pt, b, k)
    _draw_limbs(pt, b, k)
    _draw_head(pt, b, skull)
    landmarks = {"head": pt.px(skull, head=True), **{n: pt.px(k[n]) for n in POINT_LANDMARKS}}
    rng = np.random.default_rng([p.seed, STREAM["noise"], p.index])
    lay = pt.layers
    # thickness varies smoothly inside the body (normalised wide blur) but the skin edge stays sharp
    wide = cv2.GaussianBlur(lay["mask"], (0, 0), 9.0) + 1e-6
    soft = cv2.GaussianBlur(lay["mask"], (0, 0), 1.5) * cv2.GaussianBlur(lay["soft"], (0, 0), 9.0) / wide
    extra = cv2.GaussianBlur(lay["extra"], (0, 0), 6.0)
    mottle = cv2.GaussianBlur(rng.standard_normal(soft.shape, np.float32), (0, 0), 2.0)
    bone = cv2.GaussianBlur(lay["bone"], (0, 0), 0.8) * (1 + 0.3 * mottle)  # trabecular mottle
    texture = cv2.GaussianBlur(rng.standard_normal(soft.shape, np.float32), (0, 0), 4.0) * 25
    grain = rng.standard_normal((2, *soft.shape), np.float32)
    mask = lay["mask"] > 0.5
    bone_img = 72 * soft + bone + texture + 5 * grain[0]
    tissue_img = 142 * soft + extra * (soft > 0.5) + 0.12 * bone + texture + 4 * grain[1]
    return bone_img, tissue_img, mask, landmarks


def finish(image: np.ndarray, mask: np.ndarray, white: bool, contrast: Optional[str] = None,
           strength: float = 0.0) -> np.ndarray:
    """uint8 0..252 with an exactly black background; abnormal contrast; inverted on white.

    `strength` is the parameter of the alt variant's kinds: the gamma, or the bone window's floor.
    """
    body = np.clip(image, 1, WHITE)
    if contrast == "saturated":
        body = np.clip(body * 2.6, 1, WHITE)  # burnt out: most of the body at full white
    elif contrast == "washed_out":
        body = 95 + body * 0.3  # little dynamic range, grey soft tissue
    elif contrast == "dark":
        body = 1 + body * 0.3  # bones barely brighter than soft tissue
    elif contrast == "gamma":
        body = np.clip(WHITE * (body / WHITE) ** strength, 1, WHITE)  # a wrong display curve
    elif contrast == "bone_window":
        body = np.clip((body - strength) * 2.5 + 1, 1, WHITE)  # windowed on bone: soft tissue near black
    out = np.where(mask, np.round(body), 0).astype(np.uint8)
    return (WHITE - out).astype(np.uint8) if white else out


def other_protocol_image(protocol: str, rng: np.random.Generator) -> np.ndarray:
    """A small regional scan (spine or a long bone) that stage 1 must skip unread."""
    rows, cols = int(rng.integers(100, 140)) * 2, int(rng.integers(80, 120)) * 2
    img = np.zeros((rows, cols), np.float32)
    if "Spine" in protocol or protocol == "LVA":
        for y in np.linspace(0.1, 0.9, 6) * rows:
            cv2.ellipse(img, (cols // 2, int(y)), (cols // 6, rows // 16), 0, 0, 360, 170.0, -1)
    else:
        cv2.line(img, (cols // 2, rows // 5), (cols // 2, rows), 150.0, cols // 8)
        cv2.circle(img, (cols // 2 + cols // 8, rows // 5), cols // 9, 190.0, -1)
    img = cv2.GaussianBlur(img, (0, 0), 3) + rng.normal(0, 4, img.shape) * (img > 1)
    return np.clip(img, 0, WHITE).astype(np.uint8)


# ---------------------------------------------------------------- files
def _uid_time(p: Participant, instance: int) -> datetime:
    return p.study_time + timedelta(seconds=40 * instance)


def dicom_bytes(pixels: np.ndarray, p: Participant, instance: int, protocol: str) -> bytes:
    """An 8-bit MONOCHROME2 CR file with UK-Biobank-like tags, Implicit VR Little Endian."""
    acquired = _uid_time(p, instance)
    uid = f"{GE_UID_ROOT}.{acquired:%Y%m%d%H%M%S}.1.{instance}.12.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CR_SOP_CLASS, uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID, meta.ImplementationVersionName = "1.2.276.0.7230010.3.0.3.6.0", "OFFIS_DCMBP_360"
    meta.SourceApplicationEntityTitle = "GELUNAR"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    b, rng = p.body, np.random.default_rng([p.seed, STREAM["names"], p.index])
    pseudonym = lambda: " ".join("".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"), 2))  # noqa: E731
                                 for _ in range(4))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CR_SOP_CLASS, uid
    ds.StudyDate = ds.AcquisitionDate = f"{p.study_time:%Y%m%d}"
    ds.StudyTime, ds.AcquisitionTime = f"{p.study_time:%H%M%S}", f"{acquired:%H%M%S}"
    ds.AccessionNumber, ds.Modality, ds.Manufacturer = "", "CR", "GE Healthcare"
    ds.InstitutionName, ds.StationName = "UK Biobank", "UKB007906"
    ds.StudyDescription, ds.SeriesDescription = "DXA Exam", "DXA Images"
    ds.InstitutionalDepartmentName = CENTRES[p.eid % len(CENTRES)]
    ds.ManufacturerModelName = "Lunar iDXA"
    ds.PatientName, ds.PatientID = f"{pseudonym()}^Bio", pseudonym()
    ds.PatientBirthDate = f"{p.study_time.year - b.age}0101"
    ds.PatientSex, ds.PatientAge = b.sex, f"{b.age:03d}Y"
    ds.PatientSize, ds.PatientWeight, ds.EthnicGroup = f"{b.height_m:.2f}", f"{b.weight_kg:.2f}", b.ethnic
    ds.BodyPartExamined, ds.DeviceSerialNumber = "", "210419"
    ds.SoftwareVersions = SOFTWARE[p.eid % len(SOFTWARE)]
    ds.ProtocolName, ds.ViewPosition = protocol, ""
    ds.StudyInstanceUID = f"{STUDY_UID_ROOT}.{p.study_time:%Y%m%d%H%M%S}"
    ds.SeriesInstanceUID = f"{GE_UID_ROOT}.{p.study_time:%Y%m%d%H%M%S}.1"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "NONE", 1, instance
    ds.PatientOrientation, ds.Laterality = ["L", "F"], ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PerformedProcedureStepDescription = protocol
    ds.ExposedArea = list(p.exposed_area) if protocol == "Total Body" else [
        round(pixels.shape[1] * 0.6), round(pixels.shape[0] * 0.6)]
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def zip_bytes(p: Participant, bone: np.ndarray, tissue: np.ndarray) -> bytes:
    """The participant's zip: Total Body 12 and 11 and the other protocols, fixed timestamps."""
    rng = np.random.default_rng([p.seed, STREAM["others"], p.index])
    members = [(12, "Total Body", bone), (11, "Total Body", tissue)]
    members += [(OTHER_PROTOCOLS[name], name, other_protocol_image(name, rng)) for name in p.protocols]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for instance, protocol, pixels in sorted(members):
            stamp = _uid_time(p, instance)
            info = zipfile.ZipInfo(f"{GE_UID_ROOT}.{stamp:%Y%m%d%H%M%S}.1.{instance}.12.1.dcm", stamp.timetuple()[:6])
            info.compress_type, info.create_system, info.external_attr = zipfile.ZIP_DEFLATED, 3, 0o644 << 16
            zf.writestr(info, dicom_bytes(pixels, p, instance, protocol))
    return buffer.getvalue()


def labelme_json(image_id: str, image: np.ndarray, landmarks: dict, rng: np.random.Generator) -> str:
    """LabelMe 5.4.1 file as the program writes it (imageData embedded), shapes in random order."""
    shapes = [{"label": n, "points": np.round(landmarks[n], 2).tolist(), "group_id": None, "description": "",
               "shape_type": "polygon" if n == "head" else "point", "flags": {}, "mask": None} for n in LANDMARKS]
    data = {"version": "5.4.1", "flags": {}, "shapes": [shapes[i] for i in rng.permutation(len(shapes))],
            "imagePath": f"{image_id}.png", "imageData": base64.b64encode(encode_png(image)).decode("ascii"),
            "imageHeight": int(image.shape[0]), "imageWidth": int(image.shape[1])}
    return json.dumps(data, indent=2, ensure_ascii=False)


def geometry(landmarks: dict) -> dict[str, Box]:
    """Boxes of the true landmarks: the head polygon's bounds, points as zero-size boxes."""
    out = {}
    for name, pts in landmarks.items():
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        out[name] = Box(float(x0), float(y0), float(x1 - x0), float(y1 - y0), float(x0 + x1) / 2, float(y0 + y1) / 2)
    return out


def truth_row(image_id: str, p: Participant, kind: str, landmarks: dict) -> dict:
    """One ground-truth row: classes, geometry and the true phenotypes (tissue: same body)."""
    g, bone = geometry(landmarks), kind == "bone"
    row = {"Image": image_id, "eid": p.eid, "InstanceNumber": 12 if bone else 11, "kind": kind,
           "split": "train" if p.train else "test", "background": "white" if p.white else "black",
           "is_bone": int(bone), "bad_crop": int(p.defect == "bad_crop"),  # framing is shared by both images
           "bad_contrast": int(bone and p.defect == "bad_contrast"),  # only the bone image is mis-windowed
           "bad_pose": int(p.defect == "bad_pose"), "oversize": int(p.defect == "oversize"),
           **({"defect_kind": image_defect_kind(p, kind)} if p.variant != "default" else {}),  # default: as before
           "Rows": p.rows, "Columns": p.cols, "height_m": p.body.height_m,
           "spacing_mm_x": p.spacing[0], "spacing_mm_y": p.spacing[1]}
    head = g["head"]
    row.update(head_x=head.x, head_y=head.y, head_w=head.w, head_h=head.h, head_cx=head.cx, head_cy=head.cy)
    for n in POINT_LANDMARKS:
        row[f"{n}_cx"], row[f"{n}_cy"] = g[n].cx, g[n].cy
    row.update(compute_phenotypes(g, p.body.height_m, p.spacing))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def image_defect_kind(p: Participant, kind: str) -> str:
    """The defect kind an image of the participant shows ("" for none): the tissue image
    shares the framing, pose and size of the bone image but is never mis-windowed."""
    return "" if kind != "bone" and p.defect == "bad_contrast" else p.defect_kind


def label_tables(truth: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Classifier label files (SPEC 4): which train-split images each lists, with which label."""
    t = truth[truth["split"] == "train"]
    bone = t[t["kind"] == "bone"]
    # oversize images are left out of the framing labels: the canvas crops them, so the
    # model may see a cut-off head on an image labelled well framed (stage 4 removes them)
    framed = bone[(bone["bad_crop"] == 0) & (bone["oversize"] == 0)]
    label_file = lambda task, bak=None: pipeline.stage(task).label_names(bak)[0]  # noqa: E731
    sets = {label_file("body"): (t, "is_bone"), label_file("crop"): (bone[bone["oversize"] == 0], "bad_crop")}
    for bak in pipeline.BACKGROUNDS:
        mine = framed[framed["background"] == bak]
        sets[label_file("contrast", bak)] = (mine, "bad_contrast")
        sets[label_file("pose", bak)] = (mine[mine["bad_contrast"] == 0], "bad_pose")
    return {name: pd.DataFrame({"File_Name": rows["Image"], "Label": rows[col].astype(int),
                                "File_Name_npy": rows["Image"] + ".npy"}) for name, (rows, col) in sets.items()}


@dataclass(frozen=True)
class PhantomSummary:
    """Where the phantom set was written and how many of each kind it has."""

    out: Path
    zips: int
    images: int
    counts: dict  # bone images per defect, plus "white" participants and "labelme" files

    @property
    def ground_truth(self) -> Path:
        """The ground-truth table."""
        return self.out / "ground_truth.tsv"


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Drop zips and LabelMe files of an earlier, larger run into the same folder (ours only)."""
    patterns = [(out / "zips", re.compile(r"\d{7}_20158_2_0\.zip")),
                *((d, re.compile(r"\d{7}_20158_2_0_12\.json")) for d in (out / "labels").glob(f"{pipeline.stage(7).name}_*"))]
    for folder, pattern in patterns:
        for path in folder.glob("*") if folder.is_dir() else ():
            if pattern.fullmatch(path.name) and str(path) not in keep:
                path.unlink()


def generate(out_dir: str | Path, n: int, seed: int = 0, variant: str = "default",
             defect_rate: Optional[float] = None, train_share: float = TRAIN_SHARE) -> PhantomSummary:
    """Write the phantom set of `n` participants into `out_dir`; byte-identical for a seed.

    `variant` picks the generator (VARIANTS), `defect_rate` the share of participants with
    each QC defect (default DEFECT_RATES), `train_share` the share in the labelled split.
    """
    _kinds(variant, None)  # an unknown variant fails before anything is written
    if not 0 < train_share < 1:
        raise ValueError(f"train share {train_share} must lie strictly between 0 and 1")
    out = Path(out_dir)
    rows, written = [], set()
    for i, (defect, white, train) in enumerate(plan_categories(n, seed, defect_rates(defect_rate), train_share)):
        p = make_participant(i, seed, defect, white, train, variant)
        stem = f"{p.eid}_20158_2_0"
        bone, tissue, mask, landmarks = render(p)
        contrast = p.contrast_kind if p.defect == "bad_contrast" else None
        bone_img = finish(bone, mask, p.white, contrast, p.contrast_strength)
        tissue_img = finish(tissue, mask, p.white)
        path = out / "zips" / f"{stem}.zip"
        write_bytes(path, zip_bytes(p, bone_img, tissue_img))
        written.add(str(path))
        rows += [truth_row(f"{stem}_12", p, "bone", landmarks), truth_row(f"{stem}_11", p, "tissue", landmarks)]
        if p.train and p.defect is None:
            folder = pipeline.stage(7).label_names("white" if p.white else "black")[0]
            path = out / "labels" / folder / f"{stem}_12.json"
            shuffle = np.random.default_rng([seed, STREAM["labelme"], i])
            write_text(path, labelme_json(f"{stem}_12", bone_img, landmarks, shuffle))
            written.add(str(path))
    _remove_stale(out, written)
    truth = pd.DataFrame(rows)
    write_tsv(out / "ground_truth.tsv", truth)
    for name, table in label_tables(truth).items():
        write_tsv(out / "labels" / name, table)
    bone_rows = truth[truth["kind"] == "bone"]
    counts = {d: int(bone_rows[d].sum()) for d in DEFECT_RATES}
    counts["white"] = int((bone_rows["background"] == "white").sum())
    counts["labelme"] = sum(1 for w in written if w.endswith(".json"))
    return PhantomSummary(out, n, len(truth), counts)


def preview(path: str | Path, seed: int = 0, variant: str = "default") -> None:
    """A PNG grid of phantom images: bone, tissue and one of each defect, titled (for the README).

    For another variant than the default: one tile per defect kind of that variant.
    """
    cases: list[tuple[str, Optional[str], Optional[str], bool]] = [("bone", None, None, False),
                                                                  ("tissue", None, None, False)]
    if variant == "default":
        cases += [("bad crop", "bad_crop", None, False), ("abnormal contrast", "bad_contrast", None, False),
                  ("head pose", "bad_pose", None, False), ("white background", None, None, True),
                  ("oversize", "oversize", None, False)]
    else:
        cases += [(kind.replace("_", " "), defect, kind, False)
                  for defect in QC_DEFECTS for kind in _kinds(variant, defect)]
        cases += [("white background", None, None, True)]
    tiles = []
    for k, (title, defect, kind, white) in enumerate(cases):
        # tissue: the bone's twin
        p = make_participant(0 if title == "tissue" else k, seed, defect, white, True, variant, kind)
        bone, tissue, mask, _ = render(p)
        contrast = p.contrast_kind if defect == "bad_contrast" else None
        img = finish(tissue, mask, white) if title == "tissue" else finish(bone, mask, white, contrast,
                                                                             p.contrast_strength)
        tile = np.full((max(s[0] for s in OVERSIZE_SHAPES) + 44, max(s[1] for s in OVERSIZE_SHAPES) + 8), 128, np.uint8)
        y0, x0 = 44 + (tile.shape[0] - 44 - img.shape[0]) // 2, (tile.shape[1] - img.shape[1]) // 2
        tile[y0:y0 + img.shape[0], x0:x0 + img.shape[1]] = img
        cv2.putText(tile, title, (8, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.75, 255, 2, cv2.LINE_AA)
        tiles.append(tile)
    grid = cv2.resize(np.concatenate(tiles, axis=1), None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    write_bytes(path, encode_png(grid))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: python -m hbr.phantom --out DIR --n N --seed S [--variant V] [--defect-rate R] [--preview PNG]."""
    parser = argparse.ArgumentParser(prog="python -m hbr.phantom", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=100, help="participants (zips), default 100")
    parser.add_argument("--seed", type=int, default=0, help="random seed, default 0")
    parser.add_argument("--variant", choices=list(VARIANTS), default="default",
                        help="generator: default, or alt (other proportions and defect kinds; adds defect_kind "
                             "to the ground truth)")
    parser.add_argument("--defect-rate", type=float, default=None, metavar="R",
                        help=f"share of participants with each QC defect ({', '.join(QC_DEFECTS)}); default "
                             + ", ".join(f"{k} {v:g}" for k, v in DEFECT_RATES.items()))
    parser.add_argument("--train-share", type=float, default=TRAIN_SHARE,
                        help="share of participants in the labelled (train) split; the rest is held out")
    parser.add_argument("--preview", type=Path, default=None, help="also write a PNG grid of examples here")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        defect_rates(args.defect_rate)
        if not 0 < args.train_share < 1:
            raise ValueError("--train-share must lie strictly between 0 and 1")
    except ValueError as exc:
        parser.error(str(exc))
    summary = generate(args.out, args.n, args.seed, args.variant, args.defect_rate, args.train_share)
    print(f"phantom: {summary.zips} zips, {summary.images} Total Body images -> {summary.out / 'zips'}; "
          f"labels -> {summary.out / 'labels'}; truth -> {summary.ground_truth}; counts: {summary.counts}")
    if args.preview:
        preview(args.preview, seed=args.seed, variant=args.variant)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
