"""Every phenotype formula of SPEC 5 on hand-made boxes with answers worked out by hand."""

import math

import pytest

from hbr.landmarks import LANDMARKS, Box
from hbr.phenotypes import RATIOS, compute_phenotypes, phenotype_columns


def point(cx, cy):
    """A point landmark: a small box around its centre (only the centre matters)."""
    return Box(x=cx - 2, y=cy - 2, w=5, h=5, cx=cx, cy=cy)


# Stature: head top y=20, ankles at cy=420 -> 400 px; 1.60 m -> 160 cm -> 0.4 cm/px.
GEOMETRY = {
    "head": Box(x=100, y=20, w=40, h=50, cx=120, cy=45),
    "shoulder_left": point(170, 100),
    "shoulder_right": point(80, 100),  # 90 px apart
    "hip_left": point(150, 224),
    "hip_right": point(102, 210),  # dx 48, dy 14 -> 50 px (a 14-48-50 right triangle)
    "ankle_left": point(140, 420),
    "ankle_right": point(110, 420),
}
HEIGHT_M = 1.60
SCALE = 0.4  # cm per pixel


@pytest.fixture
def values():
    return compute_phenotypes(GEOMETRY, HEIGHT_M)


def test_columns_match_measure(values):
    assert list(values) == phenotype_columns()


def test_height_and_scale(values):
    assert values["Height_cm"] == pytest.approx(160.0)
    assert values["height_px"] == pytest.approx(400.0)
    assert values["cm_per_px"] == pytest.approx(SCALE)


def test_head_length_and_width(values):
    assert values["head_length_cm"] == pytest.approx(50 * SCALE)
    assert values["head_width_cm"] == pytest.approx(40 * SCALE)


def test_shoulder_width_between_centres(values):
    assert values["shoulder_width_cm"] == pytest.approx(90 * SCALE)


def test_hip_width_is_euclidean(values):
    assert values["hip_width_cm"] == pytest.approx(50 * SCALE)


def test_trunk_lengths(values):
    # mean hip cy 217 - mean shoulder cy 100
    assert values["trunk_length_cm"] == pytest.approx(117 * SCALE)
    assert values["trunk_length_left_cm"] == pytest.approx((224 - 100) * SCALE)
    assert values["trunk_length_right_cm"] == pytest.approx((210 - 100) * SCALE)


def test_leg_lengths(values):
    assert values["leg_length_cm"] == pytest.approx((420 - 217) * SCALE)
    assert values["leg_length_left_cm"] == pytest.approx((420 - 224) * SCALE)
    assert values["leg_length_right_cm"] == pytest.approx((420 - 210) * SCALE)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("LHR", 20 / 160),
        ("WHR", 16 / 160),
        ("LSR", 20 / 36),
        ("WSR", 16 / 36),
        ("LTR", 20 / 46.8),
        ("WTR", 16 / 46.8),
        ("LLeR", 20 / 81.2),
        ("WLeR", 16 / 81.2),
        ("LHiR", 20 / 20),
        ("WHiR", 16 / 20),
    ],
)
def test_ratios(values, name, expected):
    assert values[name] == pytest.approx(expected)


def test_every_ratio_is_tested():
    assert set(RATIOS) == {"LHR", "WHR", "LSR", "WSR", "LTR", "WTR", "LLeR", "WLeR", "LHiR", "WHiR"}


def test_no_spacing_gives_no_mm_values(values):
    assert all(values[c] is None for c in phenotype_columns() if c.endswith("_mm"))


def test_anisotropic_mm_spacing():
    values = compute_phenotypes(GEOMETRY, HEIGHT_M, spacing_mm=(2.0, 3.0))
    assert values["stature_mm"] == pytest.approx(400 * 3.0)
    assert values["head_length_mm"] == pytest.approx(50 * 3.0)  # vertical: y spacing
    assert values["head_width_mm"] == pytest.approx(40 * 2.0)  # horizontal: x spacing
    assert values["shoulder_width_mm"] == pytest.approx(90 * 2.0)
    assert values["hip_width_mm"] == pytest.approx(math.hypot(48 * 2.0, 14 * 3.0))
    assert values["leg_length_left_mm"] == pytest.approx(196 * 3.0)
    # the cm values still treat pixels as square and scale by the stature
    assert values["hip_width_cm"] == pytest.approx(50 * SCALE)


@pytest.mark.parametrize("height_m", [None, 0, 0.0, -1.7])
def test_no_patient_size_gives_no_cm_values(height_m):
    values = compute_phenotypes(GEOMETRY, height_m, spacing_mm=(2.0, 2.0))
    assert values["Height_cm"] is None and values["cm_per_px"] is None
    assert all(values[c] is None for c in phenotype_columns() if c.endswith("_cm"))
    assert values["LHR"] is None and values["WHR"] is None
    # pixel and scanner-scaled values need no height
    assert values["height_px"] == pytest.approx(400.0)
    assert values["head_length_mm"] == pytest.approx(100.0)


def test_ratios_between_body_lengths_need_no_height():
    values = compute_phenotypes(GEOMETRY, None)
    assert values["LSR"] == pytest.approx(20 / 36)
    assert values["WHiR"] == pytest.approx(16 / 20)


def test_missing_ankle_breaks_only_what_needs_it():
    geometry = {**GEOMETRY, "ankle_left": None}
    values = compute_phenotypes(geometry, HEIGHT_M, spacing_mm=(2.0, 2.0))
    assert values["height_px"] is None and values["cm_per_px"] is None and values["stature_mm"] is None
    assert values["head_length_cm"] is None and values["LHR"] is None
    assert values["leg_length_cm"] is None and values["leg_length_left_mm"] is None
    assert values["leg_length_right_mm"] == pytest.approx((420 - 210) * 2.0)
    assert values["head_length_mm"] == pytest.approx(100.0)
    assert values["LSR"] == pytest.approx(20 / 36)  # no ankle needed


def test_missing_head_gives_no_head_ratios():
    values = compute_phenotypes({**GEOMETRY, "head": None}, HEIGHT_M)
    assert values["height_px"] is None
    assert all(values[r] is None for r in RATIOS)


def test_missing_hip_gives_no_hip_trunk_or_leg_values():
    values = compute_phenotypes({**GEOMETRY, "hip_right": None}, HEIGHT_M)
    for name in ("hip_width_cm", "trunk_length_cm", "trunk_length_right_cm", "leg_length_cm", "LHiR", "LTR", "LLeR"):
        assert values[name] is None, name
    assert values["trunk_length_left_cm"] == pytest.approx(124 * SCALE)
    assert values["LHR"] == pytest.approx(20 / 160)


def test_all_missing_gives_all_none_but_height():
    values = compute_phenotypes(dict.fromkeys(LANDMARKS), HEIGHT_M)
    assert values["Height_cm"] == pytest.approx(160.0)
    assert all(v is None for k, v in values.items() if k != "Height_cm")


def test_ankles_above_head_give_no_scale():
    geometry = {**GEOMETRY, "ankle_left": point(140, 10), "ankle_right": point(110, 10)}
    values = compute_phenotypes(geometry, HEIGHT_M)
    assert values["cm_per_px"] is None and values["LHR"] is None
