"""Block markers: their payloads round trip bit for bit, and markers of earlier versions (.npz) still count."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pipeline.markers import (
    decode_payload,
    done_blocks,
    encode_payload,
    read_marker,
    read_markers,
    write_marker,
)

PAYLOAD = {
    "count": np.array(3, np.int64),  # 0-d
    "first_voxel": np.array([5, 2**40, 7], np.int64),
    "sizes": np.zeros(0, np.int64),
    "pairs": np.arange(24, dtype=np.uint32).reshape(6, 4)[::2],  # not contiguous
    "edges": np.full((2, 3, 4), 0.5, np.float32),
}


def assert_same(read: dict[str, np.ndarray], written: dict[str, np.ndarray]) -> None:
    assert list(read) == list(written)
    for name, array in written.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape, name
        assert np.array_equal(read[name], array), name
        assert read[name].flags.writeable, name  # as a block report's arrays are


def test_payloads_round_trip(tmp_path: Path) -> None:
    assert_same(decode_payload(encode_payload(PAYLOAD)), PAYLOAD)
    write_marker(str(tmp_path), "predict", 4, PAYLOAD)
    write_marker(str(tmp_path), "relabel", 4)
    assert_same(read_marker(str(tmp_path), "predict", 4), PAYLOAD)
    assert read_marker(str(tmp_path), "relabel", 4) == {}
    assert done_blocks(str(tmp_path), "predict") == {4}


def test_markers_read_together_come_in_the_order_asked(tmp_path: Path) -> None:
    for block in range(40):
        write_marker(str(tmp_path), "contacts", block, {"pairs": np.full((block, 4), block)})
    order = [7, 0, 39, 12, *range(20, 30)]
    for location in (str(tmp_path), f"file://{tmp_path}"):  # a URL's are read by a pool of threads
        for block, payload in zip(order, read_markers(location, "contacts", order), strict=True):
            assert payload["pairs"].shape == (block, 4) and (payload["pairs"] == block).all()
        with pytest.raises(FileNotFoundError, match="contacts/40"):
            read_markers(location, "contacts", [1, 40, 2])


def test_an_earlier_versions_npz_markers_are_listed_and_read(tmp_path: Path) -> None:
    """A run of the version before, stopped, and resumed by this one: both kinds in one stage."""
    folder = tmp_path / "_markers" / "predict"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    np.savez(buffer, **PAYLOAD)
    (folder / "2.npz").write_bytes(buffer.getvalue())
    write_marker(str(tmp_path), "predict", 3, PAYLOAD)
    (folder / "9.marker.partial").write_bytes(b"cut short")  # a write that never finished
    assert done_blocks(str(tmp_path), "predict") == {2, 3}
    for payload in read_markers(str(tmp_path), "predict", [2, 3]):
        assert_same(payload, PAYLOAD)


def test_damaged_markers_are_errors_not_other_numbers() -> None:
    data = encode_payload(PAYLOAD)
    with pytest.raises(ValueError, match="does not match its arrays"):
        decode_payload(data[:-1])
    with pytest.raises(ValueError, match="does not match its arrays"):
        decode_payload(data + b"\0")
    with pytest.raises(TypeError, match="numbers only"):
        encode_payload({"objects": np.array([{}], dtype=object)})
    forged = data.replace(b'"<i8"', b'"|O"', 1)
    with pytest.raises(ValueError, match="numbers only"):
        decode_payload(forged)
