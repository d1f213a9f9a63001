from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.checkpoint import load_checkpoint
from pipeline.cli import cli
from pipeline.config import load_train_config
from pipeline.demo import DEMO_MODEL


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script in a real subprocess, as a user runs it."""
    script = Path(sys.executable).with_name("unet-pipeline")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300, check=False)


def test_model_init_then_info(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    made = run("model", "init", str(path), "--base-channels", "4", "--depth", "3", "--seed", "7")
    assert made.returncode == 0, made.stderr
    assert "untrained" in made.stdout
    info = run("model", "info", str(path), "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["architecture"] == {"in_channels": 1, "n_classes": 2, "base_channels": 4, "depth": 3}
    assert described["halo"] == 20
    assert described["training"] == {"status": "untrained", "seed": 7}
    assert described["sha256"] in made.stdout


def test_model_init_is_reproducible_by_seed(tmp_path: Path) -> None:
    runner = CliRunner()
    shas = []
    for name in ("a", "b"):
        result = runner.invoke(
            cli, ["model", "init", str(tmp_path / name), "--base-channels", "2", "--seed", "3"]
        )
        assert result.exit_code == 0, result.output
        shas.append(result.output.split("sha256 ")[1].strip())
    assert shas[0] == shas[1]


def test_model_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_text("precious")
    result = CliRunner().invoke(cli, ["model", "init", str(path), "--base-channels", "2"])
    assert result.exit_code == 2
    assert "already exists; pass --overwrite" in result.output
    assert path.read_text() == "precious"


def test_missing_checkpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run("model", "info", str(tmp_path / "absent.safetensors"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no checkpoint at")
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run("--debug", "model", "info", str(tmp_path / "absent.safetensors"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_convert_command(tmp_path: Path) -> None:
    from pipeline.model import UNet

    pickled = tmp_path / "old.pt"
    torch.save(UNet(base_channels=2, depth=2).state_dict(), pickled)
    refused = CliRunner().invoke(cli, ["model", "info", str(pickled)])
    assert refused.exit_code == 2
    assert "unet-pipeline model convert" in refused.output
    target = str(tmp_path / "new.safetensors")
    converted = CliRunner().invoke(cli, ["model", "convert", str(pickled), target, "--pixel-size", "0.65"])
    assert converted.exit_code == 0, converted.output
    info = json.loads(CliRunner().invoke(cli, ["model", "info", target, "--json"]).output)
    assert info["architecture"]["depth"] == 2
    assert info["training"]["pixel_size_um"] == {"y": 0.65, "x": 0.65}


@pytest.mark.slow
def test_demo_segments_unseen_nuclei_to_the_quality_bars(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run("demo", str(out))
    assert result.returncode == 0, result.stderr
    scores = json.loads((out / "demo-scores.json").read_text())
    assert scores["foreground_iou"] >= 0.90, scores
    assert scores["instance_f1"] >= 0.90, scores
    assert scores["touching_pairs"] > 50
    assert scores["touching_pairs_kept_apart"] >= 0.5 * scores["touching_pairs"], scores
    assert f"instance F1 (IoU 0.5) {scores['instance_f1']:.3f}" in result.stdout
    assert "trained on synthetic nuclei" in result.stdout
    record = json.loads(run("inspect", str(out / "segmentation.ome.zarr"), "--json").stdout)
    assert record["runs"][-1]["checkpoint"]["sha256"] == hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_lists_the_shipped_demo_model_and_its_training_config() -> None:
    sha = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
    readme = (DEMO_MODEL.parents[1] / "README.md").read_text()
    assert sha in readme
    training = load_checkpoint(DEMO_MODEL).training
    shipped = load_train_config(DEMO_MODEL.parents[1] / "configs" / "train.yaml")
    assert training["config"] == shipped.model_dump(mode="json")
    assert [pair["name"] for pair in training["data"]] == [
        f"nuclei-{seed}.ome.zarr" for seed in (101, 102, 103, 104)
    ]
