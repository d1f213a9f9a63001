"""The paper's pixel weights: class balance plus a border term between nearby cells.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``d1`` and ``d2``: distances to the nearest and the second nearest cell;
the border term is applied to background pixels, where it forces the
network to learn the thin separations between touching cells. w0 = 10,
sigma = 5 px as in the paper (Ronneberger et al. 2015, eq. 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

W0 = 10.0
SIGMA = 5.0


def class_balance(labels: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """w_c: each class (background, foreground) weighs in with half of the total."""
    foreground = labels > 0
    fraction = float(foreground.mean())
    if fraction in (0.0, 1.0):
        return np.ones(labels.shape, dtype=np.float32)
    weights = np.where(foreground, 0.5 / fraction, 0.5 / (1.0 - fraction))
    return weights.astype(np.float32)


def border_term(labels: npt.NDArray[Any], w0: float = W0, sigma: float = SIGMA) -> npt.NDArray[np.float32]:
    """``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels of a 2D label map, 0 elsewhere.

    Distances to each cell are computed only within its bounding box grown
    by the reach of the term (beyond it the term is below 1e-6 of w0).
    """
    if labels.ndim != 2:
        raise ValueError(f"border_term takes a 2D label map, got shape {labels.shape}")
    reach = int(np.ceil(sigma * np.sqrt(2 * np.log(1e6)))) + 1
    nearest = np.full(labels.shape, np.inf)
    second = np.full(labels.shape, np.inf)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(0, part.start - reach), min(size, part.stop + reach))
            for part, size in zip(box, labels.shape)
        )
        distance = ndimage.distance_transform_edt(labels[window] != index)
        near, far = nearest[window], second[window]
        far[:] = np.minimum(far, np.maximum(near, distance))
        near[:] = np.minimum(near, distance)
    term = w0 * np.exp(-((nearest + second) ** 2) / (2 * sigma**2))
    term[labels > 0] = 0.0
    result: npt.NDArray[np.float32] = term.astype(np.float32)
    return result


def weight_map(labels: npt.NDArray[Any], w0: float = W0, sigma: float = SIGMA) -> npt.NDArray[np.float32]:
    """The full weight map of a 2D instance label map."""
    return class_balance(labels) + border_term(labels, w0, sigma)
