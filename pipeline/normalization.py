"""Intensity normalisation: one affine map per run, never per tile.

The method and its parameters travel in the checkpoint (what the network was
trained on); the statistics are computed once per run from a deterministic
sample of the whole volume and recorded, so every tile sees the same map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Method = Literal["percentile", "minmax", "meanstd", "none"]
METHODS: tuple[str, ...] = ("percentile", "minmax", "meanstd", "none")


@dataclass(frozen=True, slots=True)
class Normalization:
    """How inputs are mapped to the network's range.

    ``percentile``: ``(x - p_low) / (p_high - p_low)``; ``minmax`` the same
    with the extremes; ``meanstd``: ``(x - mean) / std``; ``none``: cast only.
    """

    method: str = "percentile"
    low: float = 1.0  # percentile, for method "percentile"
    high: float = 99.8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"normalisation method must be one of {METHODS}, got {self.method!r}")
        if self.method == "percentile" and not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got low={self.low}, high={self.high}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        unknown = set(data) - {"method", "low", "high"}
        if unknown:
            raise ValueError(f"unknown normalisation keys: {sorted(unknown)}")
        return cls(**data)

    def statistics(self, sample: npt.NDArray[Any]) -> NormalizationStats:
        """The affine map (offset, scale) fitted to ``sample``."""
        values = np.asarray(sample, dtype=np.float64).ravel()
        if self.method == "none":
            return NormalizationStats(offset=0.0, scale=1.0)
        if values.size == 0:
            raise ValueError("cannot compute normalisation statistics from an empty sample")
        if self.method == "percentile":
            lo, hi = np.percentile(values, [self.low, self.high])
        elif self.method == "minmax":
            lo, hi = values.min(), values.max()
        else:
            lo, spread = values.mean(), values.std()
            hi = lo + spread
        spread = float(hi - lo)
        # A constant sample would divide by zero; map it to 0 instead.
        return NormalizationStats(offset=float(lo), scale=1.0 / spread if spread > 0 else 1.0)


@dataclass(frozen=True, slots=True)
class NormalizationStats:
    """``x -> (x - offset) * scale``, applied in float32."""

    offset: float
    scale: float

    def apply(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        out = np.asarray(values, dtype=np.float32) - np.float32(self.offset)
        out *= np.float32(self.scale)
        return out

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationStats:
        return cls(offset=float(data["offset"]), scale=float(data["scale"]))


def stats_to_record(stats: tuple[NormalizationStats, ...]) -> dict[str, Any]:
    """A run record's normalisation: the one channel's map, or ``{"channels": [...]}`` for several."""
    if len(stats) == 1:
        return stats[0].to_dict()
    return {"channels": [channel.to_dict() for channel in stats]}


def stats_from_record(normalization: dict[str, Any]) -> tuple[NormalizationStats, ...]:
    if "channels" in normalization:
        return tuple(NormalizationStats.from_dict(channel) for channel in normalization["channels"])
    return (NormalizationStats.from_dict(normalization),)
