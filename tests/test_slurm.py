"""``--cluster slurm:FILE``: what can be checked without SLURM (no sbatch here).

The example file loads, and the job script dask-jobqueue renders from it
asks for one task, one GPU and the file's CPUs and memory, and starts one
worker with one Dask thread; a run where sbatch is missing is refused
before anything is written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.slurm import load_slurm_settings, new_cluster
from tests.conftest import write_volume

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "cluster-slurm.yaml"


def test_the_example_renders_one_worker_with_one_gpu_per_job() -> None:
    settings = load_slurm_settings(EXAMPLE)
    with new_cluster(settings) as cluster:
        script = cluster.job_script()
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH -n 1" in header
    assert f"#SBATCH {settings.gpu_directive}" in header and settings.gpu_directive == "--gres=gpu:1"
    assert f"#SBATCH --cpus-per-task={settings.cpus_per_job}" in header
    assert f"#SBATCH -p {settings.queue}" in header and f"#SBATCH -t {settings.walltime}" in header
    assert any(line.startswith("#SBATCH --mem=") for line in header)
    worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--nthreads 2" in worker and "--nworkers" not in worker  # two blocks at a time, one process
    assert cluster.scheduler_address.split(":")[-1] in worker  # it joins the driver's scheduler
    environment = script.split(worker)[0]  # what comes before the worker
    for line in settings.prologue:
        assert line in environment
    assert "export MALLOC_TRIM_THRESHOLD_=1073741824" in environment
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in environment
    assert "export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=500ms" in environment


def test_the_cli_prints_the_environment_for_workers_started_by_hand() -> None:
    result = CliRunner().invoke(cli, ["cluster", "worker-env"])
    assert result.exit_code == 0, result.output
    assert "export MALLOC_MMAP_THRESHOLD_=1073741824" in result.output.splitlines()
    read = "import dask, distributed; c = dask.config.get; "
    read += "print(c('distributed.admin.tick.interval'), c('distributed.worker.profile.enabled'))"
    shown = subprocess.run(
        ["bash", "-c", f'{result.output}\nexec "$0" -c "{read}"', sys.executable],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.split() == ["500ms", "False"]  # what a worker's Dask reads from them


def test_the_cli_prints_the_job_script() -> None:
    result = CliRunner().invoke(cli, ["cluster", "job-script", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "#SBATCH --gres=gpu:1" in result.output


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "slurm.yaml"
    bad.write_text("jobs: 2\ngpus: 4\n")
    with pytest.raises(InputError, match=rf"invalid config {bad}: unknown key 'gpus'"):
        load_slurm_settings(bad)


def test_the_address_form_is_accepted_and_an_empty_file_name_is_not() -> None:
    assert load_config(overrides={"cluster.address": f"slurm:{EXAMPLE}"}).cluster.address.endswith(".yaml")
    with pytest.raises(InputError, match="slurm:FILE"):
        load_config(overrides={"cluster.address": "slurm:"})


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="this machine has SLURM")
def test_without_sbatch_the_run_is_refused_before_writing(tmp_path: Path, narrow_checkpoint: Path) -> None:
    source = write_volume(tmp_path / "in.zarr", np.zeros((40, 40), np.uint16), (40, 40))
    output = tmp_path / "out.ome.zarr"
    args = [source, str(output), "--model", str(narrow_checkpoint), "--cluster", f"slurm:{EXAMPLE}"]
    result = CliRunner().invoke(cli, ["segment", *args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "submits workers with sbatch, which is not on this machine's PATH" in result.output
    assert not output.exists()
