from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import RunConfig, load_config
from pipeline.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_spells_out_the_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.yaml") == RunConfig() == load_config()


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"tiling": {"shard_tile": 2}}))
    with pytest.raises(InputError, match=r"invalid config .*run\.yaml: unknown key 'tiling\.shard_tile'"):
        load_config(path)


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("profile:\n  threads: 0\n")
    with pytest.raises(InputError, match=r"'profile\.threads'.*greater than or equal to 1.*got 0"):
        load_config(path)


def test_blocks_must_be_whole_shards() -> None:
    with pytest.raises(
        InputError, match=r"block_tiles \[2, 3\] must be positive multiples of shard_tiles \(2\)"
    ):
        load_config(overrides={"tiling.shard_tiles": 2, "tiling.block_tiles": [2, 3]})


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("cluster:\n  workers: 3\nprofile:\n  batch_size: 4\n")
    config = load_config(path, {"cluster.workers": 5})
    assert config.cluster.workers == 5
    assert config.profile.batch_size == 4


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)


def test_output_hash_ignores_how_work_is_split() -> None:
    base = load_config()
    split = load_config(overrides={"tiling.block_tiles": [8, 8], "cluster.workers": 7, "retries": 0})
    assert base.output_hash() == split.output_hash()
    assert base.output_hash() != load_config(overrides={"profile.batch_size": 4}).output_hash()


def test_precision_follows_the_device_unless_given() -> None:
    assert load_config().profile.dtype == "float32"
    assert load_config(overrides={"profile.device": "cuda"}).profile.dtype == "bfloat16"
    assert (
        load_config(overrides={"profile.device": "cuda", "profile.dtype": "float32"}).profile.dtype
        == "float32"
    )


def test_batch_size_is_a_positive_count_or_auto() -> None:
    assert load_config(overrides={"profile.batch_size": "auto"}).profile.batch_size == "auto"
    with pytest.raises(InputError, match="batch_size"):
        load_config(overrides={"profile.batch_size": 0})
    with pytest.raises(InputError, match="batch_size"):
        load_config(overrides={"profile.batch_size": "many"})
