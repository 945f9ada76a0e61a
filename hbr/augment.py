"""Training augmentation for DXA images: one random affine for image and landmarks, then intensity.

Random draws come from a generator seeded by (seed, epoch, index), so an epoch is the
same whatever the number of DataLoader workers.
"""

from __future__ import annotations

import cv2
import numpy as np

from hbr.config import AugmentConfig


def rng_for(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Independent, reproducible random stream for one sample of one epoch."""
    return np.random.default_rng([seed, epoch, index])


def random_affine(rng: np.random.Generator, aug: AugmentConfig, height: int, width: int) -> tuple[np.ndarray, bool]:
    """A 2x3 affine (rotation, zoom, shift about the centre) and whether it mirrors left-right."""
    angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
    zoom = 1.0 + rng.uniform(-aug.scale, aug.scale)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, zoom)
    matrix[0, 2] += rng.uniform(-aug.shift, aug.shift) * width
    matrix[1, 2] += rng.uniform(-aug.shift, aug.shift) * height
    flip = bool(rng.random() < aug.hflip)
    if flip:
        mirror = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        matrix = (mirror @ np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    return matrix, flip


def warp_image(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply an affine to an image, filling with its corner (background) value."""
    h, w = image.shape
    return cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=float(image[0, 0])
    )


def warp_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply an affine to an (N, 2) array of x, y points."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def jitter_intensity(image: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Gamma, brightness and Gaussian noise on a float image in [0, 1]."""
    gamma = float(np.exp(rng.uniform(-aug.gamma, aug.gamma)))
    out = np.power(np.clip(image, 0.0, 1.0), gamma)
    out = out + rng.uniform(-aug.brightness, aug.brightness)
    if aug.noise > 0:
        out = out + rng.normal(0.0, aug.noise, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
