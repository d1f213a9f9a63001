"""Training pairs (image + instance labels) and the sampler of augmented training tiles.

Pairs are Zarr / OME-Zarr volumes, read lazily: each sample reads one window
(the tile, its halo and a margin for the elastic deformation) of one plane.
An OME-Zarr image that carries its labels (``labels/<name>``, as ``unet-pipeline
synth --labels`` writes) needs no separate labels path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from pipeline.acquisitions import ZARR_METADATA
from pipeline.augment import deform, elastic_field, flip_rotate, jitter_intensity
from pipeline.config import TrainConfig
from pipeline.errors import InputError
from pipeline.normalization import Normalization, NormalizationStats
from pipeline.store import LABEL_DTYPES, InputVolume, normalization_sample, open_input, read_mirrored
from pipeline.tiff import is_tiff
from pipeline.weights import weight_map


@dataclass(frozen=True)
class TrainingPair:
    name: str
    image: InputVolume
    labels: InputVolume
    stats: NormalizationStats
    rows: tuple[int, int]  # the rows of every plane this pair lends to training (or validation)


def find_pairs(images: str, labels: str | None) -> list[tuple[str, str, str]]:
    """(name, image URL, labels URL) for one volume or a folder of volumes."""
    source = Path(images)
    if not source.exists():
        raise InputError(f"no training images at {images}")
    if _is_zarr(source) or source.is_file():
        return [(source.name, str(source), labels or _embedded_labels(source))]
    found = sorted(
        child for child in source.iterdir() if (child.is_dir() and _is_zarr(child)) or is_tiff(child.name)
    )
    if not found:
        raise InputError(f"{images} holds no Zarr / OME-Zarr volumes or TIFF files to train on")
    pairs = []
    for child in found:
        if labels is None:
            pairs.append((child.name, str(child), _embedded_labels(child)))
            continue
        partner = Path(labels) / child.name
        if not partner.exists():
            raise InputError(f"no labels for {child} in {labels}: expected {partner}")
        pairs.append((child.name, str(child), str(partner)))
    return pairs


def _is_zarr(path: Path) -> bool:
    return any((path / name).is_file() for name in ZARR_METADATA)


def _embedded_labels(image: Path) -> str:
    if image.is_file():
        raise InputError(f"{image} is a file and carries no labels: pass them with --labels")
    names: list[str] = []
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(str(image / "labels"), mode="r").attrs)
        names = list(attrs.get("ome", attrs).get("labels", []))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeNotFoundError):
        pass  # no labels group: said below
    if not names:
        raise InputError(f"{image} carries no labels (no labels/ group): pass --labels")
    return str(image / "labels" / names[0])


def open_pairs(
    specs: list[tuple[str, str, str]], normalization: Normalization, validation_fraction: float
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """Training and validation pairs: whole pairs held out, or the last rows of a single one."""
    opened = []
    for name, image_url, labels_url in specs:
        image = open_input(image_url)
        labels = open_input(labels_url, LABEL_DTYPES)
        if image.shape_zyx != labels.shape_zyx:
            raise InputError(
                f"training pair {name}: image {image_url} has shape {image.shape_zyx}, "
                f"labels {labels_url} {labels.shape_zyx}"
            )
        stats = normalization.statistics(normalization_sample(image, 64, 4_000_000))
        opened.append((name, image, labels, stats))
    if len(opened) == 1:
        name, image, labels, stats = opened[0]
        height = image.shape_zyx[1]
        split = max(1, min(height - 1, round(height * (1 - validation_fraction))))
        return (
            [TrainingPair(name, image, labels, stats, (0, split))],
            [TrainingPair(name, image, labels, stats, (split, height))],
        )
    held_out = max(1, round(len(opened) * validation_fraction))
    pairs = [TrainingPair(n, i, lab, s, (0, i.shape_zyx[1])) for n, i, lab, s in opened]
    return pairs[:-held_out], pairs[-held_out:]


class TileSampler:
    """Random augmented tiles: (input window, foreground target of the output tile, its weights)."""

    def __init__(self, pairs: list[TrainingPair], config: TrainConfig, halo: int, rng: np.random.Generator):
        self.pairs = pairs
        self.config = config
        self.halo = halo
        self.rng = rng
        self.margin = int(np.ceil(3 * config.elastic_sigma))
        sizes = np.array([p.image.shape_zyx[0] * (p.rows[1] - p.rows[0]) for p in pairs], dtype=np.float64)
        self.chances = sizes / sizes.sum()

    def sample(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        config, rng, tile = self.config, self.rng, self.config.tile
        pair = self.pairs[int(rng.choice(len(self.pairs), p=self.chances))]
        planes, _, width = pair.image.shape_zyx
        plane = int(rng.integers(planes))
        y0 = int(rng.integers(pair.rows[0], max(pair.rows[0] + 1, pair.rows[1] - tile + 1)))
        x0 = int(rng.integers(0, max(1, width - tile + 1)))
        reach = self.halo + self.margin
        rows, cols = (y0 - reach, y0 + tile + reach), (x0 - reach, x0 + tile + reach)
        image = pair.stats.apply(read_mirrored(pair.image.array, range(plane, plane + 1), rows, cols)[0])
        labels = read_mirrored(pair.labels.array, range(plane, plane + 1), rows, cols)[0].astype(np.int64)
        if config.elastic_sigma > 0:
            field = elastic_field(image.shape, rng, config.elastic_grid, config.elastic_sigma)
            image, labels = deform(image, field, order=1), deform(labels, field, order=0)
        if config.flips:
            image, labels = flip_rotate([image, labels], rng)
        if config.intensity_jitter:
            image = jitter_intensity(image, rng)
        weights = weight_map(labels, config.w0, config.sigma)
        inner = slice(self.margin, self.margin + tile + 2 * self.halo)
        output = slice(reach, reach + tile)
        return (
            np.ascontiguousarray(image[inner, inner], dtype=np.float32),
            (labels[output, output] > 0).astype(np.int64),
            np.ascontiguousarray(weights[output, output]),
        )


def plane_region(pair: TrainingPair, plane: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """One plane of a pair's rows: normalised image and its labels."""
    rows = slice(pair.rows[0], pair.rows[1])
    image = np.asarray(pair.image.array[(plane, rows) if pair.image.array.ndim == 3 else (rows,)])
    labels = np.asarray(pair.labels.array[(plane, rows) if pair.labels.array.ndim == 3 else (rows,)])
    return pair.stats.apply(image), labels
