"""The nightly flow once over the demo folder, in Prefect's ephemeral mode (no server to start).

``python -m flows.demo demo-output`` after ``unet-pipeline demo demo-output``
(``make demo`` runs both): segments ``demo-output/acquisitions`` into
``demo-output/segmentations`` and prints the flow's report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the ephemeral server runs in this process: no usage reports to the outside (set before prefect loads)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from flows.nightly import nightly_segmentation
from pipeline.demo import DEMO_MODEL
from pipeline.outputs import read_nightly_summary


def main(out_dir: Path) -> int:
    output_root = out_dir / "segmentations"
    state = nightly_segmentation(
        input_root=str(out_dir / "acquisitions"),
        output_root=str(output_root),
        model=str(DEMO_MODEL),
        config=str(out_dir / "demo-config.yaml"),
        settings="configs/nightly.yaml",
        return_state=True,
    )
    summary = read_nightly_summary(output_root)
    if summary is not None:
        print(summary["report"])
    print(f"nightly flow run: {state.name}; `unet-pipeline status {output_root}` for the morning check,")
    print(f"`unet-pipeline inspect {output_root}/nuclei-3d.ome.zarr` for one run record,")
    print(f"previews in {output_root}/*.ome.zarr/preview.png")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")))
