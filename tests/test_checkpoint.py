from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline import checkpoint
from pipeline.checkpoint import (
    CheckpointInfo,
    convert_state_dict,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from pipeline.errors import CheckpointError
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.predict import predict_plane

NORMALIZATION = Normalization("percentile", 2.0, 99.0)


@pytest.fixture
def saved(tmp_path: Path, narrow_model: UNet) -> Path:
    path = tmp_path / "narrow.safetensors"
    save_checkpoint(path, narrow_model, normalization=NORMALIZATION, training={"epochs": 0})
    return path


def test_round_trip_predicts_bitwise_identically(
    saved: Path, narrow_model: UNet, rng: np.random.Generator
) -> None:
    plane = rng.random((300, 500), dtype=np.float32)
    loaded = load_checkpoint(saved)
    assert np.array_equal(predict_plane(narrow_model, plane), predict_plane(loaded.model, plane))
    assert loaded.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert loaded.config == narrow_model.config
    assert loaded.normalization == NORMALIZATION
    assert loaded.classes == ("background", "foreground")
    assert loaded.training == {"epochs": 0}
    assert not loaded.model.training


def test_loading_draws_no_initial_weights(saved: Path) -> None:
    """The model is built without values and given the file's: no random numbers drawn (a worker's
    model is ready 0.2 s sooner at the paper's width), and the global generator left as it was."""
    state = torch.random.get_rng_state()
    model = load_checkpoint(saved).model
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(not p.is_meta and p.device.type == "cpu" and p.requires_grad for p in model.parameters())


def test_info_is_the_loaded_checkpoint_without_its_model(saved: Path) -> None:
    info, loaded = read_checkpoint_info(saved), load_checkpoint(saved)
    assert not hasattr(info, "model")
    assert all(getattr(info, name) == getattr(loaded, name) for name in CheckpointInfo.__slots__)


def test_info_is_read_again_only_when_the_file_changed(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    read_verified = checkpoint._read_verified
    monkeypatch.setattr(
        checkpoint, "_read_verified", lambda path: (reads.append(path), read_verified(path))[1]
    )
    first = read_checkpoint_info(saved)
    assert read_checkpoint_info(saved) is first and len(reads) == 1
    blob = bytearray(saved.read_bytes())
    blob[-5] ^= 0x01
    before = saved.stat()
    saved.write_bytes(
        bytes(blob)
    )  # the same size, stamped a second later: file times can be coarser than this
    os.utime(saved, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    with pytest.raises(CheckpointError, match="modified or corrupted"):
        read_checkpoint_info(saved)
    assert len(reads) == 2


def test_save_returns_file_sha256_and_is_deterministic(tmp_path: Path, narrow_model: UNet) -> None:
    first = save_checkpoint(tmp_path / "a.safetensors", narrow_model, normalization=NORMALIZATION)
    second = save_checkpoint(tmp_path / "b.safetensors", narrow_model, normalization=NORMALIZATION)
    assert first == second == hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothing\.safetensors.*does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights, just some words in a file")
    with pytest.raises(CheckpointError, match=r"notes\.safetensors is not a checkpoint"):
        load_checkpoint(path)


def test_plain_safetensors_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not a unet-pipeline checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(saved: Path, keep: float) -> None:
    blob = saved.read_bytes()
    saved.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_checkpoint(saved)


def test_truncated_inside_header(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="is truncated: its header"):
        load_checkpoint(saved)


@pytest.mark.parametrize("read", [load_checkpoint, read_checkpoint_info])
def test_tampered_weights_are_refused(saved: Path, read: Callable[[Path], object]) -> None:
    blob = bytearray(saved.read_bytes())
    blob[-5] ^= 0x01  # one bit of the last tensor
    saved.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="modified or corrupted"):
        read(saved)


def _rewrite_metadata(path: Path, **changes: str) -> None:
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"].update(changes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + blob[8 + size :])


@pytest.mark.parametrize("read", [load_checkpoint, read_checkpoint_info])
def test_wrong_architecture(saved: Path, read: Callable[[Path], object]) -> None:
    _rewrite_metadata(
        saved,
        architecture=json.dumps(
            {"name": "unet2015", "in_channels": 1, "n_classes": 2, "base_channels": 8, "depth": 5}
        ),
    )
    with pytest.raises(
        CheckpointError,
        match=r"wrong architecture.*base_channels=8.*has shape \[\d+\], the architecture needs",
    ):
        read(saved)


def test_unknown_format_version(saved: Path) -> None:
    _rewrite_metadata(saved, format_version="99")
    with pytest.raises(CheckpointError, match="format version '99'"):
        load_checkpoint(saved)


def test_pickle_is_refused_and_convert_makes_it_loadable(
    tmp_path: Path, narrow_model: UNet, rng: np.random.Generator
) -> None:
    pickled = tmp_path / "legacy.pt"
    torch.save({"state_dict": narrow_model.state_dict(), "epoch": 3}, pickled)
    with pytest.raises(CheckpointError, match=r"PyTorch pickle.*refused.*unet-pipeline model convert"):
        load_checkpoint(pickled)
    converted = tmp_path / "legacy.safetensors"
    convert_state_dict(pickled, converted, normalization=NORMALIZATION)
    plane = rng.random((100, 100), dtype=np.float32)
    loaded = load_checkpoint(converted)
    assert loaded.config == narrow_model.config
    assert np.array_equal(predict_plane(loaded.model, plane), predict_plane(narrow_model, plane))


def test_convert_refuses_code_in_pickle(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("this must never run",))

    pickled = tmp_path / "evil.pt"
    torch.save({"weights": Payload()}, pickled)
    with pytest.raises(CheckpointError, match="weights-only"):
        convert_state_dict(pickled, tmp_path / "out.safetensors", normalization=NORMALIZATION)
    assert not (tmp_path / "out.safetensors").exists()
