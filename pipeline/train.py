"""Train the U-Net with the paper's recipe; keep the best checkpoint by validation instance F1.

One step: augmented tiles (elastic deformation, flips, intensity jitter) ->
pixel-wise softmax cross-entropy weighted by the paper's weight map, on the
valid output -> optimiser step (SGD with momentum 0.99 as in the paper, or
Adam). Every ``validate_every`` steps the held-out data is segmented by the
canonical tiling, labelled like a run does, and scored (foreground IoU,
instance F1 at IoU 0.5). Seeded: on one machine, with one torch version and
thread count, the same call gives the same weights bit for bit (CPU).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pipeline.checkpoint import save_checkpoint
from pipeline.config import TrainConfig
from pipeline.errors import InputError
from pipeline.metrics import match_instances
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.pixels import training_pixel_size
from pipeline.predict import predict_plane
from pipeline.progress import stage_progress
from pipeline.training_data import TileSampler, TrainingPair, find_pairs, open_pairs, plane_region

log = logging.getLogger(__name__)

NORMALIZATION = Normalization("percentile", 1.0, 99.8)
VALIDATION_PLANES = 4  # per held-out pair, spread over its planes


@dataclass(frozen=True, slots=True)
class Validation:
    step: int
    loss: float  # mean training loss since the last validation
    foreground_iou: float
    instance_f1: float
    objects_true: int
    objects_found: int

    def better_than(self, other: Validation | None) -> bool:
        return other is None or (self.instance_f1, self.foreground_iou) > (
            other.instance_f1,
            other.foreground_iou,
        )


def train(
    images: str, labels: str | None, out: Path, config: TrainConfig, *, show_progress: bool = True
) -> dict[str, Any]:
    """Train on the pairs at ``images`` (and ``labels``); write the best checkpoint to ``out``."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    model = UNet(1, 2, config.base_channels, config.depth)
    try:
        window = model.geometry.input_size(config.tile)
    except ValueError as error:
        raise InputError(f"training tile {config.tile} does not fit the network: {error}") from None
    specs = find_pairs(images, labels)
    training, validation = open_pairs(specs, NORMALIZATION, config.validation_fraction)
    pixel_size = training_pixel_size([(pair.name, pair.image.pixel_sizes) for pair in training + validation])
    sampler = TileSampler(training, config, model.geometry.halo, rng)
    device = torch.device(config.device)
    model.to(device).train()
    optimizer = _optimizer(model, config)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    log.info(
        "training a %d-channel U-Net on %d pairs (%d held out), tiles %d -> %d px, %d steps",
        config.base_channels,
        len(training),
        len(validation),
        window,
        config.tile,
        config.steps,
    )
    started = time.perf_counter()
    history: list[Validation] = []
    best: Validation | None = None
    losses: list[float] = []
    with stage_progress("train", config.steps, enabled=show_progress, unit="steps") as advance:
        for step in range(1, config.steps + 1):
            samples = [sampler.sample() for _ in range(config.batch_size)]
            x = torch.from_numpy(np.stack([s[0] for s in samples])[:, np.newaxis]).to(device)
            target = torch.from_numpy(np.stack([s[1] for s in samples])).to(device)
            weights = torch.from_numpy(np.stack([s[2] for s in samples])).to(device)
            with autocast:
                logits = model(x)
            loss = weighted_cross_entropy(logits.float(), target, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
            advance(config.tile * config.tile * config.batch_size)
            if step % config.validate_every == 0 or step == config.steps:
                result = validate(model, validation, config, step, float(np.mean(losses)))
                losses.clear()
                history.append(result)
                log.info(
                    "step %d: loss %.4f, validation foreground IoU %.3f, instance F1 %.3f (%d/%d objects)",
                    step,
                    result.loss,
                    result.foreground_iou,
                    result.instance_f1,
                    result.objects_found,
                    result.objects_true,
                )
                if result.better_than(best):
                    best = result
                    save_checkpoint(
                        out,
                        model,
                        normalization=NORMALIZATION,
                        training=_summary(config, specs, history, best, pixel_size),
                    )
                model.train()
    assert best is not None
    summary = {
        **_summary(config, specs, history, best, pixel_size),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info(
        "best checkpoint: step %d, F1 %.3f, IoU %.3f -> %s",
        best.step,
        best.instance_f1,
        best.foreground_iou,
        out,
    )
    return summary


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * -log softmax(logits)[target]) / sum(w): the paper's energy, normalised."""
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    return (per_pixel * weights).sum() / weights.sum()


def validate(
    model: UNet, pairs: list[TrainingPair], config: TrainConfig, step: int, loss: float
) -> Validation:
    """Segment held-out planes by the canonical tiling, label them, and score against the truth."""
    intersection = union = found = true = matched = 0
    for pair in pairs:
        planes = pair.image.shape_zyx[0]
        for plane in sorted({round(p) for p in np.linspace(0, planes - 1, min(planes, VALIDATION_PLANES))}):
            image, labels = plane_region(pair, plane)
            with torch.no_grad():
                probability = predict_plane(
                    model, image, tile=config.tile, batch_size=4, device=config.device
                )
            predicted, _ = ndimage.label(probability[1] >= config.threshold)
            intersection += int(np.count_nonzero((predicted > 0) & (labels > 0)))
            union += int(np.count_nonzero((predicted > 0) | (labels > 0)))
            score = match_instances(predicted, labels)
            found, true, matched = (
                found + score.predicted_objects,
                true + score.true_objects,
                matched + score.matched,
            )
    f1 = 2 * matched / (found + true) if found + true else 1.0
    return Validation(step, loss, intersection / union if union else 1.0, f1, true, found)


def _optimizer(model: UNet, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def _summary(
    config: TrainConfig,
    specs: list[tuple[str, str, str]],
    history: list[Validation],
    best: Validation,
    pixel_size: dict[str, float] | None,
) -> dict[str, Any]:
    """What the checkpoint records of its training: nothing that varies between identical runs.

    ``pixel_size_um`` (Y, X) only when every training image has one: runs compare it with theirs.
    """
    return {
        **({"pixel_size_um": pixel_size} if pixel_size else {}),
        "status": "trained",
        "recipe": "Ronneberger et al. 2015: weighted cross-entropy (w0, sigma), elastic deformation",
        "config": config.model_dump(mode="json"),
        "data": [{"name": name, "image": image, "labels": labels} for name, image, labels in specs],
        "best": {"step": best.step, "foreground_iou": best.foreground_iou, "instance_f1": best.instance_f1},
        "history": [
            {
                "step": v.step,
                "loss": round(v.loss, 5),
                "iou": round(v.foreground_iou, 4),
                "f1": round(v.instance_f1, 4),
            }
            for v in history
        ],
        "torch": torch.__version__,
    }
