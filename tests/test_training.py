"""The training recipe, part by part: weight map, elastic deformation, metrics, a short run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipeline.augment import deform, elastic_field, flip_rotate
from pipeline.checkpoint import load_checkpoint
from pipeline.config import TrainConfig
from pipeline.errors import InputError
from pipeline.metrics import foreground_iou, match_instances, touching_pairs
from pipeline.synthetic import fluorescence_image, nuclei_labels, write_synthetic_acquisition
from pipeline.train import train
from pipeline.weights import SIGMA, W0, border_term, class_balance, weight_map


def two_discs(gap: int) -> np.ndarray:
    """Two discs of radius 12 on a row, ``gap`` background pixels apart."""
    labels = np.zeros((64, 96), dtype=np.int32)
    yy, xx = np.mgrid[:64, :96]
    labels[(yy - 32) ** 2 + (xx - 30) ** 2 <= 144] = 1
    right = 30 + 12 + gap + 12 + 1
    labels[(yy - 32) ** 2 + (xx - right) ** 2 <= 144] = 2
    return labels


def test_border_weight_peaks_between_touching_cells_and_matches_the_formula() -> None:
    labels = two_discs(gap=2)
    weights = weight_map(labels)
    row = weights[32]
    gap_columns = np.flatnonzero((labels[32] == 0) & (np.arange(96) > 30) & (np.arange(96) < 67))
    assert set(np.flatnonzero(row == row.max())) <= set(gap_columns)  # the peak sits in the gap
    assert weights[labels == 0].max() > 5 * weights[0, 0]  # far background: class weight only
    d1 = ndimage.distance_transform_edt(labels != 1)
    d2 = ndimage.distance_transform_edt(labels != 2)
    rng = np.random.default_rng(0)
    background = np.argwhere(labels == 0)
    for y, x in background[rng.choice(len(background), 40, replace=False)]:
        nearest, second = sorted((d1[y, x], d2[y, x]))
        expected = W0 * math.exp(-((nearest + second) ** 2) / (2 * SIGMA**2))
        assert border_term(labels)[y, x] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    balance = class_balance(labels)
    assert balance[labels > 0].sum() == pytest.approx(balance[labels == 0].sum(), rel=1e-5)
    assert np.all(border_term(labels)[labels > 0] == 0)


def test_elastic_deformation_keeps_labels_integer_and_aligned_with_the_image() -> None:
    """Deforming a drawn object's label map equals drawing it from the deformed coordinates."""
    rng = np.random.default_rng(3)
    shape = (120, 140)
    field = elastic_field(shape, rng)
    assert 2.0 < np.abs(field - np.indices(shape)).max() < 60.0  # displacements of ~10 px, smooth
    yy, xx = np.indices(shape)
    inside = lambda y, x: ((y - 60) / 25.0) ** 2 + ((x - 70) / 35.0) ** 2 <= 1.0
    labels = inside(yy, xx).astype(np.int32) * 7
    image = inside(yy, xx).astype(np.float32)
    moved_labels = deform(labels, field, order=0)
    moved_image = deform(image, field, order=1)
    assert moved_labels.dtype == np.int32 and set(np.unique(moved_labels)) <= {0, 7}
    drawn = inside(field[0], field[1]) * 7
    edge = ndimage.binary_dilation(drawn > 0) ^ ndimage.binary_erosion(drawn > 0)
    assert not ((moved_labels != drawn) & ~edge).any()  # they differ only on the edge: within one pixel
    assert not (((moved_image >= 0.5) != (moved_labels > 0)) & ~edge).any()  # image and labels aligned
    flipped = flip_rotate([labels, image], np.random.default_rng(1))
    assert np.array_equal(flipped[0] > 0, flipped[1] > 0)


def test_metrics_on_known_cases() -> None:
    truth = np.zeros((20, 30), dtype=np.int32)
    truth[2:8, 2:8], truth[2:8, 10:16], truth[12:18, 2:8] = 1, 2, 3
    predicted = np.zeros_like(truth)
    predicted[2:8, 2:8] = 5  # exact
    predicted[2:8, 10:13] = 6  # half of object 2: IoU 0.5, not > 0.5
    predicted[12:18, 20:26] = 9  # a false positive
    score = match_instances(predicted, truth)
    assert (score.true_objects, score.predicted_objects, score.matched) == (3, 3, 1)
    assert score.f1 == pytest.approx(1 / 3)
    assert foreground_iou(truth, truth) == 1.0 and foreground_iou(predicted, truth) == pytest.approx(
        (36 + 18) / (36 * 3 + 36)
    )
    with pytest.raises(ValueError, match=">= 0.5"):
        match_instances(predicted, truth, threshold=0.3)
    assert touching_pairs(two_discs(gap=1)) == {(1, 2)} and touching_pairs(two_discs(gap=3)) == set()


def test_synthetic_nuclei_are_deterministic_and_touching_ones_are_separated() -> None:
    labels = nuclei_labels((3, 200, 220), seed=4)
    assert np.array_equal(labels, nuclei_labels((3, 200, 220), seed=4))
    assert not np.array_equal(labels, nuclei_labels((3, 200, 220), seed=5))
    assert touching_pairs(labels)  # some nuclei touch, with a one-pixel line between them
    _, count = ndimage.label(labels > 0)
    assert count >= 0.9 * labels.max()  # the lines keep touching nuclei apart
    image = fluorescence_image(labels, seed=4)
    assert image.dtype == np.uint16 and image[labels > 0].mean() > 2 * image[labels == 0].mean()


def test_a_short_training_run_learns_and_is_reproducible(tmp_path: Path) -> None:
    for seed in (11, 12):
        write_synthetic_acquisition(
            str(tmp_path / "data" / f"n{seed}.ome.zarr"),
            (2, 160, 160),
            (1, 80, 80),
            seed=seed,
            pixel_size=0.5,
        )
    config = TrainConfig(
        base_channels=2, depth=3, tile=36, steps=24, validate_every=12, learning_rate=3e-3, threads=1
    )
    first = train(str(tmp_path / "data"), None, tmp_path / "a.safetensors", config, show_progress=False)
    train(str(tmp_path / "data"), None, tmp_path / "b.safetensors", config, show_progress=False)
    losses = [entry["loss"] for entry in first["history"]]
    assert losses[-1] < losses[0]
    assert (
        load_checkpoint(tmp_path / "a.safetensors").sha256
        == load_checkpoint(tmp_path / "b.safetensors").sha256
    )
    checkpoint = load_checkpoint(tmp_path / "a.safetensors")
    assert checkpoint.training["status"] == "trained" and checkpoint.training["best"]["step"] in (12, 24)
    assert checkpoint.training["pixel_size_um"] == {"y": 0.5, "x": 0.5}


def test_tiff_pairs_train_from_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for seed in (1, 2):
        labels = nuclei_labels((2, 120, 120), seed=seed)
        tifffile.imwrite(tmp_path / "images" / f"n{seed}.tif", fluorescence_image(labels, seed=seed))
        tifffile.imwrite(tmp_path / "labels" / f"n{seed}.tif", labels.astype(np.uint16))
    config = TrainConfig(base_channels=2, depth=3, tile=36, steps=2, validate_every=2, threads=1)
    folder = train(
        str(tmp_path / "images"),
        str(tmp_path / "labels"),
        tmp_path / "a.safetensors",
        config,
        show_progress=False,
    )
    assert [pair["name"] for pair in folder["data"]] == ["n1.tif", "n2.tif"]
    single = tmp_path / "images" / "n1.tif"
    one = train(
        str(single),
        str(tmp_path / "labels" / "n1.tif"),
        tmp_path / "b.safetensors",
        config,
        show_progress=False,
    )
    assert one["data"] == [
        {"name": "n1.tif", "image": str(single), "labels": str(tmp_path / "labels" / "n1.tif")}
    ]
    with pytest.raises(InputError, match="is a file and carries no labels: pass them with --labels"):
        train(str(single), None, tmp_path / "c.safetensors", config, show_progress=False)
