"""`unet-pipeline bench` on CPU: every profile measured next to the naive one, end to end, agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner, Result

from pipeline.bench import batch_seconds_vs_alone, table, usable_cores
from pipeline.bench_model import NAIVE, BenchSettings, profiles
from pipeline.cli import cli
from pipeline.cpu_time import ROLES

REPOSITORY = Path(__file__).resolve().parent.parent


def test_the_naive_profile_comes_first_and_no_profile_twice() -> None:
    found = profiles(BenchSettings(dtypes=("fp32", "bf16"), batch_sizes=(1, 4), compile=True))
    assert found[0] == NAIVE
    assert len(found) == len(set(found)) == 2 * 2 * 2 * 2


TINY = ["--base-channels", "2", "--depth", "3", "--tile", "36", "--seconds", "0.2", "--threads", "1"]


def bench_tiny(folder: Path, *args: str) -> tuple[Result, dict[str, Any]]:
    """`bench` of a tiny network (tiles of 36 px): its output and its JSON report."""
    out = folder / "bench.json"
    result = CliRunner().invoke(cli, ["bench", *TINY, *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return result, json.loads(out.read_text())


def test_bench_reports_model_only_end_to_end_and_agreement(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.svg"
    args = ["--batch-sizes", "1,2", "--e2e-shape", "1x200x200", "--timeline", str(timeline)]
    result, report = bench_tiny(tmp_path, *args)
    rows = report["model_only"]
    assert rows[0]["profile"] == "fp32 NCHW eager b1" and rows[0]["speedup_vs_naive"] == 1.0
    assert {row["profile"] for row in rows} >= {"bf16 channels_last eager b2", "fp32 channels_last eager b1"}
    assert all(row["mpix_per_second"] > 0 and row["passes"] >= 2 for row in rows)
    e2e = report["end_to_end"]
    assert e2e["shape"] == [1, 200, 200] and e2e["mpix_per_second"] > 0
    before, after = e2e["model_only_before_and_after"]  # the reference profile, measured around the run
    assert before == max(row["mpix_per_second"] for row in rows) and after > 0  # the fastest (eager)
    assert e2e["model_only_mpix_per_second"] == pytest.approx((before + after) / 2, abs=1e-3)
    end_to_end = 200 * 200 / e2e["wall_seconds"] / 1e6  # from the least rounded figures
    assert e2e["fraction_of_model_only"] == pytest.approx(end_to_end / ((before + after) / 2), abs=6e-4)
    assert e2e["cold_mpix_per_second"] < e2e["mpix_per_second"] and e2e["cluster_start_seconds"] > 0
    # the timed run came second on its cluster: a one-block acquisition loaded the model first
    assert e2e["warm_up_acquisition_seconds"] > 0 and "after a one-block acquisition of" in result.output
    assert set(e2e["predict_worker_seconds"]) >= {"read", "normalise", "predict", "write", "label"}
    # the task thread's own CPU in each section: never more than the section's wall (a clock tick of slack)
    assert set(e2e["predict_worker_cpu_seconds"]) == set(e2e["predict_worker_seconds"])
    assert all(
        0 <= e2e["predict_worker_cpu_seconds"][name] <= seconds + 0.011
        for name, seconds in e2e["predict_worker_seconds"].items()
    )
    assert "predict tasks, seconds summed over blocks (the task thread's CPU): model" in result.output
    # the run's wall is the time before the first block, the predict stage, and the time after its last
    head, tail = e2e["before_first_block_seconds"], e2e["after_last_block_seconds"]
    assert head > 0 and tail > 0  # the set-up, and relabel with the pyramids' last levels
    assert head + e2e["stage_wall_seconds"]["predict"] + tail == pytest.approx(e2e["wall_seconds"], abs=2e-3)
    cpu = e2e["cpu_seconds"]
    # a run this small can stay under one clock tick in a role (tests/test_cpu_time.py counts one)
    assert set(cpu) == {*ROLES, "driver (scheduler, client, merge)"} and sum(cpu.values()) > 0
    kernel = e2e["cpu_system_seconds"]  # the workers' part in the kernel, never more than their CPU time
    assert set(kernel) == set(ROLES) and all(0 <= kernel[role] <= cpu[role] + 0.011 for role in ROLES)
    host = sum(seconds for role, seconds in cpu.items() if role != "network")
    assert e2e["host_cpu_seconds_per_mpix"] == pytest.approx(host / 0.04, abs=1e-3)  # 200 x 200 px
    assert e2e["host_cores_at_model_only_rate"] == pytest.approx(
        e2e["host_cpu_seconds_per_mpix"] * e2e["model_only_mpix_per_second"], rel=0.01, abs=0.01
    )
    ceiling = e2e["shared_cores_ceiling"]  # all of the run's CPU time spread over all the cores, at best
    most = 0.04 * usable_cores() / sum(cpu.values()) / e2e["model_only_mpix_per_second"]
    assert ceiling == pytest.approx(min(1, most), abs=2e-3)
    assert (f"end to end at most {ceiling:.0%} of model-only here" in result.output) == (ceiling < 1)
    assert {"fill_seconds", "h2d_seconds", "compute_seconds", "d2h_seconds"} <= set(e2e["device_batcher"])
    assert e2e["device_batcher"]["windows"] == 36  # 200 x 200 px in 36 px tiles: 6 x 6
    assert e2e["batch_seconds_vs_alone"] > 0
    agreement = report["agreement"]
    assert 0.0 <= agreement["max_abs_probability_difference"] < 1.0
    assert 0.9 <= agreement["foreground_voxels_equal"] <= 1.0
    assert report["machine"]["torch"] and "fp32 NCHW eager b1" in result.output
    # the picture of the timed run: its predict tasks (the warm-up acquisition's not among them)
    drawn = ElementTree.parse(timeline).getroot()
    stages = {rect.get("data-stage") for rect in drawn.iter("{http://www.w3.org/2000/svg}rect")}
    assert {"predict", "contacts", "relabel"} <= stages and f"wrote {timeline}" in result.output
    assert "segment 1x200x200 on cpu" in "".join(drawn.itertext())


def test_the_end_to_end_profile_can_be_chosen_and_the_first_acquisition_timed(tmp_path: Path) -> None:
    args = ["--profiles", "fp32:cl:eager:1", "--e2e-profile", "fp32:nchw:eager:2", "--no-warm-up"]
    result, report = bench_tiny(tmp_path, *args, "--e2e-shape", "1x100x100")
    rows = {row["profile"]: row for row in report["model_only"]}
    assert list(rows) == ["fp32 NCHW eager b1", "fp32 channels_last eager b1", "fp32 NCHW eager b2"]
    e2e = report["end_to_end"]
    assert e2e["profile"] == "fp32 NCHW eager b2"  # asked for, whichever was fastest
    assert e2e["model_only_before_and_after"][0] == rows["fp32 NCHW eager b2"]["mpix_per_second"]
    assert e2e["warm_up_acquisition_seconds"] is None and "one-block acquisition" not in result.output


def test_a_compiled_profile_runs_end_to_end(tmp_path: Path) -> None:
    """The workers compile in their warm-up; the bench waits for every worker's before its clock."""
    _, report = bench_tiny(
        tmp_path,
        "--profiles",
        "fp32:cl:eager:2",
        "--e2e-profile",
        "fp32:cl:compiled:2",
        "--e2e-shape",
        "1x100x100",
    )
    e2e = report["end_to_end"]
    assert e2e["profile"] == "fp32 channels_last compiled b2" and e2e["warm_up_acquisition_seconds"] > 0
    assert e2e["device_batcher"]["windows"] == 9  # 100 x 100 px in 36 px tiles: 3 x 3, the timed run's only


def test_an_unknown_precision_is_refused() -> None:
    result = CliRunner().invoke(cli, ["bench", "--dtypes", "fp32,int4", "--no-e2e"])
    assert result.exit_code == 2
    assert "--dtypes: unknown int4" in result.output


def test_demo_weights_need_at_least_the_demo_models_width() -> None:
    result = CliRunner().invoke(cli, ["bench", "--base-channels", "4", "--e2e-weights", "demo"])
    assert result.exit_code == 2
    assert "the demo model has 8 base channels" in result.output


def test_a_gpu_shared_by_worker_processes_is_pointed_out() -> None:
    """The H100 run of docs/gpu-2026-11-27b: 8 workers, batches at 6.5x their model-only time."""
    report = json.loads((REPOSITORY / "docs/gpu-2026-11-27b/bench-gpu-e2e.json").read_text())
    best = next(row for row in report["model_only"] if row["profile"] == report["end_to_end"]["profile"])
    report["end_to_end"]["batch_seconds_vs_alone"] = batch_seconds_vs_alone(
        report["end_to_end"]["device_batcher"], best
    )
    assert report["end_to_end"]["batch_seconds_vs_alone"] == 6.47
    assert "8 worker processes shared the GPU, each with a CUDA context of its own" in table(report)
    report["end_to_end"]["mps"] = True
    assert table(report).splitlines()[-1].endswith("shared the GPU, under MPS")
    report["settings"]["device"] = "cpu"
    assert "shared the GPU" not in table(report)
