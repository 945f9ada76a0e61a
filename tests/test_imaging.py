"""Canvas padding/cropping and the coordinate mappings back to the original image."""

import cv2
import numpy as np
import pytest

from hbr.data import Preprocess
from hbr.imaging import (
    BAND_GAP,
    _row_bands,
    canvas_to_input_xy,
    canvas_to_original_xy,
    from_canvas,
    input_to_canvas_xy,
    input_to_original,
    mask_to_original,
    model_input,
    place,
    resize,
    original_to_canvas_xy,
    swap_background,
    to_canvas,
)


def test_pad_uses_corner_value_and_centres():
    image = np.full((791, 272), 252, np.uint8)
    image[100, 50] = 7
    canvas, p = to_canvas(image, 960, 384)
    assert canvas.shape == (960, 384) and (canvas[:5] == 252).all()
    assert (p.top, p.left) == ((960 - 791) // 2, (384 - 272) // 2)
    x, y = original_to_canvas_xy(50, 100, p)
    assert canvas[int(y), int(x)] == 7
    assert canvas_to_original_xy(x, y, p) == (50, 100)


def test_crop_of_oversize_image_maps_back():
    image = np.arange(1000 * 400, dtype=np.int32).reshape(1000, 400)
    canvas, p = to_canvas(image, 960, 384)
    assert p.oversize and (p.top, p.left) == (-20, -8)
    assert canvas[0, 0] == image[20, 8]
    back = from_canvas(canvas, p, fill=-1)
    assert back.shape == image.shape
    assert (back[20:980, 8:392] == image[20:980, 8:392]).all()
    assert (back[:20] == -1).all() and (back[:, :8] == -1).all()


def test_from_canvas_inverts_to_canvas_for_padded_images():
    image = np.random.default_rng(0).integers(0, 252, (791, 272)).astype(np.uint8)
    canvas, p = to_canvas(image, 960, 384)
    assert (from_canvas(canvas, p) == image).all()
    stack = np.stack([canvas, canvas])  # (C, H, W) maps map back together
    assert from_canvas(stack, p).shape == (2, 791, 272)


@pytest.mark.parametrize("input_size", [(192, 80), (320, 128), (240, 96), (300, 100), (960, 80), (960, 384), (1000, 400)])
@pytest.mark.parametrize("shape", [(791, 272), (1024, 416), (959, 383), (3, 700), (1, 1)])
@pytest.mark.parametrize("dtype, corner", [(np.uint8, 0), (np.uint8, 7), (np.uint8, 252), (np.uint16, 1000)])
def test_model_input_equals_resizing_the_whole_canvas(input_size, shape, dtype, corner):
    """Resizing only the original's part of the canvas gives the full canvas resize, bit for bit
    (a float32 area resize of a constant is not always that constant: corners 7 and 1000)."""
    image = np.random.default_rng(2).integers(0, 256 if dtype == np.uint8 else 4096, shape).astype(dtype)
    image[0, 0] = corner
    canvas, _ = to_canvas(image, 960, 384)
    expected = resize(canvas.astype(np.float32), *input_size)
    got, p = model_input(image, 960, 384, *input_size)
    assert p == place(*shape, 960, 384)
    assert got.dtype == np.float32 and got.shape == input_size
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(791, 272), (960, 384), (1001, 399), (500, 100)])
def test_input_to_original_equals_resize_then_uncanvas(shape):
    """The one-warp mapping of model-input maps gives the pixels of the two-step route,
    and `fill` where the canvas cropped the original away."""
    maps = np.random.default_rng(1).random((3, 320, 128)).astype(np.float32)
    p = place(*shape, 960, 384)
    canvas = np.stack([cv2.resize(m, (384, 960), interpolation=cv2.INTER_LINEAR) for m in maps])
    expected = from_canvas(canvas, p, fill=-1.0)
    got = input_to_original(maps, p, fill=-1.0)
    assert got.shape == (3, *shape)
    assert np.allclose(got, expected, atol=1e-4)


def _sparse_maps(in_h: int, in_w: int) -> list[np.ndarray]:
    """Landmark-like maps: blobs inside, at every edge and corner, faint noise, empty, full."""
    rng = np.random.default_rng(2)
    maps = []
    for cy, cx in [(100, 60), (0, 0), (in_h - 1, in_w - 1), (0, in_w - 1), (in_h // 2, 0), (in_h - 2, 70)]:
        yy, xx = np.mgrid[0:in_h, 0:in_w]
        maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0).astype(np.float32))
    specks = np.zeros((in_h, in_w), np.float32)  # faint specks far apart: several bands of rows
    specks[[3, 40, 41, 150, 151, 152, in_h - 1], [5, 120, 0, 64, 65, 127, 3]] = [0.02, 0.3, 0.9, 0.05, 0.6, 1.0, 0.2]
    maps.append(specks)
    maps.append((rng.random((in_h, in_w)) * 0.0019).astype(np.float32))  # rounds to 0 everywhere
    maps.append(np.zeros((in_h, in_w), np.float32))
    maps.append(rng.random((in_h, in_w)).astype(np.float32))
    return maps


def test_row_bands_split_at_gaps_wider_than_band_gap():
    gap = BAND_GAP + 1  # rows this far apart still share a band
    assert _row_bands([4]) == [(4, 4)]
    assert _row_bands([0, 1, 2, 2 + gap, 2 + 2 * gap]) == [(0, 2 + 2 * gap)]
    assert _row_bands([0, 1, 2 + gap, 50, 51, 52, 90]) == [(0, 1), (2 + gap, 2 + gap), (50, 52), (90, 90)]


@pytest.mark.parametrize("shape", [(791, 272), (960, 384), (1001, 399), (500, 100)])
def test_mask_to_original_equals_quantised_full_warp(shape):
    """Warping only the non-zero region gives the uint8 mask of the whole-image warp
    (within one level: OpenCV rounds sample positions to 1/32 pixel from the region's origin)."""
    p = place(*shape, 960, 384)
    for prob in _sparse_maps(320, 128):
        expected = np.round(np.clip(input_to_original(prob[None], p)[0], 0, 1) * 255).astype(int)
        got = mask_to_original(prob, p)
        assert got.dtype == np.uint8 and got.shape == shape
        assert np.abs(got.astype(int) - expected).max() <= 1
        assert ((got > 0) == (expected > 0)).mean() > 0.9999


@pytest.mark.parametrize("shape", [(791, 272), (1001, 399)])
@pytest.mark.parametrize("floor", [0.01, 0.3])
def test_mask_floor_zeroes_only_the_probabilities_under_it(shape, floor):
    p = place(*shape, 960, 384)
    noisy = [m + np.float32(0.004) for m in _sparse_maps(320, 128)]  # a background that rounds to 1
    for prob in _sparse_maps(320, 128) + noisy:
        full = np.clip(input_to_original(prob[None], p)[0], 0, 1)
        expected = np.where(full < floor, 0, np.round(full * 255)).astype(int)
        got = mask_to_original(prob, p, floor).astype(int)
        # a band's samples sit within 1/32 pixel of the full warp's (see above), so a value
        # within a hair of the floor may fall on the other side of it
        at_floor = np.abs(full - floor) < 1e-4
        assert np.abs(got - expected)[~at_floor].max() <= 1
        assert ((got > 0) == (expected > 0)).mean() > 0.999
        assert got[(got > 0)].min(initial=255) >= np.floor(floor * 255)


@pytest.mark.parametrize("xy", [(0.0, 0.0), (100.5, 700.25), (383.0, 959.0)])
def test_input_canvas_round_trip(xy):
    _, p = to_canvas(np.zeros((791, 272), np.uint8), 960, 384)
    there = canvas_to_input_xy(*xy, 320, 128, p)
    assert np.allclose(input_to_canvas_xy(*there, 320, 128, p), xy)


def test_preprocess_landmarks_follow_the_image():
    """A bright pixel drawn at an original position lands where landmarks_to_input says."""
    image = np.zeros((791, 272), np.uint8)
    image[400:404, 100:104] = 255  # centre (101.5, 401.5)
    prep = Preprocess(960, 384, 480, 192)
    small = prep.input_image(image)
    ys, xs = np.nonzero(small > 0.2)
    (cx, cy), = prep.landmarks_to_input(np.array([[101.5, 401.5]]), 791, 272)
    assert abs(xs.mean() - cx) < 0.6 and abs(ys.mean() - cy) < 0.6


def test_swap_background_turns_white_into_black_and_back():
    black = np.array([[0, 0, 40], [0, 252, 251]], np.uint8)
    white = swap_background(black, 0, 252)
    assert white.dtype == np.uint8 and white.tolist() == [[252, 252, 212], [252, 0, 1]]
    assert np.array_equal(swap_background(white, 0, 252), black)
    assert swap_background(np.array([[255]], np.uint8), 0, 252).tolist() == [[0]]  # out of range: clipped
