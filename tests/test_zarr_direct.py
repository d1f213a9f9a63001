from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from pipeline import zarr_direct
from pipeline.omezarr import OutputLayout, create_labels, create_output, output_array
from pipeline.zarr_direct import encoding, morton_order, read_region, write_region


@dataclass(frozen=True)
class Layout:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None
    dtype: str = "uint8"
    compressor: Any = None
    index_location: str = "end"
    keep_empty: bool = False
    zarr_format: int = 3

    def create(self, path: Path | Any) -> zarr.Array[Any]:
        """At ``path`` (a local store), or in the store given."""
        sharding = (
            None if self.shards is None else {"shape": self.shards, "index_location": self.index_location}
        )
        extra: dict[str, Any] = {"shards": sharding} if self.zarr_format == 3 else {"zarr_format": 2}
        array = zarr.create_array(
            store=str(path) if isinstance(path, Path) else path,
            shape=self.shape,
            chunks=self.chunks,
            dtype=self.dtype,
            compressors=self.compressor,
            fill_value=0,
            **extra,
        )
        return array.with_config({"write_empty_chunks": self.keep_empty})


ZSTD = ZstdCodec(level=3)
LZ4 = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
LAYOUTS = {
    "sharded uint8, edge shards": Layout((3, 50, 70), (1, 8, 8), (1, 24, 32), compressor=ZSTD),
    "sharded uint32, 3 x 5 chunks a shard": Layout(
        (2, 40, 50), (1, 5, 4), (1, 15, 20), "uint32", ZstdCodec(level=1)
    ),
    "index at the start": Layout((2, 33, 41), (1, 8, 8), (1, 16, 16), "uint16", ZSTD, index_location="start"),
    "empty chunks kept": Layout((2, 40, 40), (1, 8, 8), (1, 16, 16), compressor=ZSTD, keep_empty=True),
    "one chunk a shard": Layout((2, 30, 50), (1, 16, 16), (1, 16, 16), "uint32", ZSTD),
    "float32": Layout((2, 30, 50), (1, 8, 8), (1, 16, 16), "float32", ZSTD),
    "sharded, uncompressed": Layout((2, 20, 20), (1, 5, 5), (1, 10, 10), "uint16"),
    "chunks, LZ4": Layout((3, 30, 50), (1, 16, 25), None, "uint32", LZ4, keep_empty=True),
    "chunks, Zstd, empty left out": Layout((3, 30, 50), (1, 16, 25), None, compressor=ZSTD),
    "plane": Layout((45, 60), (10, 10), (20, 30), compressor=ZSTD),
    "Zarr v2, Zstd": Layout(
        (3, 30, 50), (1, 16, 16), dtype="uint16", compressor=Zstd(level=3), zarr_format=2
    ),
    "Zarr v2, uncompressed": Layout((3, 30, 50), (1, 16, 16), dtype="uint16", zarr_format=2),
    "Zarr v2, Blosc": Layout(
        (2, 30, 50), (1, 16, 16), dtype="uint32", compressor=Blosc("lz4", 5, Blosc.SHUFFLE), zarr_format=2
    ),
}


METADATA = ("zarr.json", ".zarray", ".zattrs")


def stored_objects(root: Path) -> dict[str, bytes]:
    """Every file under an array but its metadata, by relative path."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in METADATA
    }


def speckle(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray[Any, Any]:
    """Values with empty stretches, so some chunks hold only the fill value."""
    values = rng.integers(1, 200, size=shape).astype(dtype)
    values[rng.random(shape) < 0.6] = 0
    values[..., : shape[-2] // 3, :] = 0  # whole empty chunks
    return values


def halves(shape: tuple[int, ...], unit: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Two regions of whole stored objects, split along Y."""
    rows = unit[-2] * max(1, -(-shape[-2] // unit[-2]) // 2)
    lead = tuple(slice(0, n) for n in shape[:-2])
    return [
        (*lead, slice(0, min(rows, shape[-2])), slice(0, shape[-1])),
        (*lead, slice(min(rows, shape[-2]), shape[-2]), slice(0, shape[-1])),
    ]


@pytest.mark.parametrize("name", LAYOUTS)
def test_stored_bytes_are_zarrs_own(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    """Whole shards (chunks) written here and by Zarr are the same files, byte for byte, and read the same."""
    layout = LAYOUTS[name]
    ours, theirs = layout.create(tmp_path / "ours"), layout.create(tmp_path / "theirs")
    found = encoding(ours)
    assert found is not None
    values = speckle(rng, layout.shape, layout.dtype)
    for region in halves(layout.shape, found.unit):
        if region[-2].start < region[-2].stop:
            write_region(ours, region, values[region])
            theirs[region] = values[region]
    assert stored_objects(tmp_path / "ours") == stored_objects(tmp_path / "theirs")
    assert np.array_equal(zarr.open_array(str(tmp_path / "ours"))[...], values)


@pytest.mark.parametrize("name", LAYOUTS)
def test_reads_equal_zarrs(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    """Whole shards, parts of chunks, integer indices, absent objects: what Zarr reads."""
    layout = LAYOUTS[name]
    array = layout.create(tmp_path / "a")
    values = speckle(rng, layout.shape, layout.dtype)
    array[...] = values
    whole = tuple(slice(0, n) for n in layout.shape)
    part = tuple(slice(n // 5, n - n // 7) for n in layout.shape)
    plane = (1, *whole[1:]) if len(layout.shape) == 3 else whole
    for index in (whole, part, plane, *halves(layout.shape, encoding(array).unit)):  # type: ignore[union-attr]
        assert np.array_equal(read_region(array, index), values[index]), index


@pytest.mark.parametrize(
    "name", ["sharded uint8, edge shards", "chunks, Zstd, empty left out", "Zarr v2, Zstd"]
)
def test_other_stores_get_the_same_objects_through_zarr(
    tmp_path: Path, rng: np.random.Generator, name: str
) -> None:
    """A local store's files are written and read here; any other store's objects go through Zarr's
    event loop: the same bytes, read back the same, removed the same."""
    layout = LAYOUTS[name]
    objects: dict[str, Any] = {}
    local, other = layout.create(tmp_path / "a"), layout.create(zarr.storage.MemoryStore(objects))
    assert zarr_direct._local_root(local.store_path.store) == tmp_path / "a"
    assert zarr_direct._local_root(other.store_path.store) is None

    def in_memory() -> dict[str, bytes]:
        return {key: buffer.to_bytes() for key, buffer in objects.items() if not key.endswith(METADATA)}

    whole = tuple(slice(0, n) for n in layout.shape)
    for values in (speckle(rng, layout.shape, layout.dtype), np.zeros(layout.shape, layout.dtype)):
        for array in (local, other):
            write_region(array, whole, values)
            assert np.array_equal(read_region(array, whole), values)
        assert in_memory() == stored_objects(tmp_path / "a")
    assert in_memory() == {}


def test_a_local_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway leaves the object as it was, and nothing beside it."""
    layout = Layout((1, 16, 16), (1, 8, 8), (1, 16, 16), compressor=ZSTD)
    array = layout.create(tmp_path / "a")
    region = (slice(0, 1), slice(0, 16), slice(0, 16))
    write_region(array, region, np.ones((1, 16, 16), np.uint8))
    before = stored_objects(tmp_path / "a")

    def fail(self: Path, target: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_region(array, region, np.full((1, 16, 16), 2, np.uint8))
    assert stored_objects(tmp_path / "a") == before


def test_shards_that_become_empty_are_removed(tmp_path: Path) -> None:
    """A rewrite (a resumed block) with only the fill value leaves no shard behind, as Zarr's would."""
    array = Layout((1, 32, 32), (1, 8, 8), (1, 16, 16), compressor=ZSTD).create(tmp_path / "a")
    write_region(array, (slice(0, 1), slice(0, 32), slice(0, 32)), np.ones((1, 32, 32), np.uint8))
    assert len(stored_objects(tmp_path / "a")) == 4
    write_region(array, (slice(0, 1), slice(0, 16), slice(0, 32)), np.zeros((1, 16, 32), np.uint8))
    assert sorted(stored_objects(tmp_path / "a")) == ["c/0/1/0", "c/0/1/1"]
    assert array[0, :16].max() == 0 and array[0, 16:].min() == 1


def test_a_timepoint_index_is_one_plane_of_shards(tmp_path: Path, rng: np.random.Generator) -> None:
    array = Layout((2, 3, 20, 20), (1, 1, 8, 8), (1, 1, 16, 16), "uint16", ZSTD).create(tmp_path / "a")
    values = speckle(rng, (3, 20, 20), "uint16")
    write_region(array, (1, slice(0, 3), slice(0, 20), slice(0, 20)), values)
    assert np.array_equal(array[1], values) and array[0].max() == 0
    assert np.array_equal(read_region(array, (1, slice(0, 3), slice(0, 20), slice(0, 20))), values)


@pytest.mark.parametrize(
    "region",
    [
        (slice(0, 1), slice(8, 24), slice(0, 32)),  # not whole shards: Zarr merges it into the stored ones
        (slice(0, 1), slice(0, 16), slice(0, 32, 2)),  # a step
    ],
)
def test_other_regions_are_left_to_zarr(tmp_path: Path, region: tuple[slice, ...]) -> None:
    array = Layout((1, 32, 32), (1, 8, 8), (1, 16, 16), compressor=ZSTD).create(tmp_path / "a")
    expected = np.full((1, 32, 32), 7, np.uint8)
    array[...] = expected
    shape = tuple(len(range(*s.indices(32))) for s in region)
    write_region(array, region, np.full(shape, 9, np.uint8))
    expected[region] = 9
    assert np.array_equal(array[...], expected)
    assert np.array_equal(read_region(array, region), expected[region])


def test_codecs_it_does_not_know_are_left_to_zarr(tmp_path: Path) -> None:
    gzip = Layout((1, 16, 16), (1, 8, 8), (1, 16, 16), compressor=GzipCodec()).create(tmp_path / "g")
    assert encoding(gzip) is None
    write_region(gzip, (slice(0, 1), slice(0, 16), slice(0, 16)), np.full((1, 16, 16), 3, np.uint8))
    assert read_region(gzip, (0, slice(0, 16), slice(0, 16))).min() == 3
    floats = zarr.create_array(
        store=str(tmp_path / "f"), shape=(16, 16), chunks=(8, 8), dtype="float32", fill_value=np.nan
    )
    assert encoding(floats) is None


def test_a_damaged_shard_index_is_an_error(tmp_path: Path) -> None:
    array = Layout((1, 16, 16), (1, 8, 8), (1, 16, 16), compressor=ZSTD).create(tmp_path / "a")
    array[...] = 5
    shard = tmp_path / "a" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        read_region(array, (slice(0, 1), slice(0, 16), slice(0, 16)))


def test_morton_order_of_a_shard() -> None:
    assert morton_order((1, 2, 2)) == [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)]  # Y bit first, then X
    order = morton_order((1, 3, 5))
    assert sorted(order) == [(0, y, x) for y in range(3) for x in range(5)]
    assert order[:4] == [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)]


def test_one_store_batch_a_region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No round trip per chunk: one call sets every shard of the region, one gets them."""
    array = Layout((2, 32, 32), (1, 8, 8), (1, 16, 16), compressor=ZSTD).create(tmp_path / "a")
    batches: list[int] = []
    store_all, fetch_all = zarr_direct._store_all, zarr_direct._fetch_all
    monkeypatch.setattr(
        zarr_direct,
        "_store_all",
        lambda a, stored, removed: (batches.append(len(stored)), store_all(a, stored, removed)),
    )
    monkeypatch.setattr(
        zarr_direct, "_fetch_all", lambda a, keys: (batches.append(len(keys)), fetch_all(a, keys))[1]
    )
    write_region(array, (slice(0, 2), slice(0, 32), slice(0, 32)), np.ones((2, 32, 32), np.uint8))
    assert read_region(array, (slice(0, 2), slice(0, 32), slice(0, 32))).min() == 1
    assert batches == [8, 8]


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_every_array_of_an_output_is_written_here(tmp_path: Path, ngff: str, dtype: str) -> None:
    """The pipeline's own arrays never fall back to Zarr's path (which would cost twice the CPU)."""
    layout = OutputLayout((2, 100, 130), "zyx", tile=20, shard_tiles=2, dtype=dtype, levels=2, ngff=ngff)
    url = str(tmp_path / "out.ome.zarr")
    create_output(url, layout, label_blocks=(1, 40, 40), model_grid=(50, 65))
    create_labels(url, layout, "cells", "uint32")
    group = zarr.open_group(url, mode="r")
    paths = [path for path, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    assert (
        len(paths) == 3 + 3 + 3 + 1 + 1
    )  # probability, labels, scratch labels (3 levels each), edges, model grid
    for path in paths:
        assert encoding(output_array(url, path)) is not None, path


def test_a_broadcast_value_is_left_to_zarr(tmp_path: Path) -> None:
    array = Layout((1, 32, 32), (1, 8, 8), (1, 16, 16), compressor=ZSTD).create(tmp_path / "a")
    write_region(array, (slice(0, 1), slice(0, 16), slice(0, 32)), np.array(4, np.uint8))
    expected = np.zeros((32, 32), np.uint8)
    expected[:16] = 4
    assert np.array_equal(read_region(array, (0, slice(0, 32), slice(0, 32))), expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_reads_local_files_with_threads_of_its_own(tmp_path: Path) -> None:
    """The file threads of a process are not its forked child's: the child starts its own."""
    array = Layout((1, 64, 64), (1, 16, 16), compressor=ZSTD).create(tmp_path / "a")
    whole = (slice(0, 1), slice(0, 64), slice(0, 64))
    write_region(array, whole, np.ones((1, 64, 64), np.uint8))
    threads = zarr_direct._file_threads()
    list(threads.map(time.sleep, [0.01] * 2 * zarr_direct.LOCAL_IO_THREADS))  # every thread started, idle
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's exit status is the result
        signal.alarm(20)  # waiting on threads that are not there would hang
        os._exit(0 if read_region(array, whole).min() == 1 else 3)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
