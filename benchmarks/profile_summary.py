"""Where the CPU of a profiled run goes: a summary of py-spy's raw output (``--format raw``).

    py-spy record --subprocesses --native --rate 50 --format raw -o run.txt -- <command>
    python benchmarks/profile_summary.py run.txt [--json summary.json] [--top 15]

Samples are split by process (the driver, the Dask workers) and by what the
thread does (the device batcher, block tasks, the threads of their local
files, the rest); samples of a thread waiting (on a lock, an event, a queue,
a selector, a sleep) are counted apart, since py-spy counts some of those as
active. For each group: the deepest frame of our own code in the stack
(``pipeline/``, ``flows/``) and the innermost function (native with
``--native``), each with its share of the group's active samples.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

WAITS = (
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "Thread.join (threading.py",
    "_wait_for_tstate_lock (threading.py",
    "SimpleQueue.get",
    "Queue.get (queue.py",
    ".select (selectors.py",
    "select (selectors.py",
    "_run_once (asyncio/base_events.py",
    "sleep (",
)
OURS = re.compile(r"\((?:pipeline|flows)/[^:]*:\d+\)")
LINE = re.compile(r":\d+\)")
ADDRESS = re.compile(r"^0x[0-9a-f]+ ")


def process_kind(frames: list[str]) -> str:
    processes = [frame for frame in frames if frame.startswith("process ")]
    return "worker" if processes and "spawn_main" in processes[-1] else "driver"


def thread_kind(frames: list[str]) -> str:
    text = ";".join(frames)
    if "DeviceBatcher._serve" in text:
        return "device batcher"
    if "threadpoolexecutor.py" in text and "(pipeline/blocks.py" in text:
        return "block tasks"
    if "(pipeline/zarr_direct.py" in text and "concurrent/futures/thread.py" in text:
        return "file threads"
    return "other"


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        group = groups.setdefault(
            f"{process_kind(frames)} / {thread_kind(frames)}",
            {"active": 0, "waiting": 0, "ours": Counter(), "innermost": Counter()},
        )
        if any(wait in frame for frame in frames for wait in WAITS):
            group["waiting"] += int(count)
            continue
        group["active"] += int(count)
        ours = [frame for frame in frames if OURS.search(frame)]
        group["ours"][LINE.sub(")", ours[-1]) if ours else "(none of ours)"] += int(count)
        group["innermost"][ADDRESS.sub("? ", LINE.sub(")", frames[-1]))] += int(count)
    total = sum(group["active"] for group in groups.values()) or 1
    summary: dict[str, Any] = {}
    for name, group in sorted(groups.items(), key=lambda item: -item[1]["active"]):
        active = group["active"] or 1
        summary[name] = {
            "active_samples": group["active"],
            "share_of_all_active": round(group["active"] / total, 3),
            "waiting_samples": group["waiting"],
            "ours": {frame: round(n / active, 3) for frame, n in group["ours"].most_common(top)},
            "innermost": {frame: round(n / active, 3) for frame, n in group["innermost"].most_common(top)},
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    summary = summarise(args.raw, args.top)
    if args.json:  # first: a reader that stops early (head) leaves it whole
        args.json.write_text(json.dumps(summary, indent=1))
    for name, group in summary.items():
        print(
            f"== {name}: {group['active_samples']} active samples ({group['share_of_all_active']:.0%} of all), "
            f"{group['waiting_samples']} waiting"
        )
        for heading in ("ours", "innermost"):
            print(f"  {heading}:")
            for frame, share in group[heading].items():
                print(f"    {share:6.1%}  {frame[:140]}")


if __name__ == "__main__":
    main()
