"""Output states, the nightly decision per output, previews, and `unet-pipeline status`."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from distributed import Client

from pipeline.checkpoint import load_checkpoint
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.lock import LOCK_NAME
from pipeline.omezarr import open_output, read_state, write_state
from pipeline.outputs import decide, read_output_status
from pipeline.preview import label_colours, outline_mask, render_preview
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import cell_image
from tests.conftest import write_small_setup, write_volume

SETTINGS = {
    "tiling": {"tile": 36, "shard_tiles": 2, "block_tiles": [2, 2]},
    "profile": {"batch_size": 4},
    "normalization_sample": {"regions": 2},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, dask_address: str) -> dict[str, Any]:
    """A complete output of a small volume, with its model and config."""
    root = tmp_path_factory.mktemp("outputs")
    model, config_path = write_small_setup(root, SETTINGS, seed=5)
    inputs = root / "in"
    inputs.mkdir()
    volume = write_volume(inputs / "done.zarr", cell_image((2, 150, 170), seed=2), (1, 64, 64))
    output = root / "out" / "done.ome.zarr"
    config = load_config(config_path)
    # a client that is not the default one, as a caller holding several clients passes it
    with Client(dask_address, set_as_default=False) as client:
        segment(SegmentRequest(volume, str(output), model, config, show_progress=False), client=client)
    return {
        "root": root,
        "model": model,
        "sha256": load_checkpoint(model).sha256,
        "config": config,
        "config_path": config_path,
        "output": output,
        "inputs": inputs,
    }


def copy_with(made: dict[str, Any], name: str, **last_run: Any) -> Path:
    """A copy of the complete output whose last run record says ``last_run`` (and is not complete)."""
    target = Path(made["output"]).with_name(name)
    shutil.copytree(made["output"], target)
    group = open_output(str(target), mode="r+")
    state = read_state(group)
    state["complete"] = False
    state["runs"][-1].update(last_run)
    write_state(group, state)
    return target


def test_complete_output_is_skipped_unless_model_or_output_config_changed(made: dict[str, Any]) -> None:
    status = read_output_status(str(made["output"]))
    assert status.state == "complete"
    assert decide(status, made["sha256"], made["config"]).action == "skip"
    more_workers = load_config(made["config_path"], {"cluster.workers": 7, "tiling.block_tiles": [4, 4]})
    assert decide(status, made["sha256"], more_workers).action == "skip"  # how work is split: same bits
    other_threshold = load_config(made["config_path"], {"labels.threshold": 0.7})
    assert decide(status, made["sha256"], other_threshold).action == "overwrite"
    other_model = decide(status, "0" * 64, made["config"])
    assert other_model.action == "overwrite" and made["sha256"][:12] in other_model.why


def test_interrupted_or_failed_outputs_resume_with_the_same_model_and_config(made: dict[str, Any]) -> None:
    partial = read_output_status(str(copy_with(made, "partial.ome.zarr", status="interrupted")))
    failed = read_output_status(
        str(copy_with(made, "failed.ome.zarr", status="failed", error="BlockFailedError: x"))
    )
    assert (partial.state, failed.state) == ("partial", "failed")
    for status in (partial, failed):
        assert decide(status, made["sha256"], made["config"]).action == "resume"
        assert decide(status, "0" * 64, made["config"]).action == "overwrite"
        other_blocks = load_config(made["config_path"], {"tiling.block_tiles": [4, 4]})
        assert decide(status, made["sha256"], other_blocks).action == "overwrite"  # markers are per block


def test_live_lock_means_running_and_foreign_stores_are_named(made: dict[str, Any], tmp_path: Path) -> None:
    locked = copy_with(made, "locked.ome.zarr", status="running")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {
            "host": __import__("socket").gethostname(),
            "pid": sleeper.pid,
            "run_id": "r1",
            "started": "t",
        }
        (locked / LOCK_NAME).write_text(json.dumps(lock))
        status = read_output_status(str(locked))
        assert status.state == "running"
        assert decide(status, made["sha256"], made["config"]).action == "wait"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert read_output_status(str(locked)).state == "partial"  # its process is gone: resumable
    zarr.open_group(str(tmp_path / "foreign.ome.zarr"), mode="w")
    foreign = read_output_status(str(tmp_path / "foreign.ome.zarr"))
    assert foreign.state == "foreign" and "not a unet-pipeline output" in str(foreign.problem)
    assert read_output_status(str(tmp_path / "missing.ome.zarr")).state == "missing"


def test_outline_mask_and_colours() -> None:
    labels = np.zeros((6, 7), dtype=np.uint32)
    labels[1:4, 1:4] = 3  # a 3 x 3 square: all but its centre is outline
    labels[1:4, 4:6] = 9  # touching it: the shared edge is outline on both sides
    outline = outline_mask(labels)
    assert not outline[2, 2] and outline[1, 1] and outline[2, 3] and outline[2, 4]
    assert outline.sum() == 8 + 6 and not outline[labels == 0].any()
    assert np.array_equal(label_colours(np.array([3, 9, 3])), label_colours(np.array([3, 9, 3])))
    assert not np.array_equal(label_colours(np.array([3])), label_colours(np.array([4])))


@pytest.mark.parametrize("max_pixels", [64, 100, 400])
def test_preview_outlines_sit_on_the_labels(made: dict[str, Any], max_pixels: int) -> None:
    picture = render_preview(str(made["output"]), max_pixels)
    height, width = 150, 170
    stride = math.ceil(max(height, width) / max(picture.shape[:2]))
    assert max(picture.shape[:2]) <= max_pixels and picture.shape[2] == 3
    assert picture.shape[:2] == (math.ceil(height / stride), math.ceil(width / stride))
    labels = np.asarray(zarr.open_array(f"{made['output']}/labels/cells/s0", mode="r")[1, ::stride, ::stride])
    outline = outline_mask(labels)
    assert outline.any()
    assert np.array_equal(picture[outline], label_colours(labels[outline]))
    grey = picture[~outline]
    assert np.array_equal(grey[:, 0], grey[:, 1]) and np.array_equal(grey[:, 1], grey[:, 2])


def test_status_lists_complete_failed_partial_pending_and_waiting(
    made: dict[str, Any], tmp_path: Path
) -> None:
    copy_with(made, "broken.ome.zarr", status="failed", error="BlockFailedError: block 3 failed")
    copy_with(made, "halfway.ome.zarr", status="interrupted")
    write_volume(made["inputs"] / "new.zarr", np.zeros((20, 20), np.uint8), (10, 10))
    (made["inputs"] / "new.zarr.ready").touch()
    write_volume(made["inputs"] / "writing.zarr", np.zeros((20, 20), np.uint8), (10, 10))
    out_root = made["output"].parent
    result = CliRunner().invoke(cli, ["status", str(out_root), "--input-root", str(made["inputs"])])
    assert result.exit_code == 0, result.output
    states = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[1:]}
    assert {name: states.get(name) for name in ("done", "broken", "halfway", "new", "writing")} == {
        "done": "complete",
        "broken": "failed",
        "halfway": "partial",
        "new": "pending",
        "writing": "waiting",
    }
    assert "block 3 failed" in result.output and "the next run resumes it" in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["status", str(out_root), "--json"]).output)
    assert {row["name"]: row["state"] for row in as_json["acquisitions"]}["broken"] == "failed"
    missing = CliRunner().invoke(cli, ["status", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output
