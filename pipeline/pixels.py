"""Physical pixel sizes: the model's (recorded at training) against the input's.

A U-Net learns cells at one scale: trained at 0.5 um/px it does not find
cells imaged at 0.1 um/px. Sizes are compared in micrometres, in Y and X
(the network is 2D; Z is kept as it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import InputError
from pipeline.store import PixelSize

MICROMETRES = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
PLANE_AXES = ("y", "x")


def in_micrometres(size: PixelSize | None) -> float | None:
    """The size in um, or None when it has no (known) unit: a scale of 1 without a unit says nothing."""
    if size is None or size.unit not in MICROMETRES:
        return None
    return size.value * MICROMETRES[size.unit]


def plane_pixel_size(sizes: Mapping[str, PixelSize]) -> dict[str, float] | None:
    """{"y": um, "x": um} when both are known, else None."""
    known = {axis: in_micrometres(sizes.get(axis)) for axis in PLANE_AXES}
    if any(value is None for value in known.values()):
        return None
    return {axis: float(value) for axis, value in known.items() if value is not None}


def training_pixel_size(volumes: list[tuple[str, Mapping[str, PixelSize]]]) -> dict[str, float] | None:
    """The pixel size shared by all training images, None if any lacks one; InputError if they differ."""
    sizes = [(name, plane_pixel_size(found)) for name, found in volumes]
    if not sizes or any(size is None for _, size in sizes):
        return None
    first_name, first = sizes[0]
    assert first is not None
    for name, size in sizes[1:]:
        assert size is not None
        if any(abs(size[axis] / first[axis] - 1) > 0.01 for axis in PLANE_AXES):
            raise InputError(
                f"training images differ in pixel size: {first_name} {_text(first)}, {name} {_text(size)}; "
                "resample them to one size first"
            )
    return first


@dataclass(frozen=True, slots=True)
class ScaleCheck:
    input_um: dict[str, float] | None
    model_um: dict[str, float] | None
    factors: dict[str, float]  # model-grid pixels per input pixel, per axis (1.0: same grid)
    verdict: str  # "match" | "rescaled" | "unknown: ..."

    def to_dict(self) -> dict[str, object]:
        return {
            "input_um": self.input_um,
            "model_um": self.model_um,
            "factors": self.factors,
            "verdict": self.verdict,
        }


def check_scale(
    url: str,
    input_sizes: Mapping[str, PixelSize],
    model_um: Mapping[str, float] | None,
    *,
    tolerance: float,
    rescale: bool,
) -> ScaleCheck:
    """Refuse (InputError) a pixel size off the model's by more than ``tolerance``, unless ``rescale``."""
    found = plane_pixel_size(input_sizes)
    model = dict(model_um) if model_um else None
    same = {axis: 1.0 for axis in PLANE_AXES}
    if found is None or model is None:
        missing = "the input" if found is None else "the model"
        if rescale:
            raise InputError(
                f"{url}: --rescale needs the pixel sizes of both input and model; {missing} has none"
            )
        return ScaleCheck(found, model, same, f"unknown: {missing} has no pixel size in um")
    factors = {axis: found[axis] / model[axis] for axis in PLANE_AXES}
    if all(abs(factor - 1) <= tolerance for factor in factors.values()):
        return ScaleCheck(found, model, same, "match")
    if not rescale:
        raise InputError(
            f"{url}: pixel size {_text(found)} differs from the model's training pixel size {_text(model)} "
            f"by more than {tolerance:.0%} (cells would span {1 / factors['x']:.2g}x the pixels they did in training); pass "
            "--rescale to resample the input to the model's pixel size, or use a model trained at this one"
        )
    return ScaleCheck(found, model, factors, "rescaled")


def _text(size: Mapping[str, float]) -> str:
    return f"{size['y']:.4g} x {size['x']:.4g} um (y, x)"
