"""Labels written by real runs equal scipy.ndimage.label of the whole thresholded volume.

Labelling does not depend on the network, so a small depth-3 U-Net on 100 px tiles
stands in for the paper's (test_run.py runs that one end to end): the same 3 x 3
ragged tile grid per plane, a tenth of the pixels.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.ndimage
import torch
import zarr

from pipeline import omezarr, run_labels
from pipeline import run as run_module
from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.label_stream import StreamingMerge
from pipeline.labels import Connectivity
from pipeline.markers import decode_payload
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.run import SegmentRequest, segment
from pipeline.schedule import JobGraph
from pipeline.synthetic import cell_image
from tests.conftest import untrained_checkpoint, write_volume

SHAPE = (3, 250, 280)  # 3 x 3 tiles of 100 per plane, ragged on both axes
TILE = 100  # a valid output size of a depth-3 U-Net (input 140)
SMALL = {"base_channels": 2, "depth": 3}


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_volume(
        tmp_path_factory.mktemp("in") / "cells.zarr", cell_image(SHAPE, seed=21), (1, 64, 96)
    )  # not tile-aligned


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained: it gives thousands of small objects, many of them cut by block faces."""
    return untrained_checkpoint(tmp_path_factory.mktemp("models"), SMALL)


def constant_checkpoint(path: Path, foreground: bool) -> Path:
    """A model whose output ignores the input: all foreground, or all background."""
    torch.manual_seed(0)
    model = UNet(**SMALL)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 10.0 if foreground else -10.0]))
    save_checkpoint(path, model, normalization=Normalization())
    return path


def run(
    input_url: str, output: Path, checkpoint: Path, address: str, resume: bool = False, **overrides: Any
) -> dict[str, Any]:
    config = load_config(
        overrides={
            "cluster.address": address,
            "profile.batch_size": 3,
            "tiling.tile": TILE,
            "tiling.shard_tiles": 1,
            "output.dtype": "float32",
            "output.pyramid_levels": 3,  # level shards of one 100 px tile: each covers 2**level blocks a side
            **overrides,
        }
    )
    return segment(
        SegmentRequest(input_url, str(output), checkpoint, config, resume=resume, show_progress=False)
    )


def expected_labels(
    output: Path, mode: str, threshold: float = 0.5, neighbours: str = "faces"
) -> tuple[np.ndarray, int]:
    probability = zarr.open_array(str(output / "s0"), mode="r")[...]
    connectivity = Connectivity(neighbours, planar=mode == "2d")
    labels, count = scipy.ndimage.label(probability >= threshold, structure=connectivity.structure())
    return labels, int(count)


@pytest.mark.parametrize(
    ("mode", "block_tiles", "subsampled", "neighbours"),
    [
        ("3d", (1, 1), True, "faces"),  # one shard
        ("3d", (2, 3), True, "faces"),  # 2 x 3 shards
        ("3d", (3, 3), True, "faces"),  # a whole plane
        ("2d", (1, 1), True, "faces"),
        ("2d", (2, 3), True, "faces"),
        ("2d", (3, 3), True, "faces"),
        ("3d", (2, 3), False, "faces"),  # an output of an older run: no subsampled local labels or edge lines
        ("3d", (1, 1), True, "full"),  # edges and corners join too: scipy's labeller, contacts across them
        ("2d", (2, 3), True, "full"),
    ],
)
def test_labels_equal_whole_volume_components(
    volume: str,
    checkpoint: Path,
    dask_address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    block_tiles: tuple[int, int],
    subsampled: bool,
    neighbours: str,
) -> None:
    if not subsampled:  # decided by the driver, this process
        monkeypatch.setattr(omezarr, "SCRATCH_LABEL_LEVELS", 0)
        monkeypatch.setattr(run_module, "scratch_label_edges", lambda url: False)
    output = tmp_path / "out.ome.zarr"
    record = run(
        volume,
        output,
        checkpoint,
        dask_address,
        **{"tiling.block_tiles": list(block_tiles), "labels.mode": mode, "labels.connectivity": neighbours},
    )
    expected, count = expected_labels(output, mode, neighbours=neighbours)
    stored = zarr.open_array(str(output / "labels" / "cells" / "s0"), mode="r")
    assert stored.dtype == np.uint32 and record["labels"]["merged"] == "slab by slab"
    assert record["labels"]["objects"] == count > 100  # the untrained net gives many small objects
    assert record["labels"]["local_label_levels_kept"] == (2 if subsampled else 0)
    assert record["labels"]["local_label_edges_kept"] == subsampled
    if (mode, block_tiles) != ("2d", (3, 3)):  # there each block holds whole planar objects
        assert record["labels"]["local_labels"] > count  # objects cut by block faces were merged
    assert np.array_equal(stored[...], expected)  # same partition, same canonical IDs
    for level in (1, 2, 3):  # 1 and 2 from the local labels beside relabel, 3 halves level 2
        step = 2**level
        pyramid = zarr.open_array(str(output / "labels" / "cells" / f"s{level}"), mode="r")
        assert np.array_equal(pyramid[...], expected[:, ::step, ::step]), level


def test_uint64_labels_asked_for_are_merged_slab_by_slab(
    volume: str, checkpoint: Path, dask_address: str, tmp_path: Path
) -> None:
    """``uint32_max_objects: 0`` fixes the dtype before the count, so a volume of any size streams."""
    output = tmp_path / "out.ome.zarr"
    record = run(
        volume,
        output,
        checkpoint,
        dask_address,
        **{"tiling.block_tiles": [2, 3], "labels.uint32_max_objects": 0},
    )
    assert record["labels"]["merged"] == "slab by slab" and record["labels"]["dtype"] == "uint64"
    stored = zarr.open_array(str(output / "labels" / "cells" / "s0"), mode="r")
    expected, count = expected_labels(output, "3d")
    assert stored.dtype == np.uint64 and record["labels"]["objects"] == count > 100
    assert np.array_equal(stored[...], expected)


def test_a_count_past_the_uint32_limit_is_merged_again_as_uint64_and_resumes_as_uint64(
    volume: str, checkpoint: Path, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit one below the count stands in for 2**32 - 1: the merge streams in uint32 until the last
    slab passes it, then the uint32 labels are dropped and merged again from the markers as uint64.
    A run stopped in that second pass resumes in uint64, keeping the blocks it relabelled."""
    settings = {"tiling.block_tiles": [2, 3], "labels.mode": "2d"}  # 3 slabs of 2 blocks, each final at once
    streamed = run(volume, tmp_path / "streamed.ome.zarr", checkpoint, dask_address, **settings)
    count = streamed["labels"]["objects"]
    assert streamed["labels"]["dtype"] == "uint32" and "uint32_limit_passed" not in streamed["labels"]
    limit = {"labels.uint32_max_objects": count - 1}
    output = tmp_path / "passed.ome.zarr"
    record = run(volume, output, checkpoint, dask_address, **settings, **limit)
    expected, expected_count = expected_labels(output, "2d")
    assert record["labels"]["objects"] == count == expected_count
    assert record["labels"]["dtype"] == "uint64" and record["labels"]["merged"] == "slab by slab"
    passed = record["labels"]["uint32_limit_passed"]
    assert passed["slab"] == 2 and passed["objects"] == count  # the IDs of the last slab passed it
    assert passed["abandoned_stages"]["relabel"]["computed"] > 0  # earlier slabs were relabelled in uint32
    assert record["stages"]["relabel"]["computed"] == record["blocks"]["total"]  # then every block again
    for level in range(4):
        stored = zarr.open_array(str(output / "labels" / "cells" / f"s{level}"), mode="r")
        assert stored.dtype == np.uint64
        assert np.array_equal(stored[...], expected[:, :: 2**level, :: 2**level]), level

    second_pass = []
    real_run_phase = run_module.run_phase

    def stop_in_the_second_pass(client: Any, plan: Any, jobs: list[Any], *args: Any, **kwargs: Any) -> Any:
        if not jobs:  # the second pass: its jobs come from the merge
            run_clock, record, merge = args
            second_pass.append(merge)
            made = merge.more(JobGraph([]), {})
            real_run_phase(
                client, plan, [job for job in made if job.stage == "relabel"][:5], run_clock, record
            )
            raise RuntimeError("stopped in the second pass")
        return real_run_phase(client, plan, jobs, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_phase", stop_in_the_second_pass)
    stopped = tmp_path / "stopped.ome.zarr"
    with pytest.raises(RuntimeError, match="stopped in the second pass"):
        run(volume, stopped, checkpoint, dask_address, **settings, **limit)
    assert second_pass
    monkeypatch.setattr(run_module, "run_phase", real_run_phase)
    resumed = run(volume, stopped, checkpoint, dask_address, resume=True, **settings, **limit)
    assert resumed["labels"]["dtype"] == "uint64" and resumed["labels"]["merged"] == "slab by slab"
    assert resumed["stages"]["relabel"]["skipped_done"] == 5
    for level in range(4):
        stored = zarr.open_array(str(stopped / "labels" / "cells" / f"s{level}"), mode="r")
        assert stored.dtype == np.uint64
        assert np.array_equal(stored[...], expected[:, :: 2**level, :: 2**level]), level


# 27 blocks in 3 slabs, each block final once its slab is in
PLANAR_ONE_TILE_BLOCKS = {"tiling.block_tiles": [1, 1], "labels.mode": "2d"}


def stop_after_the_blocks(
    volume: str, output: Path, checkpoint: Path, address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of PLANAR_ONE_TILE_BLOCKS stopped once its blocks' phase is over: every block predicted,
    its contacts found, relabelled and in the label pyramid, the output not complete."""
    real_run_phase = run_module.run_phase

    def stop_after_the_phase(*args: Any, **kwargs: Any) -> Any:
        real_run_phase(*args, **kwargs)
        raise RuntimeError("stopped after the blocks")

    monkeypatch.setattr(run_module, "run_phase", stop_after_the_phase)
    with pytest.raises(RuntimeError, match="stopped after the blocks"):
        run(volume, output, checkpoint, address, **PLANAR_ONE_TILE_BLOCKS)
    monkeypatch.setattr(run_module, "run_phase", real_run_phase)


def test_a_run_stopped_by_an_earlier_version_resumes_from_its_npz_markers(
    volume: str, checkpoint: Path, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every block predicted and its contacts found by a version that wrote .npz markers; this one
    merges their labels from them (its relabel and label pyramid markers and arrays wiped), making
    relabel jobs no faster than they are done."""
    output = tmp_path / "out.ome.zarr"
    stop_after_the_blocks(volume, output, checkpoint, dask_address, monkeypatch)
    for marker in (output / "_markers").rglob("*.marker"):
        buffer = io.BytesIO()
        np.savez(buffer, **decode_payload(marker.read_bytes()))
        marker.with_suffix(".npz").write_bytes(buffer.getvalue())
        marker.unlink()
    shutil.rmtree(output / "_markers" / "relabel")
    shutil.rmtree(output / "_markers" / "pyramid-labels")
    for level in range(4):
        shutil.rmtree(output / "labels" / "cells" / f"s{level}" / "c")
    monkeypatch.setattr(run_labels, "MADE_AHEAD", 0)  # catching up, a slab's jobs once the last ones are done
    calls_with_jobs = []
    real_more = run_labels.LabelStream.more

    def more(stream: Any, graph: Any, reports: Any) -> Any:
        jobs = real_more(stream, graph, reports)
        if any(job.stage == "relabel" for job in jobs):
            calls_with_jobs.append(len(jobs))
        return jobs

    monkeypatch.setattr(run_labels.LabelStream, "more", more)
    record = run(volume, output, checkpoint, dask_address, resume=True, **PLANAR_ONE_TILE_BLOCKS)
    assert len(calls_with_jobs) >= 3  # one slab at a time, not all 27 blocks' at the start
    assert record["stages"]["predict"]["skipped_done"] == record["blocks"]["total"] == 27
    assert record["stages"]["relabel"]["computed"] == 27
    expected, count = expected_labels(output, "2d")
    assert record["labels"]["objects"] == count
    for level in range(4):
        stored = zarr.open_array(str(output / "labels" / "cells" / f"s{level}"), mode="r")
        assert np.array_equal(stored[...], expected[:, :: 2**level, :: 2**level]), level


def test_a_run_stopped_after_its_relabel_resumes_while_the_merge_paces_its_jobs(
    volume: str, checkpoint: Path, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every relabel job marked done: the caught-up merge makes them all (nothing runs), whatever
    the pace it keeps for jobs that do run."""
    output = tmp_path / "out.ome.zarr"
    stop_after_the_blocks(volume, output, checkpoint, dask_address, monkeypatch)
    monkeypatch.setattr(run_labels, "MADE_AHEAD", 0)
    record = run(volume, output, checkpoint, dask_address, resume=True, **PLANAR_ONE_TILE_BLOCKS)
    assert record["stages"]["relabel"]["skipped_done"] == record["blocks"]["total"] == 27
    expected, _ = expected_labels(output, "2d")
    assert np.array_equal(zarr.open_array(str(output / "labels" / "cells" / "s0"), mode="r")[...], expected)


def test_a_resumed_run_sends_its_unfinished_blocks_before_its_merge_catches_up(
    volume: str, checkpoint: Path, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier attempt finished the first two slabs (planes) of blocks and not the third: the
    third's blocks are sent after the first slab is merged from the markers, not after both, and the
    second is merged between their results."""
    output = tmp_path / "out.ome.zarr"
    stop_after_the_blocks(volume, output, checkpoint, dask_address, monkeypatch)
    last_slab = range(18, 27)  # 9 blocks of one tile a plane
    for stage in ("predict", "contacts", "relabel"):
        for block in last_slab:
            (output / "_markers" / stage / f"{block}.marker").unlink()
    events: list[tuple[str, int]] = []
    real_take, real_add_slab = JobGraph.take, StreamingMerge.add_slab

    def take(graph: JobGraph, follow_up: bool) -> Any:
        job = real_take(graph, follow_up)
        if job is not None:
            events.append((job.stage, job.block_id))
        return job

    def add_slab(merge: StreamingMerge, *args: Any) -> Any:
        events.append(("slab", merge.next_slab))
        return real_add_slab(merge, *args)

    monkeypatch.setattr(JobGraph, "take", take)
    monkeypatch.setattr(StreamingMerge, "add_slab", add_slab)
    monkeypatch.setattr(run_labels, "CATCH_UP_SECONDS", 0.0)  # one slab a result while jobs are outstanding
    record = run(volume, output, checkpoint, dask_address, resume=True, **PLANAR_ONE_TILE_BLOCKS)
    first_sent = next(index for index, event in enumerate(events) if event[0] == "predict")
    assert events[:first_sent] == [("slab", 0)]  # slab 1 follows, between the results
    assert record["stages"]["predict"]["computed"] == record["stages"]["relabel"]["computed"] == 9
    expected, count = expected_labels(output, "2d")
    assert record["labels"]["objects"] == count
    for level in range(4):
        stored = zarr.open_array(str(output / "labels" / "cells" / f"s{level}"), mode="r")
        assert np.array_equal(stored[...], expected[:, :: 2**level, :: 2**level]), level


def test_an_object_spanning_every_block(volume: str, dask_address: str, tmp_path: Path) -> None:
    checkpoint = constant_checkpoint(tmp_path / "all.safetensors", foreground=True)
    output = tmp_path / "out.ome.zarr"
    record = run(volume, output, checkpoint, dask_address, **{"tiling.block_tiles": [1, 1]})
    assert record["labels"]["objects"] == 1
    assert (zarr.open_array(str(output / "labels" / "cells" / "s0"), mode="r")[...] == 1).all()


def test_zero_objects(volume: str, dask_address: str, tmp_path: Path) -> None:
    checkpoint = constant_checkpoint(tmp_path / "none.safetensors", foreground=False)
    output = tmp_path / "out.ome.zarr"
    record = run(volume, output, checkpoint, dask_address, **{"tiling.block_tiles": [2, 2]})
    assert record["labels"]["objects"] == 0
    assert not zarr.open_array(str(output / "labels" / "cells" / "s0"), mode="r")[...].any()


def test_min_size_drops_small_objects(
    volume: str, checkpoint: Path, dask_address: str, tmp_path: Path
) -> None:
    output = tmp_path / "out.ome.zarr"
    record = run(
        volume,
        output,
        checkpoint,
        dask_address,
        **{"tiling.block_tiles": [2, 2], "labels.min_size_voxels": 20},
    )
    labels, _ = expected_labels(output, "3d")
    sizes = np.bincount(labels.ravel())
    keep = np.nonzero(sizes >= 20)[0]
    keep = keep[keep > 0]
    table = np.zeros(sizes.size, np.uint32)
    table[keep] = np.arange(1, keep.size + 1)  # renumbered in raster order of first voxel
    assert record["labels"]["objects"] == keep.size
    assert np.array_equal(
        zarr.open_array(str(output / "labels" / "cells" / "s0"), mode="r")[...], table[labels]
    )


def test_labels_metadata_validates(volume: str, checkpoint: Path, dask_address: str, tmp_path: Path) -> None:
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    output = tmp_path / "out.ome.zarr"
    run(volume, output, checkpoint, dask_address, **{"tiling.block_tiles": [3, 3]})
    Image.from_zarr(zarr.open_group(str(output), mode="r"))
    Labels.from_zarr(zarr.open_group(str(output / "labels"), mode="r"))
    ImageLabel.from_zarr(zarr.open_group(str(output / "labels" / "cells"), mode="r"))
    assert not (output / "_scratch").exists() and not (output / "_markers").exists()


def test_relabel_starts_while_blocks_are_still_predicted(
    checkpoint: Path, dask_address: str, tmp_path: Path
) -> None:
    """24 slabs of one plane, labelled per plane: each slab's objects are numbered as it comes in,
    so relabel runs beside the network, not after its last block; the labels are the whole volume's."""
    shape = (24, 100, 100)
    source = write_volume(tmp_path / "tall.zarr", cell_image(shape, seed=3), (1, 100, 100))
    output = tmp_path / "out.ome.zarr"
    record = run(
        source, output, checkpoint, dask_address, **{"tiling.block_tiles": [1, 1], "labels.mode": "2d"}
    )
    stages = record["stages"]
    predicted = stages["predict"]["started_after_seconds"] + stages["predict"]["wall_seconds"]
    assert record["labels"]["merged"] == "slab by slab"
    assert stages["relabel"]["started_after_seconds"] < predicted
    expected, count = expected_labels(output, "2d")
    assert record["labels"]["objects"] == count > 100
    assert np.array_equal(zarr.open_array(str(output / "labels" / "cells" / "s0"), mode="r")[...], expected)
