"""Preprocessing (defined once) and the torch datasets of training and prediction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from hbr.augment import jitter_intensity, random_affine, rng_for, warp_image, warp_points
from hbr.config import AugmentConfig
from hbr.files import read_npy
from hbr.imaging import Placement, canvas_to_input_xy, original_to_canvas_xy, place, region_input, swap_background
from hbr.landmarks import mirrored


@dataclass(frozen=True)
class Preprocess:
    """Canvas, model input size and intensity normalisation; stored in every checkpoint."""

    canvas_h: int
    canvas_w: int
    input_h: int
    input_w: int
    mean: float = 0.5
    std: float = 0.5
    region: str = "whole"  # the part of the image the model sees (hbr.imaging.REGIONS)
    # (black, white) values: show the image in the other background's polarity first, for a
    # model trained in that polarity (black and white share one model); set when predicting
    swap_polarity: tuple = ()

    def to_dict(self) -> dict:
        """Plain dict for a checkpoint."""
        return asdict(self)

    def placement(self, rows: int, cols: int) -> Placement:
        """Where an original image of rows x cols sits on the canvas."""
        return place(rows, cols, self.canvas_h, self.canvas_w)

    @staticmethod
    def full_scale(image: np.ndarray) -> float:
        """The value that maps to 1: 255 for 8-bit images, else the image's maximum."""
        return 255.0 if image.dtype == np.uint8 else float(max(int(image.max()), 1))

    def input_image(self, image: np.ndarray) -> np.ndarray:
        """Original image -> model-input-sized image, intensities scaled to [0, 1] (float32)."""
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
        if self.swap_polarity:
            image = swap_background(image, *self.swap_polarity)
        resized = region_input(image, self.region, self.canvas_h, self.canvas_w, self.input_h, self.input_w)
        return resized / self.full_scale(image)

    def to_tensor(self, image01: np.ndarray) -> torch.Tensor:
        """[0, 1] image -> normalised 1 x H x W tensor."""
        return torch.from_numpy((image01 - self.mean) / self.std).unsqueeze(0)

    def landmarks_to_input(self, points: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """(N, 2) original-image x, y -> model-input x, y."""
        p = self.placement(rows, cols)
        out = [canvas_to_input_xy(*original_to_canvas_xy(x, y, p), self.input_h, self.input_w, p) for x, y in points]
        return np.asarray(out, dtype=np.float64).reshape(-1, 2)


class PredictionSet(Dataset):
    """Images to predict, read from .npy: (input tensor, index, ok, original (rows, cols)).

    An unreadable file yields zeros, ok=False and shape (0, 0).
    """

    def __init__(self, paths: Sequence[Path], prep: Preprocess):
        self.paths = list(paths)
        self.prep = prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = read_npy(self.paths[i])
            x, ok, shape = self.prep.input_image(image), True, image.shape[:2]
        except (OSError, ValueError) as exc:
            print(f"{self.paths[i]}: cannot read image ({exc})")
            x, ok, shape = np.zeros((self.prep.input_h, self.prep.input_w), np.float32), False, (0, 0)
        return self.prep.to_tensor(x.astype(np.float32, copy=False)), i, ok, torch.tensor(shape)


class _TrainSet(Dataset):
    """Preloads the (small) labelled set at input size; augments on the fly when `augment`."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        prep: Preprocess,
        aug: Optional[AugmentConfig],
        seed: int,
        background: tuple[int, int] = (0, 252),
    ):
        self.images = [prep.input_image(img) for img in images]
        self.sizes = [img.shape for img in images]
        # black and white background values at each image's [0, 1] scale, for the polarity swap
        self.backgrounds = [(background[0] / prep.full_scale(img), background[1] / prep.full_scale(img))
                            for img in images]
        self.prep, self.aug, self.seed = prep, aug, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch (call before creating the epoch's iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def _augmented(self, i: int):
        """Image i after augmentation, with the affine used (None when not augmenting)."""
        image = self.images[i]
        if self.aug is None:
            return image, None, False
        rng = rng_for(self.seed, self.epoch, i)
        matrix, flip = random_affine(rng, self.aug, *image.shape)
        if self.aug.invert > 0 and rng.random() < self.aug.invert:
            image = swap_background(image, *self.backgrounds[i])
        return jitter_intensity(warp_image(image, matrix), rng, self.aug), matrix, flip


class ClassifierSet(_TrainSet):
    """(image, label) pairs for a 2-class classifier."""

    def __init__(self, images, labels: Sequence[int], prep, aug, seed, background=(0, 252)):
        super().__init__(images, prep, aug, seed, background)
        self.labels = [int(v) for v in labels]

    def __getitem__(self, i: int):
        image, _, _ = self._augmented(i)
        return self.prep.to_tensor(image), self.labels[i]


SUPERSAMPLE = 4  # polygon targets are drawn 4x finer, then area-averaged: unbiased soft edges


def _polygon_coverage(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel covered by a polygon (x, y in pixel-centre coordinates)."""
    fine = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.uint8)
    # a fine pixel's centre sits at (coarse + 0.5) * SUPERSAMPLE - 0.5; 4 fractional bits for cv2
    poly = np.round(((points + 0.5) * SUPERSAMPLE - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(fine, [poly], 255, lineType=cv2.LINE_8, shift=4)
    return cv2.resize(fine, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def rasterise_targets(
    shapes: Mapping[str, np.ndarray], names: Sequence[str], height: int, width: int, radius: float
) -> np.ndarray:
    """One float mask per landmark at input size: polygons as coverage, points as discs of `radius`."""
    target = np.zeros((len(names), height, width), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for c, name in enumerate(names):
        pts = shapes[name]
        if len(pts) >= 3:
            target[c] = _polygon_coverage(pts, height, width)
        else:
            cx, cy = pts.mean(axis=0)
            target[c] = ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2).astype(np.float32)
    return target


class SegmenterSet(_TrainSet):
    """(image, target masks) pairs; a mirrored sample swaps left and right landmarks."""

    def __init__(self, images, shapes: Sequence[Mapping[str, np.ndarray]], names: Sequence[str], prep, aug, seed, radius):
        super().__init__(images, prep, aug, seed)
        self.names = tuple(names)
        self.radius = radius
        # landmark coordinates at model-input scale, once
        self.shapes = [
            {n: prep.landmarks_to_input(np.asarray(s[n], float), *shape) for n in self.names}
            for s, shape in zip(shapes, self.sizes)
        ]

    def __getitem__(self, i: int):
        image, matrix, flip = self._augmented(i)
        shapes = self.shapes[i]
        if matrix is not None:
            shapes = {(mirrored(n) if flip else n): warp_points(pts, matrix) for n, pts in shapes.items()}
        target = rasterise_targets(shapes, self.names, self.prep.input_h, self.prep.input_w, self.radius)
        return self.prep.to_tensor(image), torch.from_numpy(target)
