"""The nightly report's rows: a run's own time, not its wait for the run before."""

from __future__ import annotations

from flows.nightly import _overall_rate
from flows.report import ReportRow, markdown_report, row_from_record


def record(wall: float, waited: float, pixels: int) -> dict[str, object]:
    return {
        "wall_seconds": wall,
        "setup_seconds": {"plan": 0.1, "the previous run's blocks": waited},
        "stages": {"predict": {"pixels": pixels}},
        "input": {"shape": [4, 1000, 1000]},
        "labels": {"objects": 1234},
    }


def test_a_row_leaves_out_the_wait_for_the_run_before() -> None:
    row = row_from_record("a", "segmented", "out/a.ome.zarr", record(30.0, 10.0, 20_000_000))
    assert row.seconds == 20.0 and row.mpix_per_second == 1.0
    alone = row_from_record(
        "b", "segmented", "out/b.ome.zarr", {**record(30.0, 0.0, 30_000_000), "setup_seconds": {}}
    )
    assert alone.seconds == 30.0 and alone.mpix_per_second == 1.0  # records of older runs have no such lap
    report = markdown_report("Nightly segmentation", [], [row, alone])
    assert "| a | 4 x 1000 x 1000 | 1,234 | 1.00 | 20.0 s | segmented | `out/a.ome.zarr` |" in report


def test_the_overall_rate_counts_tonight_s_runs_in_the_flow_s_time() -> None:
    rows = [
        row_from_record("a", "segmented", "a", record(30.0, 10.0, 20_000_000)),
        row_from_record("b", "resumed", "b", record(12.0, 2.0, 10_000_000)),
        row_from_record("c", "skipped", "c", record(99.0, 0.0, 99_000_000)),  # an earlier night's
        ReportRow("d", "failed", "d", "boom"),
    ]
    assert _overall_rate(rows, 15.0) == " (30.0 Mpix segmented: 2.00 Mpix/s overall)"
    assert _overall_rate(rows[2:], 15.0) == ""
