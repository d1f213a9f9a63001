"""Nobody let in, nothing told: local services on 127.0.0.1, no secrets in records or logs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.cluster import open_client
from pipeline.config import ClusterConfig
from pipeline.synthetic import cell_image
from tests.conftest import write_small_setup, write_volume

SECRET = "FAKE-SECRET-6c1e9a"


def test_the_local_cluster_and_its_dashboard_listen_on_loopback_only() -> None:
    with open_client(ClusterConfig(workers=1, dashboard=True), forward_logs=False) as client:
        info = client.scheduler_info(n_workers=-1)
        assert urlparse(info["address"]).hostname == "127.0.0.1"
        assert all(urlparse(address).hostname == "127.0.0.1" for address in info["workers"])
        assert urlparse(client.dashboard_link).hostname == "127.0.0.1"


def test_run_records_and_logs_hold_no_secrets(
    tmp_path: Path, dask_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_SECRET_ACCESS_KEY", "PREFECT_API_KEY", "HF_TOKEN", "DATABASE_PASSWORD"):
        monkeypatch.setenv(name, SECRET)
    settings = {
        "tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [2, 2]},
        "cluster": {"address": dask_address},
    }
    checkpoint, written_config = write_small_setup(tmp_path, settings, seed=3)
    folder = tmp_path / f"configs-{SECRET}"  # a secret in the config's path, as some vaults make them
    folder.mkdir()
    config = written_config.rename(folder / "run.yaml")
    source = write_volume(tmp_path / "in.zarr", cell_image((1, 100, 90), seed=2), (1, 64, 64))
    output = tmp_path / "out.ome.zarr"
    args = [
        "segment",
        source,
        str(output),
        "--model",
        str(checkpoint),
        "--config",
        str(config),
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = (output / "zarr.json").read_text()
    assert '"environment"' in record and yaml.safe_load(record)["attributes"]["unet_pipeline"]["complete"]
    written = [path for path in output.rglob("*") if path.is_file() and path.suffix in (".json", ".log")]
    assert any(path.suffix == ".log" for path in written)
    for path in written:
        assert SECRET not in path.read_text(errors="replace"), path
    inspected = CliRunner().invoke(cli, ["inspect", str(output), "--json"]).output
    assert SECRET not in inspected
