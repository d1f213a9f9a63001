"""A run's normalisation statistics: numpy's percentiles, bit for bit, however they are found."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.normalization import HISTOGRAM_BINS, Normalization, percentiles

PERCENTS = st.one_of(
    st.sampled_from([0.0, 1.0, 50.0, 99.8, 100.0]),
    st.floats(0.0, 100.0, allow_nan=False),
)


@settings(max_examples=300)
@given(
    dtype=st.sampled_from(["uint8", "uint16", "int8", "int16", "int32", "uint32"]),
    size=st.integers(1, 2000),
    start=st.integers(-40_000, 60_000),
    span=st.integers(0, 70_000),
    q=st.tuples(PERCENTS, PERCENTS),
    seed=st.integers(0, 2**16),
)
def test_percentiles_are_numpys(
    dtype: str, size: int, start: int, span: int, q: tuple[float, float], seed: int
) -> None:
    info = np.iinfo(dtype)
    low = min(max(start, int(info.min)), int(info.max))
    high = min(low + span, int(info.max))
    values = np.random.default_rng(seed).integers(low, high, size, endpoint=True).astype(dtype)
    expected = np.percentile(values.astype(np.float64), q)
    assert percentiles(values, q).tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "values",
    [
        np.array([7], np.uint16),  # one value
        np.full(1000, 3, np.uint8),  # constant
        np.array([0, 65535] * 50, np.uint16),  # the whole uint16 range
        np.array([0, HISTOGRAM_BINS + 5, 17], np.uint32),  # too wide to count: sorted
        np.linspace(-1.5, 3.0, 1001, dtype=np.float32),  # floats: sorted
    ],
)
def test_percentiles_of_edge_samples_are_numpys(values: np.ndarray) -> None:
    q = (0.0, 1.0, 99.8, 100.0)
    assert percentiles(values, q).tobytes() == np.percentile(values.astype(np.float64), q).tobytes()


def test_statistics_of_an_integer_sample_are_those_of_its_float_values() -> None:
    sample = np.random.default_rng(0).gamma(2.0, 300.0, 100_000).astype(np.uint16)
    rule = Normalization("percentile", 1.0, 99.8)
    lo, hi = np.percentile(sample.astype(np.float64), [1.0, 99.8])
    stats = rule.statistics(sample)
    assert stats.offset == float(lo)
    assert stats.scale == 1.0 / float(hi - lo)
    assert rule.statistics(sample.astype(np.float32)) == stats
    with pytest.raises(ValueError, match="empty sample"):
        rule.statistics(np.zeros(0, np.uint16))
