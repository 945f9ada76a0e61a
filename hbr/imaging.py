"""Image geometry shared by training and prediction: canvas, resize, and the way back.

Every image is centre padded (with its corner pixel value) or centre cropped to the
canvas (960x384 as upstream), then resized to the model input. `Placement` records
where the original sits on the canvas, so masks and coordinates map back exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Placement:
    """Original image of `rows` x `cols` placed with its top-left at (top, left) on the canvas.

    `top`/`left` are negative when the original is larger than the canvas (cropped).
    """

    rows: int
    cols: int
    top: int
    left: int
    canvas_h: int
    canvas_w: int

    @property
    def oversize(self) -> bool:
        """True when part of the original falls outside the canvas."""
        return self.rows > self.canvas_h or self.cols > self.canvas_w


def place(rows: int, cols: int, canvas_h: int, canvas_w: int) -> Placement:
    """Centre placement of a rows x cols image on the canvas (floor division, as numpy slicing)."""
    return Placement(rows, cols, (canvas_h - rows) // 2, (canvas_w - cols) // 2, canvas_h, canvas_w)


def _overlap(offset: int, size: int, canvas: int) -> tuple[slice, slice]:
    """Slices (in canvas, in original) of the overlap along one axis."""
    c0, c1 = max(offset, 0), min(offset + size, canvas)
    return slice(c0, c1), slice(c0 - offset, c1 - offset)


def to_canvas(image: np.ndarray, canvas_h: int, canvas_w: int) -> tuple[np.ndarray, Placement]:
    """Centre pad with the corner value, or centre crop, a 2-D image to canvas_h x canvas_w."""
    p = place(image.shape[0], image.shape[1], canvas_h, canvas_w)
    canvas = np.full((canvas_h, canvas_w), image[0, 0], dtype=image.dtype)
    cy, oy = _overlap(p.top, p.rows, canvas_h)
    cx, ox = _overlap(p.left, p.cols, canvas_w)
    canvas[cy, cx] = image[oy, ox]
    return canvas, p


def from_canvas(canvas: np.ndarray, p: Placement, fill=0) -> np.ndarray:
    """Inverse of `to_canvas` for a canvas-sized map (..., H, W): the original's pixels, `fill` where cropped."""
    out = np.full(canvas.shape[:-2] + (p.rows, p.cols), fill, dtype=canvas.dtype)
    cy, oy = _overlap(p.top, p.rows, p.canvas_h)
    cx, ox = _overlap(p.left, p.cols, p.canvas_w)
    out[..., oy, ox] = canvas[..., cy, cx]
    return out


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D image (area averaging when shrinking, linear when growing)."""
    if image.shape[:2] == (height, width):
        return image
    shrinking = height < image.shape[0] or width < image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _original_to_input(p: Placement, in_h: int, in_w: int) -> tuple[float, float, float, float]:
    """(sx, sy, off_x, off_y): original (x, y) -> model input (sx * x + off_x, sy * y + off_y),
    pixel centres aligned as in canvas_to_input_xy."""
    sx, sy = in_w / p.canvas_w, in_h / p.canvas_h
    return sx, sy, (p.left + 0.5) * sx - 0.5, (p.top + 0.5) * sy - 0.5


def _warp_to_original(m: np.ndarray, p: Placement, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Bilinear samples of one model-input map at the original's pixels x0..x0+width, y0..y0+height."""
    sx, sy, off_x, off_y = _original_to_input(p, *m.shape)
    to_input = np.array([[sx, 0.0, off_x + sx * x0], [0.0, sy, off_y + sy * y0]])
    return cv2.warpAffine(np.ascontiguousarray(m), to_input, (width, height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def input_to_original(maps: np.ndarray, p: Placement, fill: float = 0.0) -> np.ndarray:
    """Model-input-sized float maps (C, in_h, in_w) -> (C, rows, cols) on the original image.

    Equal to a linear resize to the canvas followed by `from_canvas`, but in one affine
    warp that computes only the original's pixels (4x less work for a 791x272 image);
    pixels the canvas cropped away get `fill`.
    """
    out = np.stack([_warp_to_original(m, p, 0, 0, p.cols, p.rows) for m in maps])
    if p.oversize:
        cropped = np.full_like(out, fill)
        _, oy = _overlap(p.top, p.rows, p.canvas_h)
        _, ox = _overlap(p.left, p.cols, p.canvas_w)
        cropped[:, oy, ox] = out[:, oy, ox]
        out = cropped
    return out


BAND_GAP = 8  # empty input rows that split a mask into separately warped bands (fewer: more calls than pixels saved)


def _row_bands(rows: list[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of sorted input rows, split where more than BAND_GAP rows are missing."""
    bands: list[tuple[int, int]] = []
    for row in rows:
        if bands and row - bands[-1][1] <= BAND_GAP + 1:
            bands[-1] = (bands[-1][0], row)
        else:
            bands.append((row, row))
    return bands


def mask_to_original(prob: np.ndarray, p: Placement, floor: float = 0.0) -> np.ndarray:
    """One model-input probability map (in_h, in_w) -> uint8 mask (round(255 x p)) on the original.

    Probabilities under `floor` are stored as 0. Otherwise the same pixels as quantising
    `input_to_original`, but only where the map reaches max(floor, 0.5/255) is warped, in
    bands of rows: a landmark's map is near zero almost everywhere, often with a few faint
    specks far from the landmark, so this is far less work than warping the whole image
    (stage 7 writes 7 masks an image).
    """
    out = np.zeros((p.rows, p.cols), np.uint8)
    # a bilinear sample is a weighted mean of four input pixels: it reaches `low` only
    # next to an input pixel that does
    visible = prob >= max(floor, 0.5 / 255)
    rows = np.flatnonzero(visible.any(axis=1)).tolist()
    if not rows:
        return out
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    sx, sy, off_x, off_y = _original_to_input(p, *prob.shape)
    # within the part of the original that lies on the canvas (the rest stays 0, as `fill`)
    _, rows_on = _overlap(p.top, p.rows, p.canvas_h)
    _, cols_on = _overlap(p.left, p.cols, p.canvas_w)
    # cv2.threshold keeps the values above its threshold: the largest float32 under `floor`
    below_floor = np.float32(floor)
    if below_floor >= floor:
        below_floor = np.nextafter(below_floor, np.float32(-np.inf))
    for first, last in _row_bands(rows):
        cols = np.flatnonzero(visible[first : last + 1].any(axis=0))
        # original pixels whose interpolation neighbours can include a visible input pixel
        x0 = max(int(np.floor((cols[0] - 1 - off_x) / sx)), cols_on.start)
        x1 = min(int(np.ceil((cols[-1] + 1 - off_x) / sx)) + 1, cols_on.stop)
        y0 = max(int(np.floor((first - 1 - off_y) / sy)), rows_on.start)
        y1 = min(int(np.ceil((last + 1 - off_y) / sy)) + 1, rows_on.stop)
        if x0 >= x1 or y0 >= y1:
            continue
        region = _warp_to_original(prob, p, x0, y0, x1 - x0, y1 - y0)
        if floor > 0:
            cv2.threshold(region, float(below_floor), 0, cv2.THRESH_TOZERO, dst=region)
        # round(255 x p) saturated to 0..255 in one pass (the samples are never negative);
        # bands may meet at their margins, where either band's value is a valid sample
        np.maximum(out[y0:y1, x0:x1], cv2.convertScaleAbs(region, alpha=255), out=out[y0:y1, x0:x1])
    return out


def canvas_to_original_xy(x: float, y: float, p: Placement) -> tuple[float, float]:
    """Canvas pixel coordinates -> original-image pixel coordinates."""
    return x - p.left, y - p.top


def original_to_canvas_xy(x: float, y: float, p: Placement) -> tuple[float, float]:
    """Original-image pixel coordinates -> canvas pixel coordinates."""
    return x + p.left, y + p.top


def input_to_canvas_xy(x: float, y: float, in_h: int, in_w: int, p: Placement) -> tuple[float, float]:
    """Model-input pixel coordinates -> canvas pixel coordinates (pixel centres aligned)."""
    return (x + 0.5) * p.canvas_w / in_w - 0.5, (y + 0.5) * p.canvas_h / in_h - 0.5


def canvas_to_input_xy(x: float, y: float, in_h: int, in_w: int, p: Placement) -> tuple[float, float]:
    """Canvas pixel coordinates -> model-input pixel coordinates."""
    return (x + 0.5) * in_w / p.canvas_w - 0.5, (y + 0.5) * in_h / p.canvas_h - 0.5


def _aligned_span(start: int, stop: int, size: int, out: int) -> tuple[slice, slice]:
    """Widen canvas span start..stop along one axis to whole resize periods: (canvas slice,
    model-input slice). An area resize of size -> out pixels repeats every size / gcd input
    pixels (out / gcd output pixels), so a whole-period span resizes to exactly the output
    pixels that the full resize gives there."""
    g = math.gcd(size, out)
    period_in, period_out = size // g, out // g
    first, last = start // period_in, -(-stop // period_in)
    return slice(first * period_in, last * period_in), slice(first * period_out, last * period_out)


@functools.lru_cache(maxsize=16)
def _constant_input(value: float, canvas_h: int, canvas_w: int, in_h: int, in_w: int) -> np.ndarray:
    """The model input of a canvas filled with `value` (a float32 area resize of a constant is
    not exactly that constant everywhere); read-only, shared."""
    out = resize(np.full((canvas_h, canvas_w), value, np.float32), in_h, in_w)
    out.flags.writeable = False
    return out


def model_input(image: np.ndarray, canvas_h: int, canvas_w: int, in_h: int, in_w: int) -> tuple[np.ndarray, Placement]:
    """The one preprocessing of every model: canvas, then float32 resized to the input size.

    The canvas is built in the image's own type (4x less memory traffic for 8-bit) and
    converted before resizing, so area averaging is not rounded to integers.
    When shrinking, only the canvas part that holds the original (widened to whole resize
    periods) is converted and resized, and the rest is taken from the resize of a constant
    canvas: the same values, bit for bit, for integer images (within a float32 rounding step
    for float images); 0.41 instead of 0.59 ms for a 791 x 272 image at 192 x 80.
    """
    canvas, p = to_canvas(image, canvas_h, canvas_w)
    if in_h > canvas_h or in_w > canvas_w or (in_h, in_w) == (canvas_h, canvas_w):  # growing (linear) or no resize
        return resize(canvas.astype(np.float32), in_h, in_w), p
    on_rows, _ = _overlap(p.top, p.rows, canvas_h)
    on_cols, _ = _overlap(p.left, p.cols, canvas_w)
    rows, in_rows = _aligned_span(on_rows.start, on_rows.stop, canvas_h, in_h)
    cols, in_cols = _aligned_span(on_cols.start, on_cols.stop, canvas_w, in_w)
    out = _constant_input(float(image[0, 0]), canvas_h, canvas_w, in_h, in_w).copy()
    out[in_rows, in_cols] = resize(canvas[rows, cols].astype(np.float32), in_rows.stop - in_rows.start,
                                   in_cols.stop - in_cols.start)
    return out, p


# Input regions of the classifiers, as (start, stop) fractions of the rows the image covers on
# the canvas, stacked top to bottom. A defect at the edge of the scan (a head or feet cut off)
# is a few rows of a whole-body image: the bands show those rows at several times the
# resolution the whole image gets at the same input size.
REGIONS = {
    "whole": None,
    "bands": ((0.0, 0.15), (0.85, 1.0)),  # top and bottom of the scan: framing
    "head": ((0.0, 0.25),),  # the head and neck: head pose
}


def region_rows(p: Placement, canvas_h: int, region: str) -> list[slice]:
    """The canvas rows of each band of `region` (see REGIONS; "whole": every row the image
    covers) for an image placed on the canvas at `p`."""
    top, bottom = max(p.top, 0), min(p.top + p.rows, canvas_h)
    extent = bottom - top
    return [slice(top + int(round(a * extent)), top + max(int(round(b * extent)), int(round(a * extent)) + 1))
            for a, b in REGIONS[region] or ((0.0, 1.0),)]


def region_input(image: np.ndarray, region: str, canvas_h: int, canvas_w: int, in_h: int, in_w: int) -> np.ndarray:
    """`model_input` of one region of the image (see REGIONS): its bands of canvas rows,
    stacked, resized to the input size (float32)."""
    if REGIONS[region] is None:
        return model_input(image, canvas_h, canvas_w, in_h, in_w)[0]
    canvas, p = to_canvas(image, canvas_h, canvas_w)
    rows = [canvas[band] for band in region_rows(p, canvas_h, region)]
    return resize(np.concatenate(rows).astype(np.float32), in_h, in_w)


def swap_background(image: np.ndarray, black: int, white: int) -> np.ndarray:
    """The image as the other background would show it: value v -> black + white - v.

    White-background DXA images are the inverted rendering of black ones (0 <-> 252),
    so this turns one into the other; values outside black..white are clipped first.
    """
    low, high = min(black, white), max(black, white)
    return (black + white - np.clip(image, low, high)).astype(image.dtype)
