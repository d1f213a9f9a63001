"""Segmentation quality against known truth: foreground IoU and instance F1.

Instances match when their IoU exceeds a threshold (0.5: then each object
has at most one match, so no assignment problem arises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class InstanceScore:
    true_objects: int
    predicted_objects: int
    matched: int
    threshold: float

    @property
    def precision(self) -> float:
        return self.matched / self.predicted_objects if self.predicted_objects else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.true_objects if self.true_objects else 1.0

    @property
    def f1(self) -> float:
        total = self.true_objects + self.predicted_objects
        return 2 * self.matched / total if total else 1.0


def foreground_iou(predicted: npt.NDArray[Any], truth: npt.NDArray[Any]) -> float:
    """IoU of the foregrounds (nonzero pixels); 1.0 when both are empty."""
    a, b = predicted > 0, truth > 0
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 1.0


def match_instances(
    predicted: npt.NDArray[Any], truth: npt.NDArray[Any], threshold: float = 0.5
) -> InstanceScore:
    """Objects of ``predicted`` and ``truth`` (label maps of one shape) matched at IoU > ``threshold``."""
    if threshold < 0.5:
        raise ValueError(f"matching needs an IoU threshold >= 0.5 to be one-to-one, got {threshold}")
    pred = np.asarray(predicted).ravel().astype(np.int64)
    true = np.asarray(truth).ravel().astype(np.int64)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    true_ids, true_index = np.unique(true, return_inverse=True)
    pred_sizes = np.bincount(pred_index)
    true_sizes = np.bincount(true_index)
    both = (pred > 0) & (true > 0)
    pairs, overlap = np.unique(pred_index[both] * len(true_ids) + true_index[both], return_counts=True)
    p, t = np.divmod(pairs, len(true_ids))
    iou = overlap / (pred_sizes[p] + true_sizes[t] - overlap)
    return InstanceScore(
        true_objects=int(np.count_nonzero(true_ids)),
        predicted_objects=int(np.count_nonzero(pred_ids)),
        matched=int(np.count_nonzero(iou > threshold)),
        threshold=threshold,
    )


def touching_pairs(labels: npt.NDArray[Any]) -> set[tuple[int, int]]:
    """Pairs of objects separated by a single background pixel in Y or X (cells that touch)."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(labels.ndim - 2, labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        before, middle, after = a[:-2], a[1:-1], a[2:]
        gap = (middle == 0) & (before > 0) & (after > 0) & (before != after)
        for x, y in zip(before[gap].tolist(), after[gap].tolist()):
            pairs.add((min(x, y), max(x, y)))
    return pairs


def split_touching(predicted: npt.NDArray[Any], truth: npt.NDArray[Any]) -> tuple[int, int]:
    """(kept apart, total): touching truth pairs whose main predicted objects differ."""
    pairs = touching_pairs(truth)
    pred = np.asarray(predicted).ravel().astype(np.int64)
    true = np.asarray(truth).ravel().astype(np.int64)
    both = (pred > 0) & (true > 0)
    keys, counts = np.unique(true[both] * (int(pred.max()) + 1) + pred[both], return_counts=True)
    owners, labels = np.divmod(keys, int(pred.max()) + 1)
    main: dict[int, int] = {}
    best: dict[int, int] = {}
    for owner, label, count in zip(owners.tolist(), labels.tolist(), counts.tolist()):
        if count > best.get(owner, 0):
            best[owner], main[owner] = count, label
    kept = sum(1 for a, b in pairs if a in main and b in main and main[a] != main[b])
    return kept, len(pairs)


def score_volume(
    predicted: npt.NDArray[Any], truth: npt.NDArray[Any], threshold: float = 0.5
) -> dict[str, Any]:
    """Objects, foreground IoU, instance F1 at IoU > ``threshold`` (objects matched in 3D), touching pairs."""
    score = match_instances(predicted, truth, threshold)
    kept, touching = split_touching(predicted, truth)
    return {
        "objects_found": score.predicted_objects,
        "objects_true": score.true_objects,
        "objects_matched": score.matched,
        "foreground_iou": foreground_iou(predicted, truth),
        "instance_f1": score.f1,
        "precision": score.precision,
        "recall": score.recall,
        "touching_pairs": touching,
        "touching_pairs_kept_apart": kept,
    }
