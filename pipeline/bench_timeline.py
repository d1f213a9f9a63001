"""The end-to-end run as a picture: each task's compute on the worker thread that ran it, coloured by
stage, in an SVG file (a browser or any image viewer shows it; no plotting library needed).

Where the run loses to the model-only rate shows as shape: grey before the first block's predict
and after the last block's (the set-up; the label merge's and pyramids' tail), gaps in a thread's
row (waiting for the driver or for a free slot), predict bars that stretch (the device shared).
Times are seconds from the call of `segment`, on the workers' host clock (bench's clusters are
local: the driver's clock too).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from pipeline.bench_tail import Compute

WIDTH = 1100  # px of the picture
LEFT = 150  # px for the row names
TOP = 40  # px above the first row
ROW = 14  # px a worker thread's row
BAR = 10  # px a bar's height
FIXED = {
    "predict": "#3b6fb6",
    "contacts": "#e8892b",
    "relabel": "#3a9a4a",
    "resample": "#b5651d",
}
LEVELS = ("#8c8c8c", "#a6a6a6", "#bfbfbf", "#d4d4d4")  # the image pyramid's levels
LABEL_LEVELS = ("#7b4fa6", "#9a74c0", "#b89ad6", "#d2c0e6")  # the label pyramid's levels
OTHERS = ("#c44e52", "#55a8b0", "#a8a23a", "#d17fb0")


def stage_colour(stage: str) -> str:
    """The stage's fill: fixed for the block stages, by level for the pyramids, else from a palette."""
    if stage in FIXED:
        return FIXED[stage]
    level = stage.rsplit("-s", 1)[-1]
    if stage.startswith("pyramid-") and level.isdigit():
        palette = LABEL_LEVELS if stage.startswith("pyramid-labels-") else LEVELS
        return palette[min(int(level), len(palette)) - 1]
    return OTHERS[sum(stage.encode()) % len(OTHERS)]


def timeline_svg(
    computes: list[Compute],
    started: float,
    finished: float,
    title: str,
    device_busy: Sequence[tuple[float, float]] = (),
) -> str:
    """The picture of one run: a row per worker thread (workers in address order), a bar per compute,
    the span without a predict task shaded at each end, a legend of the stages with their tasks and
    summed compute seconds. ``started`` and ``finished``: the run's call and return, host clock.
    ``device_busy``: (time, percent) samples of the GPU's busy time (nvidia-smi's utilisation: the
    part of the period before each sample in which a kernel ran), drawn as a row of their own."""
    rows = sorted({(compute.worker, compute.thread) for compute in computes})
    workers = sorted({worker for worker, _ in rows})
    names = {
        (worker, thread): f"worker {number}, thread {rank}"
        for number, worker in enumerate(workers, 1)
        for rank, thread in enumerate(sorted(t for w, t in rows if w == worker), 1)
    }
    row_top = {row: TOP + ROW * index for index, row in enumerate(rows)}
    bottom = TOP + ROW * (len(rows) + (2 if device_busy else 0))
    span = max(finished - started, 1e-9)
    plot = WIDTH - LEFT - 20
    stages: dict[str, list[float]] = {}
    for compute in computes:
        stages.setdefault(compute.stage, []).append(compute.stop - compute.start)
    height = bottom + 40 + 18 * ((len(stages) + 2) // 3)

    def x(moment: float) -> float:
        return LEFT + plot * min(max((moment - started) / span, 0.0), 1.0)

    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            'font-family="sans-serif" font-size="11">'
        ),
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="18" font-size="13">{escape(title)}</text>',
    ]
    predicted = [compute for compute in computes if compute.stage == "predict"]
    if predicted:
        first = min(compute.start for compute in predicted)
        last = max(compute.stop for compute in predicted)
        for a, b in ((started, first), (last, finished)):
            if b > a:
                parts.append(
                    f'<rect class="idle" x="{x(a):.2f}" y="{TOP - 4}" width="{x(b) - x(a):.2f}" '
                    f'height="{bottom - TOP + 8}" fill="#eeeeee"/>'
                )
        parts.append(
            f'<text x="10" y="32" fill="#555">no block predicted: {first - started:.2f} s before the '
            f"first, {finished - last:.2f} s after the last, of {finished - started:.2f} s</text>"
        )
    for row, y in row_top.items():
        parts.append(f'<text x="{LEFT - 6}" y="{y + BAR - 1}" text-anchor="end">{names[row]}</text>')
    for compute in computes:
        y = row_top[(compute.worker, compute.thread)]
        left, right = x(compute.start), x(compute.stop)
        tip = f"{compute.key}: {compute.start - started:.3f} to {compute.stop - started:.3f} s"
        parts.append(
            f'<rect class="task" data-stage="{escape(compute.stage)}" x="{left:.2f}" y="{y}" '
            f'width="{max(right - left, 0.5):.2f}" height="{BAR}" fill="{stage_colour(compute.stage)}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    if device_busy:
        y = TOP + ROW * (len(rows) + 1)
        parts.append(f'<text x="{LEFT - 6}" y="{y + BAR - 1}" text-anchor="end">GPU busy</text>')
        previous = started
        for moment, percent in device_busy:
            tall = BAR * min(max(percent, 0.0), 100.0) / 100
            parts.append(
                f'<rect class="busy" x="{x(previous):.2f}" y="{y + BAR - tall:.2f}" '
                f'width="{x(moment) - x(previous):.2f}" height="{tall:.2f}" fill="#2b2b2b">'
                f"<title>{percent:g} %</title></rect>"
            )
            previous = moment
    parts.append(f'<line x1="{LEFT}" y1="{bottom + 2}" x2="{LEFT + plot}" y2="{bottom + 2}" stroke="#444"/>')
    step = _tick_step(span)
    for count in range(int(span / step + 1e-9) + 1):
        at = LEFT + plot * count * step / span
        parts.append(f'<line x1="{at:.2f}" y1="{bottom + 2}" x2="{at:.2f}" y2="{bottom + 6}" stroke="#444"/>')
        parts.append(
            f'<text x="{at:.2f}" y="{bottom + 17}" text-anchor="middle">{round(count * step, 6):g}</text>'
        )
    parts.append(f'<text x="{LEFT + plot}" y="{bottom + 30}" text-anchor="end">seconds</text>')
    for index, (stage, seconds) in enumerate(sorted(stages.items(), key=lambda item: _stage_order(item[0]))):
        lx, ly = LEFT + index % 3 * (plot // 3), bottom + 40 + 18 * (index // 3)
        tasks = f"{len(seconds)} task{'s' if len(seconds) > 1 else ''}"
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="12" height="10" fill="{stage_colour(stage)}"/>')
        parts.append(
            f'<text class="legend" x="{lx + 17}" y="{ly}">{escape(stage)}: {tasks}, {sum(seconds):.2f} s</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _tick_step(span: float) -> float:
    """The smallest of 0.1, 0.2, 0.5, 1, 2, 5, 10, ... seconds giving at most 12 ticks over ``span``."""
    decade = 0.1
    while True:
        for step in (decade, 2 * decade, 5 * decade):
            if span / step <= 12:
                return step
        decade *= 10


STAGE_ORDER = (("predict", 0), ("contacts", 1), ("relabel", 2), ("pyramid-labels", 4), ("pyramid", 3))


def _stage_order(stage: str) -> tuple[int, str]:
    """The legend's order: the block stages, the image pyramid, the label pyramid, the rest."""
    rank = next((rank for prefix, rank in STAGE_ORDER if stage.startswith(prefix)), len(STAGE_ORDER))
    return rank, stage
