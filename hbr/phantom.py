"""A synthetic, seeded, UK-Biobank-like whole-body DXA data set (the demo and test data).

`python -m hbr.phantom --out DIR --n N --seed S` writes

    DIR/zips/{eid}_20158_2_0.zip   bone (InstanceNumber 12) and tissue (11) "Total Body"
                                   images plus other protocols that stage 1 must skip
    DIR/labels/                    label files in the formats of labels/README.md
    DIR/ground_truth.tsv           true QC classes, landmarks, head box and phenotypes

Bodies are drawn from a few proportions (stature, head length and width, shoulder and
hip width, trunk and leg length, position, slight rotation) so the phenotypes vary as
in people. Every landmark sits exactly on the anatomy drawn for it: the head polygon
is the skull outline, the shoulder, hip and ankle points are the centres of the humeral
heads, femoral heads and tali. Some bone images carry one defect (cut off, abnormal
contrast, tilted head); a share of participants are on a white background (intensities
inverted), a few images are larger than the 960x384 canvas. Output is byte-identical
for a given seed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian

from hbr.files import encode_png, write_bytes, write_text, write_tsv
from hbr.landmarks import LANDMARKS, POINT_LANDMARKS, Box
from hbr.phenotypes import measure

ROWS, COLS = 791, 272  # UK Biobank iDXA total body image
SPACING = (658 / 272, 1920 / 791)  # mm per pixel (x, y) from ExposedArea 658 x 1920
OVERSIZE = (1000, 400)
WHITE = 252
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
UID_ROOT = "1.2.826.0.1.3680043.10.1143"
ZIP_TIME = (2018, 7, 19, 14, 13, 12)
OTHER_PROTOCOLS = [("AP Spine", 18, (780, 716)), ("Left Femur", 5, (600, 680)), ("LVA", 7, (884, 404))]
DEFECTS = ("bad_crop", "bad_contrast", "bad_pose")
HEAD_VERTICES = 20


@dataclass(frozen=True)
class Body:
    """One participant's body, in image pixels of the upright (unrotated) frame."""

    height_m: float
    sex: str
    age: int
    weight: float
    top: float  # vertex row
    centre_x: float
    stature_px: float  # vertex to sole
    head_len: float
    head_w: float
    shoulder_w: float  # between the shoulder joint centres
    hip_w: float  # between the femoral head centres
    shoulder_frac: float  # shoulder joints below the vertex, fraction of stature
    hip_frac: float
    angle_deg: float  # whole-body rotation
    head_tilt_deg: float  # non-zero only for a non-standard pose


@dataclass(frozen=True)
class Participant:
    """Everything drawn for one zip: body, image size, background and defect."""

    eid: int
    body: Body
    rows: int
    cols: int
    white: bool
    defect: Optional[str]
    contrast_kind: int
    train: bool


def draw_participant(rng: np.random.Generator, eid: int) -> Participant:
    """Random body proportions, framing, background and at most one defect."""
    sex = "M" if rng.random() < 0.5 else "F"
    height_m = float(np.clip(rng.normal(1.76 if sex == "M" else 1.63, 0.065), 1.50, 1.88))
    stature_px = height_m * 1000 / SPACING[1] * rng.uniform(0.985, 1.015)  # posture, soft tissue at the sole
    oversize = rng.random() < 0.04
    rows, cols = OVERSIZE if oversize else (ROWS, COLS)
    u = rng.random()
    defect = None if u < 0.64 else DEFECTS[min(int((u - 0.64) / 0.12), 2)]
    if oversize:
        defect = None
    head_len = stature_px * rng.uniform(0.118, 0.138)
    margin = rows - stature_px
    top = rng.uniform(4, max(margin - 4, 5))
    if defect == "bad_crop":
        if rng.random() < 0.5:
            top = -rng.uniform(0.35, 0.8) * head_len  # head cut off
        else:
            top = rows - stature_px + rng.uniform(0.06, 0.12) * stature_px  # feet cut off
    body = Body(
        height_m=round(height_m, 2),
        sex=sex,
        age=int(rng.integers(45, 80)),
        weight=float(round(rng.normal(80 if sex == "M" else 68, 11), 1)),
        top=top,
        centre_x=cols / 2 + rng.uniform(-10, 10),
        stature_px=stature_px,
        head_len=head_len,
        head_w=head_len * rng.uniform(0.72, 0.84),
        shoulder_w=stature_px * rng.uniform(0.195, 0.235),
        hip_w=stature_px * rng.uniform(0.095, 0.115),
        shoulder_frac=rng.uniform(0.175, 0.195),
        hip_frac=rng.uniform(0.475, 0.51),
        angle_deg=rng.uniform(-1.5, 1.5),
        head_tilt_deg=float(rng.choice([-1, 1]) * rng.uniform(30, 45)) if defect == "bad_pose" else 0.0,
    )
    return Participant(eid, body, rows, cols, bool(rng.random() < 0.3), defect, int(rng.integers(2)),
                       bool(rng.random() < 0.7))


def _rotate(points: np.ndarray, centre: tuple[float, float], degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    d = points - centre
    return np.stack([centre[0] + c * d[:, 0] - s * d[:, 1], centre[1] + s * d[:, 0] + c * d[:, 1]], axis=1)


def skeleton(b: Body) -> dict[str, np.ndarray]:
    """Key points (x, y) of the upright body; the landmarks are among them."""
    x0, y0, s = b.centre_x, b.top, b.stature_px
    chin = y0 + b.head_len
    sh_y, hip_y = y0 + b.shoulder_frac * s, y0 + b.hip_frac * s
    knee_y, ankle_y = y0 + 0.72 * s, y0 + 0.955 * s
    # patient's left on the image right (PatientOrientation L\F)
    side = {"left": 1.0, "right": -1.0}
    pts = {"head_centre": (x0, y0 + b.head_len / 2), "chin": (x0, chin), "neck": (x0, chin + 0.02 * s),
           "pelvis": (x0, hip_y - 0.03 * s)}
    for name, sign in side.items():
        pts[f"shoulder_{name}"] = (x0 + sign * b.shoulder_w / 2, sh_y)
        pts[f"elbow_{name}"] = (x0 + sign * (b.shoulder_w / 2 + 0.025 * s), sh_y + 0.19 * s)
        pts[f"wrist_{name}"] = (x0 + sign * (b.shoulder_w / 2 + 0.035 * s), sh_y + 0.34 * s)
        pts[f"hip_{name}"] = (x0 + sign * b.hip_w / 2, hip_y)
        pts[f"knee_{name}"] = (x0 + sign * b.hip_w * 0.42, knee_y)
        pts[f"ankle_{name}"] = (x0 + sign * b.hip_w * 0.45, ankle_y)
        pts[f"toe_{name}"] = (x0 + sign * b.hip_w * 0.55, y0 + s)
    return {k: np.asarray(v, float) for k, v in pts.items()}


def head_outline(b: Body, head_centre: np.ndarray) -> np.ndarray:
    """Skull outline polygon (vertex to chin), tilted for a non-standard pose."""
    t = np.linspace(0, 2 * np.pi, HEAD_VERTICES, endpoint=False)
    poly = np.stack([head_centre[0] + b.head_w / 2 * np.sin(t), head_centre[1] - b.head_len / 2 * np.cos(t)], axis=1)
    if b.head_tilt_deg:
        chin = (head_centre[0], head_centre[1] + b.head_len / 2)
        poly = _rotate(poly, chin, b.head_tilt_deg)
    return poly


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def _line(img, a, b, value, thickness):
    cv2.line(img, _pt(a), _pt(b), float(value), int(thickness), cv2.LINE_AA, shift=4)


def _disc(img, c, r, value):
    cv2.circle(img, _pt(c), int(round(r * 16)), float(value), -1, cv2.LINE_AA, shift=4)


def render(b: Body, rows: int, cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bone and tissue images (float, black background) and the landmarks in image pixels."""
    k = skeleton(b)
    s = b.stature_px
    bone = np.zeros((rows, cols), np.float32)
    soft = np.zeros((rows, cols), np.float32)
    head = head_outline(b, k["head_centre"])
    # soft-tissue envelope: limbs and trunk as thick lines, the head as its outline
    limb = [("shoulder", "elbow", 0.05), ("elbow", "wrist", 0.04), ("hip", "knee", 0.085), ("knee", "ankle", 0.055)]
    for side in ("left", "right"):
        for a, c, w in limb:
            _line(soft, k[f"{a}_{side}"], k[f"{c}_{side}"], 1.0, w * s)
        _line(soft, k[f"ankle_{side}"], k[f"toe_{side}"], 1.0, 0.03 * s)
    trunk = np.array([k["shoulder_left"] + [0.02 * s, -0.01 * s], k["shoulder_right"] + [-0.02 * s, -0.01 * s],
                      k["hip_right"] + [-0.05 * s, 0.04 * s], k["hip_left"] + [0.05 * s, 0.04 * s]])
    cv2.fillPoly(soft, [np.round(trunk * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    _line(soft, k["chin"], k["neck"] + [0, 0.03 * s], 1.0, 0.06 * s)
    cv2.fillPoly(soft, [np.round(head * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    # skeleton
    cv2.fillPoly(bone, [np.round(head * 16).astype(np.int32)], 200.0, cv2.LINE_AA, shift=4)
    inner = head_outline(Body(**{**b.__dict__, "head_len": b.head_len * 0.8, "head_w": b.head_w * 0.78}), k["head_centre"])
    cv2.fillPoly(bone, [np.round(inner * 16).astype(np.int32)], 130.0, cv2.LINE_AA, shift=4)
    n_vert = 24
    spine_top, spine_bottom = k["neck"], k["pelvis"]
    for i in range(n_vert):
        c = spine_top + (spine_bottom - spine_top) * (i + 0.5) / n_vert
        size = 0.012 * s * (1 + i / n_vert)
        cv2.rectangle(bone, _pt(c - [size, 0.006 * s]), _pt(c + [size, 0.006 * s]), 150.0, -1, cv2.LINE_AA, shift=4)
    rib_top, rib_bottom = k["shoulder_left"][1] + 0.01 * s, k["hip_left"][1] - 0.13 * s
    for i in range(10):
        y = rib_top + (rib_bottom - rib_top) * i / 9
        half = b.shoulder_w * (0.36 + 0.06 * np.sin(np.pi * i / 9))
        cv2.ellipse(bone, _pt(np.array([b.centre_x, y])), (int(half * 16), int(0.03 * s * 16)), 0, 10, 170, 80.0, 3,
                    cv2.LINE_AA, shift=4)
    for side in ("left", "right"):
        sign = 1 if side == "left" else -1
        _line(bone, k["neck"] + [0, 0.03 * s], k[f"shoulder_{side}"] - [sign * 0.012 * s, 0.008 * s], 150, 0.012 * s)
        _line(bone, k[f"shoulder_{side}"], k[f"elbow_{side}"], 160, 0.018 * s)
        _line(bone, k[f"elbow_{side}"], k[f"wrist_{side}"], 140, 0.014 * s)
        _disc(bone, k[f"shoulder_{side}"], 0.016 * s, 215)
        iliac = k[f"hip_{side}"] + [sign * 0.02 * s, -0.055 * s]
        cv2.ellipse(bone, _pt(iliac), (int(0.045 * s * 16), int(0.035 * s * 16)), 0, 0, 360, 120.0, -1, cv2.LINE_AA, shift=4)
        _line(bone, k[f"hip_{side}"], k[f"knee_{side}"], 170, 0.022 * s)
        _disc(bone, k[f"hip_{side}"], 0.014 * s, 225)
        _disc(bone, k[f"knee_{side}"], 0.02 * s, 185)
        _line(bone, k[f"knee_{side}"], k[f"ankle_{side}"], 165, 0.018 * s)
        _disc(bone, k[f"ankle_{side}"], 0.011 * s, 230)
        _line(bone, k[f"ankle_{side}"], k[f"toe_{side}"], 150, 0.016 * s)
    landmarks = {"head": head, **{n: k[n][None, :] for n in POINT_LANDMARKS}}
    # whole-body rotation about the image centre, the same for pixels and landmarks
    centre = ((cols - 1) / 2, (rows - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, -b.angle_deg, 1.0)
    warp = lambda im: cv2.warpAffine(im, matrix, (cols, rows), flags=cv2.INTER_LINEAR)  # noqa: E731
    bone, soft = warp(bone), warp(soft)
    landmarks = {n: p @ matrix[:, :2].T + matrix[:, 2] for n, p in landmarks.items()}
    soft = cv2.GaussianBlur(soft, (0, 0), 2.0)
    body = soft > 0.02
    noise = rng.normal(0, 5, (rows, cols)).astype(np.float32)
    bone_img = np.where(body, 28 * soft + bone + noise, 0)
    tissue_img = np.where(body, 120 * soft + 0.15 * bone + 25 * soft * (1 + np.sin(np.arange(rows) / 40))[:, None]
                          + noise, 0)
    return bone_img, tissue_img, landmarks


def finish(image: np.ndarray, white: bool, contrast: Optional[int] = None) -> np.ndarray:
    """Clip to 0..252 uint8, apply an abnormal contrast, invert for a white background."""
    out = np.clip(image, 0, WHITE)
    body = out > 0
    if contrast == 0:
        out = np.where(body, np.clip(out * 3.2, 0, WHITE), 0)  # saturated: bones burnt out
    elif contrast == 1:
        out = np.where(body, 45 + out * 0.4, 0)  # washed out: little dynamic range
    out = np.round(out).astype(np.uint8)
    return (WHITE - out).astype(np.uint8) if white else out


def dicom_bytes(pixels: np.ndarray, p: Participant, instance: int, protocol: str, seed: int) -> bytes:
    """An 8-bit MONOCHROME2 CR DICOM with UK-Biobank-like tags, Implicit VR Little Endian."""
    uid = f"{UID_ROOT}.{seed}.{p.eid}.{instance}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = f"{UID_ROOT}.1"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    b = p.body
    rows, cols = pixels.shape
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CR_SOP_CLASS, uid
    ds.StudyDate = ds.AcquisitionDate = "20180719"
    ds.Modality, ds.Manufacturer, ds.InstitutionName = "CR", "GE Healthcare", "UK Biobank"
    ds.ManufacturerModelName = "Lunar iDXA"
    ds.PatientName, ds.PatientID = "Phantom^Demo", str(p.eid)
    ds.PatientSex, ds.PatientAge = b.sex, f"{b.age:03d}Y"
    ds.PatientSize, ds.PatientWeight, ds.EthnicGroup = f"{b.height_m:.2f}", f"{b.weight:.2f}", "White"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "210419", "16.20.059"
    ds.ProtocolName = protocol
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{UID_ROOT}.{seed}.{p.eid}", f"{UID_ROOT}.{seed}.{p.eid}.0"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ExposedArea = [int(round(cols * SPACING[0])), int(round(rows * SPACING[1]))]
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def labelme_json(image_id: str, image: np.ndarray, landmarks: dict, rng: np.random.Generator) -> str:
    """A LabelMe 5 file with embedded imageData; shapes in random order."""
    shapes = [{"label": n, "points": np.round(landmarks[n], 2).tolist(), "group_id": None, "description": "",
               "shape_type": "polygon" if n == "head" else "point", "flags": {}, "mask": None} for n in LANDMARKS]
    order = rng.permutation(len(shapes))
    data = {"version": "5.4.1", "flags": {}, "shapes": [shapes[i] for i in order],
            "imagePath": f"{image_id}.png", "imageData": base64.b64encode(encode_png(image)).decode(),
            "imageHeight": int(image.shape[0]), "imageWidth": int(image.shape[1])}
    return json.dumps(data, indent=2)


def geometry(landmarks: dict) -> dict[str, Box]:
    """Boxes of the true landmarks: the head polygon's bounds, points as zero-size boxes."""
    out = {}
    for name, pts in landmarks.items():
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        out[name] = Box(x0, y0, x1 - x0, y1 - y0, (x0 + x1) / 2, (y0 + y1) / 2)
    return out


def truth_row(image_id: str, p: Participant, kind: str, landmarks: dict) -> dict:
    """One ground-truth row: classes, geometry and the true phenotypes."""
    g = geometry(landmarks)
    bak = "white" if p.white else "black"
    row = {"Image": image_id, "eid": p.eid, "InstanceNumber": 12 if kind == "bone" else 11, "kind": kind,
           "split": "train" if p.train else "test", "background": bak, "is_bone": int(kind == "bone"),
           **{d: int(kind == "bone" and p.defect == d) for d in DEFECTS},
           "oversize": int((p.rows, p.cols) == OVERSIZE), "Rows": p.rows, "Columns": p.cols,
           "height_m": p.body.height_m, "spacing_mm_x": SPACING[0], "spacing_mm_y": SPACING[1]}
    head = g["head"]
    row.update(head_x=head.x, head_y=head.y, head_w=head.w, head_h=head.h, head_cx=head.cx, head_cy=head.cy)
    for n in POINT_LANDMARKS:
        row[f"{n}_cx"], row[f"{n}_cy"] = g[n].cx, g[n].cy
    row.update(measure(g, p.body.height_m, SPACING))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def _label_sets(truth: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Which images each classifier label file lists, and with which label (train split only)."""
    t = truth[truth["split"] == "train"]
    bone = t[t["kind"] == "bone"]
    framed = bone[(bone["bad_crop"] == 0) & (bone["oversize"] == 0)]
    sets = {"2_class_label.tsv": (t, "is_bone"), "3_crop_label.tsv": (bone, "bad_crop")}
    for bak in ("black", "white"):
        mine = framed[framed["background"] == bak]
        sets[f"5_contrast_{bak}_label.tsv"] = (mine, "bad_contrast")
        sets[f"6_pose_{bak}_label.tsv"] = (mine[mine["bad_contrast"] == 0], "bad_pose")
    return {name: pd.DataFrame({"File_Name": rows["Image"], "Label": rows[col].astype(int),
                                "File_Name_npy": rows["Image"] + ".npy"}) for name, (rows, col) in sets.items()}


@dataclass(frozen=True)
class PhantomSummary:
    """Where the phantom set was written and how many of each kind it has."""

    out: Path
    zips: int
    images: int
    counts: dict


def generate(out_dir: str | Path, n: int, seed: int = 0) -> PhantomSummary:
    """Write the phantom data set of `n` participants into `out_dir` (deterministic for `seed`)."""
    out = Path(out_dir)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        p = draw_participant(rng, 1000000 + i)
        stem = f"{p.eid}_20158_2_0"
        bone, tissue, landmarks = render(p.body, p.rows, p.cols, rng)
        images = {12: finish(bone, p.white, p.contrast_kind if p.defect == "bad_contrast" else None),
                  11: finish(tissue, p.white)}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            members = [(12, "Total Body", images[12]), (11, "Total Body", images[11])]
            for protocol, inst, shape in OTHER_PROTOCOLS[: 1 + i % len(OTHER_PROTOCOLS)]:
                members.append((inst, protocol, rng.integers(0, 200, shape, dtype=np.uint8)))
            for inst, protocol, pixels in members:
                info = zipfile.ZipInfo(f"{UID_ROOT}.{seed}.{p.eid}.{inst}.dcm", ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, dicom_bytes(pixels, p, inst, protocol, seed))
        write_bytes(out / "zips" / f"{stem}.zip", buffer.getvalue())
        for inst, kind in ((12, "bone"), (11, "tissue")):
            rows.append(truth_row(f"{stem}_{inst}", p, kind, landmarks))
        if p.train and p.defect is None and (p.rows, p.cols) != OVERSIZE:
            bak = "white" if p.white else "black"
            write_text(out / "labels" / f"7_segment_{bak}" / f"{stem}_12.json",
                       labelme_json(f"{stem}_12", images[12], landmarks, rng))
    truth = pd.DataFrame(rows)
    write_tsv(out / "ground_truth.tsv", truth)
    for name, table in _label_sets(truth).items():
        write_tsv(out / "labels" / name, table)
    bone = truth[truth["kind"] == "bone"]
    counts = {d: int(bone[d].sum()) for d in (*DEFECTS, "oversize")}
    counts["white"] = int((bone["background"] == "white").sum())
    return PhantomSummary(out, n, len(truth), counts)


def preview(path: str | Path, n: int = 60, seed: int = 0) -> None:
    """A PNG grid of phantom images: bone, tissue, and one of each defect (for the README)."""
    examples: dict[str, np.ndarray] = {}
    wanted = ["bone", "tissue", "bad_crop", "bad_contrast", "bad_pose", "white", "oversize"]
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        p = draw_participant(rng, 1000000 + i)
        keys = []
        if p.defect is None and not p.white and (p.rows, p.cols) != OVERSIZE:
            keys = ["bone", "tissue"]
        elif p.defect and not p.white:
            keys = [p.defect]
        elif p.white and p.defect is None:
            keys = ["white"]
        if (p.rows, p.cols) == OVERSIZE:
            keys = ["oversize"]
        keys = [k for k in keys if k not in examples]
        if not keys:
            continue
        bone, tissue, _ = render(p.body, p.rows, p.cols, rng)
        for k in keys:
            examples[k] = finish(tissue, p.white) if k == "tissue" else finish(
                bone, p.white, p.contrast_kind if p.defect == "bad_contrast" else None)
    tiles = []
    for k in wanted:
        if k not in examples:
            continue
        tile = np.full((OVERSIZE[0] + 40, OVERSIZE[1]), 128, np.uint8)
        img = examples[k]
        tile[40 + (OVERSIZE[0] - img.shape[0]) // 2:, :][: img.shape[0], (OVERSIZE[1] - img.shape[1]) // 2:][:, : img.shape[1]] = img
        cv2.putText(tile, k.replace("_", " "), (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
        tiles.append(tile)
    grid = np.concatenate([np.pad(t, ((0, 0), (4, 4)), constant_values=128) for t in tiles], axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.resize(grid, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: python -m hbr.phantom --out DIR --n N --seed S."""
    parser = argparse.ArgumentParser(prog="python -m hbr.phantom", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=100, help="participants (zips)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", type=Path, default=None, help="also write a PNG grid of examples here")
    args = parser.parse_args(argv)
    summary = generate(args.out, args.n, args.seed)
    print(f"phantom: {summary.zips} zips, {summary.images} Total Body images -> {summary.out / 'zips'}; "
          f"labels -> {summary.out / 'labels'}; truth -> {summary.out / 'ground_truth.tsv'}; "
          f"bone images with defects: {summary.counts}")
    if args.preview:
        preview(args.preview, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
