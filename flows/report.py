"""The nightly report: one row per acquisition, as a markdown table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

COLUMNS = ("acquisition", "shape", "objects", "Mpix/s", "duration", "status", "output")


@dataclass(frozen=True, slots=True)
class ReportRow:
    acquisition: str
    status: str  # segmented | resumed | re-segmented | skipped | waiting | failed | cancelled
    output: str
    detail: str = ""  # why it was skipped, what it waits for, or the error
    shape: list[int] | None = None
    objects: int | None = None
    mpix_per_second: float | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_from_record(
    acquisition: str, status: str, output: str, record: dict[str, Any], detail: str = ""
) -> ReportRow:
    """A row from a run record: shape, objects, end-to-end throughput of the pixels computed.

    The time a run waited for the run before it (a nightly run's acquisitions take turns at the
    devices, :mod:`pipeline.device_turn`) is not its own: duration and throughput leave it out.
    """
    predict = record.get("stages", {}).get("predict", {})
    wall = record.get("wall_seconds")
    waited = record.get("setup_seconds", {}).get("the previous run's blocks", 0.0)
    seconds = None if wall is None else round(wall - waited, 3)
    pixels = predict.get("pixels")
    rate = round(pixels / 1e6 / seconds, 3) if pixels and seconds else None
    labels = record.get("labels")
    return ReportRow(
        acquisition=acquisition,
        status=status,
        output=output,
        detail=detail,
        shape=record["input"]["shape"],
        objects=None if labels is None else labels["objects"],
        mpix_per_second=rate,
        seconds=seconds,
    )


def markdown_report(title: str, preamble: list[str], rows: list[ReportRow]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    lines = [f"# {title}", "", *preamble, ""]
    lines.append(
        "**" + ", ".join(f"{n} {status}" for status, n in counts.items()) + "**"
        if rows
        else "**no acquisitions found**"
    )
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        status = row.status + (f": {row.detail}" if row.detail else "")
        cells = [
            row.acquisition,
            " x ".join(str(n) for n in row.shape) if row.shape else "",
            "" if row.objects is None else f"{row.objects:,}",
            "" if row.mpix_per_second is None else f"{row.mpix_per_second:.2f}",
            "" if row.seconds is None else f"{row.seconds:.1f} s",
            status,
            f"`{row.output}`",
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
