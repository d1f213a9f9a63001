"""cluster.mps: an NVIDIA MPS control daemon for the workers of a cluster the run starts.

No GPU here, so NVIDIA's control program is stood in for by a script on PATH that logs how it was
called, and the GPU check of a cuda run (which fails without a GPU) by reading the workers'
environment: what is checked is the daemon's lifetime and what the workers see, not MPS itself
(measured on an H100: docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from pipeline import cluster, mps
from pipeline.cluster import cluster_shape, open_client
from pipeline.config import ClusterConfig
from pipeline.errors import InputError, PipelineError
from pipeline.mps import CONTROL, PIPE

CONFIG = ClusterConfig(workers=2, threads_per_worker=1, memory_limit="1GiB", mps=True)


def stand_in_control(folder: Path, exit_code: int = 0, message: str = "", body: str | None = None) -> Path:
    """A program named like NVIDIA's MPS control that appends each call (arguments, pipe folder,
    input) to calls.log in ``folder``, or runs ``body`` instead."""
    folder.mkdir(exist_ok=True)
    program = folder / CONTROL
    program.write_text(
        "#!/bin/sh\n"
        + (
            body
            or 'input=""; [ "$#" -eq 0 ] && input=$(cat)\n'
            f'echo "args=$* pipe=${PIPE} input=$input" >> "{folder}/calls.log"\n'
            f'echo "{message}" >&2\n'
            f"exit {exit_code}\n"
        )
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return folder / "calls.log"


def control_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str | None]]:
    """The stand-in control program first on PATH, no daemon of an operator's: its calls log, and
    what each worker of the next cluster sees (:func:`workers_environment`)."""
    calls = stand_in_control(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(PIPE, raising=False)
    return calls, workers_environment(monkeypatch)


def workers_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """The GPU check of a cuda run replaced by a record of each worker's MPS pipe folder."""
    seen: dict[str, str | None] = {}
    monkeypatch.setattr(
        cluster,
        "check_workers_have_gpus",
        lambda client: seen.update(client.run(lambda: os.environ.get(PIPE))),
    )
    return seen


def test_the_workers_run_under_a_daemon_started_for_the_cluster_and_quit_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, seen = control_on_path(tmp_path, monkeypatch)
    with open_client(CONFIG, device="cuda", forward_logs=False) as client:
        started = calls.read_text().splitlines()
        assert cluster_shape(client)["workers_under_mps"] == 2  # the run record says so
    pipes = set(seen.values())
    assert len(seen) == 2 and len(pipes) == 1
    pipe = pipes.pop()
    assert pipe is not None and pipe.endswith("pipe")
    assert started == [f"args=-d pipe={pipe} input="]
    assert calls.read_text().splitlines()[1:] == [f"args= pipe={pipe} input=quit"]
    assert not Path(pipe).exists()  # the daemon's folder goes with it


def test_an_operators_daemon_is_used_and_a_cpu_run_starts_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = stand_in_control(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(PIPE, str(tmp_path / "operators-pipe"))
    seen = workers_environment(monkeypatch)
    with open_client(CONFIG, device="cuda", forward_logs=False):
        pass
    assert set(seen.values()) == {str(tmp_path / "operators-pipe")}
    monkeypatch.delenv(PIPE)
    with open_client(CONFIG, device="cpu", forward_logs=False) as client:
        assert set(client.run(lambda: os.environ.get(PIPE)).values()) == {None}
        assert cluster_shape(client)["workers_under_mps"] == 0
    assert not calls.exists()


def test_no_control_program_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(PIPE, raising=False)
    refused = pytest.raises(InputError, match=f"cluster.mps is on, but {CONTROL} is not on PATH")
    with refused, open_client(CONFIG, device="cuda", forward_logs=False):
        pass


def test_a_daemon_that_does_not_start_is_named_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in_control(tmp_path / "bin", exit_code=1, message="An instance of this daemon is already running")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(PIPE, raising=False)
    refused = pytest.raises(PipelineError, match="exited 1: An instance of this daemon is already running")
    with refused, open_client(CONFIG, device="cuda", forward_logs=False):
        pass


def test_mps_for_workers_started_elsewhere_is_refused() -> None:
    config = ClusterConfig(address="tcp://127.0.0.1:1", mps=True)
    refused = pytest.raises(
        InputError, match="cluster.mps starts MPS for the workers of a cluster this run starts"
    )
    with refused, open_client(config, device="cuda", forward_logs=False):
        pass


def test_a_control_program_that_does_not_answer_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in_control(tmp_path / "bin", body="exec sleep 20\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(PIPE, raising=False)
    monkeypatch.setattr(mps, "CONTROL_SECONDS", 1)
    refused = pytest.raises(PipelineError, match=f"{CONTROL} -d exited -1: no answer in 1 s")
    with refused, open_client(CONFIG, device="cuda", forward_logs=False):
        pass


AUTO = ClusterConfig(workers=2, threads_per_worker=1, memory_limit="1GiB")  # cluster.mps: auto


def test_auto_starts_a_daemon_where_workers_share_a_gpu_and_none_for_one_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, seen = control_on_path(tmp_path, monkeypatch)
    assert AUTO.mps == "auto"
    with open_client(AUTO, device="cuda", forward_logs=False) as client:
        assert cluster_shape(client)["workers_under_mps"] == 2
    assert len(set(seen.values())) == 1 and None not in seen.values()
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["args=-d", "args="]
    calls.unlink()
    seen.clear()
    with open_client(AUTO.model_copy(update={"workers": 1}), device="cuda", forward_logs=False):
        pass
    assert list(seen.values()) == [None] and not calls.exists()


def test_auto_without_the_control_program_or_with_a_failing_daemon_goes_on_without_mps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.mps")
    monkeypatch.delenv(PIPE, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    seen = workers_environment(monkeypatch)
    with open_client(AUTO, device="cuda", forward_logs=False):
        pass
    assert set(seen.values()) == {None}
    assert f"cluster.mps auto: {CONTROL} is not on PATH" in caplog.text
    stand_in_control(tmp_path / "bin", exit_code=1, message="An instance of this daemon is already running")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    seen.clear()
    with open_client(AUTO, device="cuda", forward_logs=False):
        pass
    assert set(seen.values()) == {None}
    assert "the workers share the GPU without MPS" in caplog.text
    assert "exited 1: An instance of this daemon is already running" in caplog.text


def test_auto_leaves_workers_started_elsewhere_and_cpu_runs_alone() -> None:
    for device, starts_workers in (("cuda", False), ("cpu", True)):
        with mps.cluster_mps(
            "auto", device=device, starts_workers=starts_workers, gpu_shared=True, address="tcp://127.0.0.1:1"
        ) as environment:
            assert environment == {}
