"""Discovery of acquisitions: formats, readiness (marker or quiet period), names, refusals."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.acquisitions import check_roots, discover_acquisitions
from pipeline.config import load_nightly_config
from pipeline.errors import InputError

QUIET = 600.0


def make_zarr(path: Path, zarr_format: int = 3, chunks: tuple[int, int] = (8, 8)) -> Path:
    array = zarr.open_array(
        str(path), mode="w", shape=(16, 16), chunks=chunks, dtype="uint8", zarr_format=zarr_format
    )
    array[...] = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return path


def age(path: Path, seconds: float) -> None:
    """Set the modification time of ``path`` and everything under it to ``seconds`` ago."""
    stamp = time.time() - seconds
    for folder, _, files in os.walk(path):
        for name in files:
            os.utime(Path(folder) / name, (stamp, stamp))
        os.utime(folder, (stamp, stamp))
    os.utime(path, (stamp, stamp))


def by_name(root: Path) -> dict[str, tuple[bool, str]]:
    return {a.name: (a.ready, a.why) for a in discover_acquisitions(root, quiet_seconds=QUIET)}


def test_formats_names_and_nesting(tmp_path: Path) -> None:
    make_zarr(tmp_path / "a.zarr")
    make_zarr(tmp_path / "b.ome.zarr", zarr_format=2)
    (tmp_path / "day2").mkdir()
    make_zarr(tmp_path / "day2" / "c.zarr")
    (tmp_path / "d.ome.tif").write_bytes(b"II*\x00")
    (tmp_path / "notes.txt").write_text("not an acquisition")
    (tmp_path / ".hidden.zarr").mkdir()
    age(tmp_path, 2 * QUIET)
    found = discover_acquisitions(tmp_path, quiet_seconds=QUIET)
    assert [(a.name, a.kind, a.output_name) for a in found] == [
        ("a", "zarr", "a.ome.zarr"),
        ("b", "zarr", "b.ome.zarr"),
        ("d", "tiff", "d.ome.zarr"),
        ("day2/c", "zarr", "day2/c.ome.zarr"),
    ]
    assert all(a.ready and a.why.startswith("unchanged for") for a in found)


def test_recent_metadata_waits_and_a_marker_makes_it_ready(tmp_path: Path) -> None:
    make_zarr(tmp_path / "fresh.zarr")
    (tmp_path / "scan.tif").write_bytes(b"II*\x00")
    for name in ("fresh", "scan"):
        ready, why = by_name(tmp_path)[name]
        assert not ready and "ready marker" in why and "ago" in why
    (tmp_path / "fresh.zarr.ready").touch()
    (tmp_path / "scan.tif.ready").touch()
    assert by_name(tmp_path) == {
        "fresh": (True, "ready marker fresh.zarr.ready"),
        "scan": (True, "ready marker scan.tif.ready"),
    }


def test_two_acquisitions_for_one_output_are_refused(tmp_path: Path) -> None:
    make_zarr(tmp_path / "same.zarr")
    (tmp_path / "same.tif").write_bytes(b"II*\x00")
    (tmp_path / "same.zarr.ready").touch()
    (tmp_path / "same.tif.ready").touch()
    found = discover_acquisitions(tmp_path, quiet_seconds=QUIET)
    assert [(a.path.name, a.ready) for a in found] == [("same.tif", False), ("same.zarr", False)]
    assert "would also be written by same.zarr" in found[0].why
    assert "would also be written by same.tif" in found[1].why


def test_marker_inside_a_zarr_folder(tmp_path: Path) -> None:
    make_zarr(tmp_path / "inside.zarr")
    (tmp_path / "inside.zarr" / ".ready").touch()
    assert by_name(tmp_path)["inside"] == (True, "ready marker .ready")


def test_half_written_zarr_without_metadata_waits(tmp_path: Path) -> None:
    (tmp_path / "half.zarr" / "c").mkdir(parents=True)
    age(tmp_path, 2 * QUIET)
    ready, why = by_name(tmp_path)["half"]
    assert not ready and "no Zarr metadata" in why


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_new_chunk_resets_the_quiet_period(tmp_path: Path, zarr_format: int) -> None:
    """A writer adding chunks changes a watched folder's time, without us listing the chunks."""
    make_zarr(tmp_path / "growing.zarr", zarr_format)
    age(tmp_path, 2 * QUIET)
    assert by_name(tmp_path)["growing"][0]
    array = zarr.open_array(str(tmp_path / "growing.zarr"), mode="r+")
    array.resize((24, 16))
    array[16:24] = 7
    assert not by_name(tmp_path)["growing"][0]


def test_group_children_metadata_is_watched(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "multi.ome.zarr"), mode="w")
    group.create_array("s0", shape=(16, 16), chunks=(8, 8), dtype="uint8")
    age(tmp_path, 2 * QUIET)
    assert by_name(tmp_path)["multi"][0]
    group.create_array("s1", shape=(8, 8), chunks=(8, 8), dtype="uint8")
    assert not by_name(tmp_path)["multi"][0]


def test_missing_input_root_and_overlapping_roots(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a folder"):
        discover_acquisitions(tmp_path / "nope", quiet_seconds=QUIET)
    with pytest.raises(InputError, match="overlap"):
        check_roots(tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="overlap"):
        check_roots(tmp_path / "in", tmp_path / "in")
    check_roots(tmp_path / "in", tmp_path / "out")


@pytest.mark.parametrize(
    ("input_root", "output_root", "overlap"),
    [
        ("s3://lab/incoming", "s3://lab/segmentations", False),
        ("s3://lab/in", "s3://lab/incoming/out", False),  # a shared name start is not nesting
        ("s3://lab/incoming", "s3://lab/incoming/segmentations/", True),
        ("s3://lab/incoming/day1", "s3a://lab/incoming", True),
        ("s3://lab", "s3://lab/segmentations", True),
        ("s3://lab/x", "s3://lab/x/", True),
        ("s3://microscope/x", "s3://segmentations/x", False),
    ],
)
def test_bucket_prefixes_overlap_only_when_one_holds_the_other(
    input_root: str, output_root: str, overlap: bool
) -> None:
    if overlap:
        with pytest.raises(InputError, match="overlap"):
            check_roots(input_root, output_root)
    else:
        check_roots(input_root, output_root)


def test_nightly_roots_are_urls_or_resolved_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = {"model": "m.safetensors"}
    local = load_nightly_config(None, {**settings, "input_root": "in", "output_root": "out/"}).absolute()
    assert (local.input_root, local.output_root) == (tmp_path / "in", tmp_path / "out")
    assert local.model == tmp_path / "m.safetensors"
    remote = load_nightly_config(
        None, {**settings, "input_root": "s3://lab/in/", "output_root": "s3://lab/out"}
    ).absolute()
    assert (remote.input_root, remote.output_root) == ("s3://lab/in", "s3://lab/out")
    check_roots(tmp_path / "in", "s3://lab/in")  # a folder and a bucket prefix never overlap


def test_links_that_leave_the_input_root_are_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    make_zarr(elsewhere / "secret.zarr")
    make_zarr(root / "own.zarr")
    (root / "shared").mkdir()
    make_zarr(root / "shared" / "inner.zarr")
    (root / "escape.zarr").symlink_to(elsewhere / "secret.zarr")
    (root / "escape-folder").symlink_to(elsewhere)
    (root / "alias.zarr").symlink_to(root / "shared" / "inner.zarr")  # a link that stays inside is fine
    age(tmp_path, 2 * QUIET)
    with caplog.at_level("WARNING", logger="pipeline.acquisitions"):
        names = sorted(by_name(root))
    assert names == ["alias", "own", "shared/inner"]
    assert sum("outside the input root" in record.getMessage() for record in caplog.records) == 2
