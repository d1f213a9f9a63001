"""Model checkpoints: one ``.safetensors`` file, weights plus metadata.

Loading never executes code: the file is parsed as safetensors (a JSON
header and raw tensor bytes), the tensor bytes are checked against the
sha256 recorded at save time, and the architecture in the metadata is built
and checked tensor by tensor before any weight is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from pipeline import __version__
from pipeline.errors import CheckpointError
from pipeline.locations import write_whole
from pipeline.model import UNet, UNetConfig, build_model, parameter_shapes
from pipeline.normalization import Normalization

FORMAT = "unet-pipeline.checkpoint"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")  # torch.save zip archive; legacy pickle


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A verified checkpoint's architecture and what it was trained for, without its weights."""

    config: UNetConfig
    path: Path
    sha256: str
    normalization: Normalization
    classes: tuple[str, ...]
    training: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""


@dataclass(frozen=True, slots=True)
class Checkpoint(CheckpointInfo):
    """A loaded checkpoint: the model (eval mode, on CPU) and what it was trained for."""

    model: UNet = field(kw_only=True)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: UNet,
    *,
    normalization: Normalization,
    classes: tuple[str, ...] = ("background", "foreground"),
    training: dict[str, Any] | None = None,
) -> str:
    """Write ``model`` and its metadata to ``path`` atomically; return the file's sha256."""
    if len(classes) != model.config.n_classes:
        raise ValueError(f"{len(classes)} class names given for a {model.config.n_classes}-class model")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    data = b"".join(_tensor_bytes(tensors[name]) for name in sorted(tensors))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": json.dumps({"name": "unet2015", **model.config.to_dict()}),
        "normalization": json.dumps(normalization.to_dict()),
        "classes": json.dumps(list(classes)),
        "training": json.dumps(training or {}),
        "package_version": __version__,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    blob = _encode_safetensors(tensors, metadata, data)
    write_whole(os.fspath(path), blob)
    return hashlib.sha256(blob).hexdigest()


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint; CheckpointError says what is wrong and how to fix it."""
    info, blob = _read_verified(path)
    with torch.device("meta"):  # no weights drawn only to be overwritten: 0.2 s for the paper's
        model = build_model(info.config)
    model.load_state_dict(load_safetensors(blob), strict=True, assign=True)
    return Checkpoint(**{name: getattr(info, name) for name in CheckpointInfo.__slots__}, model=model.eval())


_INFOS: dict[tuple[str, int, int, int, int], CheckpointInfo] = {}  # read in this process, by file identity
_INFOS_KEPT = 8


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Everything :func:`load_checkpoint` verifies and returns but the model: what a driver that plans
    a run, and never runs the network, needs (no model built: a quarter second less for the paper's).

    A file this process verified before and that is unchanged since (the same inode, size and
    modification time) is not read and hashed again: a nightly run plans every acquisition with one
    model (0.36 s each for the paper's on a GPU host). The workers hash what they load, and refuse a
    file whose sha256 is not the run's.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return _read_verified(path)[0]  # names what is wrong
    key = (os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    info = _INFOS.get(key)
    if info is None:
        info = _read_verified(path)[0]
        if len(_INFOS) >= _INFOS_KEPT:
            _INFOS.clear()
        _INFOS[key] = info
    return info


def _read_verified(path: str | os.PathLike[str]) -> tuple[CheckpointInfo, bytes]:
    source = Path(path)
    if not source.exists():
        raise CheckpointError(f"no checkpoint at {source}: the file does not exist")
    if not source.is_file():
        raise CheckpointError(f"checkpoint path {source} is not a file")
    blob = source.read_bytes()
    header = _parse_header(source, blob)
    metadata = header.pop("__metadata__", None) or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{source} is a safetensors file but not a unet-pipeline checkpoint (no '{FORMAT}' "
            "format tag); create one with `unet-pipeline model init` or `unet-pipeline model convert`"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format version {metadata.get('format_version')!r}; "
            f"this unet-pipeline {__version__} reads version {FORMAT_VERSION}"
        )
    _check_length(source, blob, header)
    recorded = metadata.get("weights_sha256")
    with ThreadPoolExecutor(1, thread_name_prefix="checkpoint-sha256") as pool:
        # the file's identity beside the weights' check: hashlib lets go of the GIL, the two take one's time
        file_sha256 = pool.submit(lambda: hashlib.sha256(blob).hexdigest())
        weights_sha256 = hashlib.sha256(_data_section(blob)).hexdigest()
    if weights_sha256 != recorded:
        raise CheckpointError(
            f"{source}: the tensor data does not match the sha256 recorded in the file; "
            "it was modified or corrupted after it was saved: restore it from its source"
        )
    try:
        architecture = json.loads(metadata["architecture"])
        if architecture.pop("name", None) != "unet2015":
            raise ValueError("architecture name is not 'unet2015'")
        config = UNetConfig.from_dict(architecture)
        normalization = Normalization.from_dict(json.loads(metadata["normalization"]))
        classes = tuple(str(c) for c in json.loads(metadata["classes"]))
        training = json.loads(metadata.get("training", "{}"))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: invalid checkpoint metadata: {error}") from error
    _check_architecture(source, config, header)
    info = CheckpointInfo(
        config=config,
        path=source,
        sha256=file_sha256.result(),
        normalization=normalization,
        classes=classes,
        training=training,
        package_version=str(metadata.get("package_version", "")),
    )
    return info, blob


def convert_state_dict(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    normalization: Normalization,
    pixel_size_um: float | None = None,
) -> str:
    """Convert a ``torch.save``-d state dict of this U-Net to a checkpoint.

    ``pixel_size_um``: the Y, X pixel size it was trained at, if known (runs check theirs against it).

    Reads with ``weights_only=True`` (tensors and plain containers only, no
    code), infers the architecture from the tensor shapes, returns the sha256.
    """
    try:
        loaded = torch.load(Path(source), map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"no file at {source}") from error
    except Exception as error:  # torch raises many types for unreadable or unsafe pickles
        raise CheckpointError(f"{source} cannot be read as a weights-only PyTorch file: {error}") from error
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{source} does not hold a state dict of tensors")
    config = _infer_config(Path(source), loaded)
    model = build_model(config)
    shapes = {name: list(t.shape) for name, t in loaded.items()}
    _check_architecture(Path(source), config, {n: {"shape": s} for n, s in shapes.items()})
    model.load_state_dict(loaded, strict=True)
    training: dict[str, Any] = {"converted_from": str(source)}
    if pixel_size_um is not None:
        training["pixel_size_um"] = {"y": pixel_size_um, "x": pixel_size_um}
    return save_checkpoint(target, model, normalization=normalization, training=training)


def _infer_config(source: Path, state: dict[str, torch.Tensor]) -> UNetConfig:
    try:
        first = state["encoder.0.0.weight"]
        head = state["head.weight"]
    except KeyError as error:
        raise CheckpointError(
            f"{source} is not a state dict of unet-pipeline's UNet (missing tensor {error}); "
            "rename its tensors to this package's names first"
        ) from error
    depth = 1 + max(int(name.split(".")[1]) for name in state if name.startswith("encoder."))
    return UNetConfig(
        in_channels=int(first.shape[1]),
        n_classes=int(head.shape[0]),
        base_channels=int(first.shape[0]),
        depth=depth,
    )


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def _encode_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], data: bytes) -> bytes:
    """The safetensors layout with sorted keys, so equal weights give equal files (and sha256)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + data


def _parse_header(source: Path, blob: bytes) -> dict[str, Any]:
    if blob.startswith(PICKLE_MAGICS):
        raise CheckpointError(
            f"{source} is a PyTorch pickle (torch.save) file; pickles can run code when loaded, "
            f"so they are refused. Convert it once with `unet-pipeline model convert {source} "
            f"{source.with_suffix('.safetensors')}` (reads tensors only, weights_only=True)"
        )
    if len(blob) < 8:
        raise CheckpointError(f"{source} is not a checkpoint: only {len(blob)} bytes")
    (header_size,) = struct.unpack("<Q", blob[:8])
    if header_size > MAX_HEADER_BYTES:
        raise CheckpointError(f"{source} is not a checkpoint (not a safetensors file)")
    if 8 + header_size > len(blob):
        raise CheckpointError(
            f"{source} is truncated: its header needs {8 + header_size} bytes, the file has "
            f"{len(blob)}; copy it again from its source"
        )
    try:
        header = json.loads(blob[8 : 8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{source} is not a checkpoint (not a safetensors file)") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{source} is not a checkpoint (not a safetensors file)")
    return header


def _data_section(blob: bytes) -> memoryview:
    """The tensors' bytes, not copied (a copy of the paper network's took 50 ms)."""
    (header_size,) = struct.unpack("<Q", blob[:8])
    return memoryview(blob)[8 + header_size :]


def _check_length(source: Path, blob: bytes, header: dict[str, Any]) -> None:
    expected = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    actual = len(_data_section(blob))
    if actual < expected:
        raise CheckpointError(
            f"{source} is truncated: its tensors need {expected} bytes of data, the file holds "
            f"{actual}; copy it again from its source"
        )
    if actual > expected:
        raise CheckpointError(f"{source} has {actual - expected} unexpected bytes after its tensors")


def _check_architecture(source: Path, config: UNetConfig, header: dict[str, Any]) -> None:
    expected = parameter_shapes(config)
    found = {name: list(entry["shape"]) for name, entry in header.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(n for n in set(expected) & set(found) if expected[n] != found[n])
    if missing or extra or wrong:
        details = []
        if missing:
            details.append(f"missing tensors {missing[:3]}")
        if extra:
            details.append(f"unexpected tensors {extra[:3]}")
        if wrong:
            n = wrong[0]
            details.append(f"tensor {n!r} has shape {found[n]}, the architecture needs {expected[n]}")
        raise CheckpointError(
            f"{source}: wrong architecture: the tensors do not match {config} ({'; '.join(details)})"
        )
