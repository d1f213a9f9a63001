"""`unet-pipeline segment` and `inspect` as a user runs them: exit codes, messages, nothing lost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.synthetic import cell_image
from tests.conftest import write_volume


def tree_digest(root: Path) -> str:
    """Names and bytes of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def small_volume(tmp_path: Path) -> Path:
    return Path(write_volume(tmp_path / "in.zarr", cell_image((2, 300, 400), seed=4), (1, 128, 128)))


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_segment_then_inspect(
    small_volume: Path, narrow_checkpoint: Path, dask_address: str, tmp_path: Path
) -> None:
    before = tree_digest(small_volume)
    output = tmp_path / "out.ome.zarr"
    code, text = invoke(
        "segment",
        str(small_volume),
        str(output),
        "--model",
        str(narrow_checkpoint),
        "--cluster",
        dask_address,
        "--block-tiles",
        "4",
        "--no-progress",
    )
    assert code == 0, text
    assert "segmented" in text and "Mpix/s" in text
    assert tree_digest(small_volume) == before  # the input is never modified
    code, text = invoke("inspect", str(output))
    assert code == 0
    assert "complete, 1 run(s)" in text and "blocks     2/2" in text
    code, text = invoke("inspect", str(output), "--json")
    assert json.loads(text)["runs"][0]["status"] == "complete"

    code, text = invoke("segment", str(small_volume), str(output), "--model", str(narrow_checkpoint))
    assert code == 2
    assert "already exists; pass --resume to continue it or --overwrite to replace it" in text


def _refused(args: list[str], message: str, tmp_path: Path) -> None:
    before = {p for p in tmp_path.rglob("*")}
    code, text = invoke("segment", *args)
    assert code == 2, text
    assert message in text
    assert "Traceback" not in text
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written


def test_missing_input(narrow_checkpoint: Path, tmp_path: Path) -> None:
    _refused(
        [str(tmp_path / "absent.zarr"), str(tmp_path / "out.zarr"), "--model", str(narrow_checkpoint)],
        "no input at",
        tmp_path,
    )


def test_unsupported_dtype(narrow_checkpoint: Path, tmp_path: Path) -> None:
    source = write_volume(tmp_path / "int.zarr", np.zeros((20, 20), np.int64), (10, 10))
    _refused(
        [source, str(tmp_path / "out.zarr"), "--model", str(narrow_checkpoint)],
        "unsupported dtype int64",
        tmp_path,
    )


def test_output_inside_input(small_volume: Path, narrow_checkpoint: Path, tmp_path: Path) -> None:
    _refused(
        [str(small_volume), str(small_volume / "seg.zarr"), "--model", str(narrow_checkpoint)],
        "overlaps input",
        tmp_path,
    )


def test_missing_checkpoint(small_volume: Path, tmp_path: Path) -> None:
    _refused(
        [str(small_volume), str(tmp_path / "out.zarr"), "--model", str(tmp_path / "absent.safetensors")],
        "no checkpoint at",
        tmp_path,
    )


def test_existing_output_that_is_not_ours_survives_overwrite(
    small_volume: Path, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    code, text = invoke(
        "segment", str(small_volume), str(precious), "--model", str(narrow_checkpoint), "--overwrite"
    )
    assert code == 2
    assert "not a unet-pipeline output" in text
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_block_tiles_must_be_whole_shards(
    small_volume: Path, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    _refused(
        [
            str(small_volume),
            str(tmp_path / "out.zarr"),
            "--model",
            str(narrow_checkpoint),
            "--block-tiles",
            "3",
        ],
        "must be positive multiples of shard_tiles (4)",
        tmp_path,
    )
