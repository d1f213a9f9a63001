"""Typed run configuration, validated once at the edge.

Loaded from YAML (``configs/default.yaml`` documents every key); unknown keys
and bad values are errors naming the key and the file; CLI flags override
the file. The execution profile is explicit here: two runs with the same
profile give bitwise identical output, whatever the cluster or block size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import InputError
from pipeline.locations import is_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileConfig(_Strict):
    """The execution profile: everything that can change the bits of the output."""

    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="default: bfloat16 on cuda, float32 on cpu"
    )
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model in each worker (warm-up: one batch)")
    threads: int = Field(1, ge=1, description="intra-op threads per worker, set explicitly, never inherited")
    batch_size: int | Literal["auto"] = Field(
        8,
        description="windows per forward pass, one output shard's at most (a shard's last batch is padded: "
        "a size dividing tiling.shard_tiles² computes no zeros); auto: the largest that fits, evened out",
    )
    deterministic: bool = Field(True, description="deterministic kernels on GPU (bitwise repeatable)")

    @model_validator(mode="before")
    @classmethod
    def _precision_follows_device(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("dtype") is None:
            return {**values, "dtype": "bfloat16" if values.get("device") == "cuda" else "float32"}
        return values

    @model_validator(mode="after")
    def _positive_batch(self) -> ProfileConfig:
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or auto, got {self.batch_size}")
        return self


class TilingConfig(_Strict):
    tile: int = Field(
        388, ge=1, description="output tile edge in pixels; tile + 2*halo must be a valid input"
    )
    shard_tiles: int = Field(4, ge=1, description="output shard edge, in tiles (chunk = one tile)")
    block_tiles: tuple[int, int] = Field((4, 4), description="block = whole shards, in tiles (rows, columns)")
    block_planes: int = Field(1, ge=1, description="z-planes per block")

    @model_validator(mode="after")
    def _blocks_are_whole_shards(self) -> TilingConfig:
        if any(n < 1 or n % self.shard_tiles for n in self.block_tiles):
            raise ValueError(
                f"block_tiles {list(self.block_tiles)} must be positive multiples of shard_tiles "
                f"({self.shard_tiles}): two blocks writing one shard lose data"
            )
        return self


class OutputConfig(_Strict):
    dtype: Literal["uint8", "float32"] = Field(
        "uint8", description="foreground probability: uint8 is p*255 rounded"
    )
    zstd_level: int = Field(3, ge=1, le=22)
    pyramid_levels: int | Literal["auto"] = Field(
        "auto", description="levels below full resolution; auto halves until a plane fits one tile"
    )
    ngff: Literal["0.5", "0.4"] = Field(
        "0.5", description="0.5: Zarr v3, sharded; 0.4: Zarr v2, chunks of one tile (older viewers)"
    )


SLURM_PREFIX = "slurm:"  # cluster.address "slurm:FILE": dask-jobqueue workers as SLURM jobs, set up by FILE


class ClusterConfig(_Strict):
    address: str = Field(
        "local",
        description="local | cuda | tcp://HOST:PORT of a running scheduler | slurm:FILE (dask-jobqueue)",
    )
    workers: int = Field(
        2, ge=1, description="worker processes for local; ignored by cuda (see workers_per_gpu)"
    )
    workers_per_gpu: int = Field(
        1,
        ge=1,
        description="cuda: worker processes on each visible GPU, each pinned to it (1: dask-cuda's "
        "LocalCUDACluster); several keep a GPU busy where one worker's host side cannot",
    )
    mps: bool | Literal["auto"] = Field(
        "auto",
        description="local and cuda clusters with --device cuda: run the workers under an NVIDIA MPS control "
        "daemon started for the cluster (one CUDA context per GPU for all its workers); auto: where several "
        "of them share a GPU and NVIDIA's control program is on PATH",
    )
    threads_per_worker: int = Field(
        2, ge=1, description="blocks a worker runs at once: one on the device, the others reading and writing"
    )
    in_flight_per_worker: int = Field(
        3,
        ge=1,
        description="Dask tasks sent per worker at a time (a block each; up to 4 follow-ups each while more wait)",
    )
    dashboard: bool = Field(False, description="serve the Dask dashboard on 127.0.0.1")
    memory_limit: str = Field("auto", description="per worker, as Dask understands it")
    connect_timeout_seconds: float = Field(
        20.0, gt=0, description="wait this long for a scheduler address, then for its first worker"
    )
    no_workers_timeout_seconds: float = Field(
        300.0, gt=0, description="local and cuda: blocks fail (resumable) after this long with no worker left"
    )

    @model_validator(mode="after")
    def _known_address(self) -> ClusterConfig:
        known = self.address in ("local", "cuda") or "://" in self.address
        if not known and not (
            self.address.startswith(SLURM_PREFIX) and len(self.address) > len(SLURM_PREFIX)
        ):
            raise ValueError(
                f"cluster address must be local, cuda, tcp://HOST:PORT or slurm:FILE, got {self.address!r}"
            )
        return self


class LabelsConfig(_Strict):
    enabled: bool = Field(True, description="write instance labels (labels/<name>)")
    name: str = Field("cells", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="foreground: probability >= threshold")
    connectivity: Literal["faces", "full"] = Field(
        "faces", description="faces: 6 (3D) / 4 (2D); full: 26 / 8"
    )
    mode: Literal["3d", "2d"] = Field(
        "3d", description="2d: components per plane, IDs unique over the volume"
    )
    min_size_voxels: int = Field(0, ge=0, description="objects with fewer voxels are dropped")
    min_size_physical: float | None = Field(
        None, gt=0.0, description="same, in the input's physical units (cubed in 3d, squared in 2d)"
    )
    uint32_max_objects: int = Field(
        2**32 - 1, ge=0, le=2**32 - 1, description="labels are uint32 up to this many objects, uint64 beyond"
    )


class InputConfig(_Strict):
    channel: int | list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="index on the channel axis (C, or RGB samples); a list for a many-channel model"
    )
    timepoint: int | None = Field(None, ge=0, description="index on its time axis (T); None: every one")
    pixel_size_tolerance: float = Field(
        0.1, ge=0.0, lt=1.0, description="relative difference from the model's training pixel size allowed"
    )
    rescale: bool = Field(False, description="resample the input in Y, X to the model's pixel size")


class NormalizationSampleConfig(_Strict):
    regions: int = Field(64, ge=1, description="256 x 256 px regions read, spread evenly over the volume")
    max_values: int = Field(4_000_000, ge=1000, description="values kept from them (evenly strided)")


class RunConfig(_Strict):
    input: InputConfig = Field(default_factory=InputConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    normalization_sample: NormalizationSampleConfig = Field(default_factory=NormalizationSampleConfig)
    retries: int = Field(2, ge=0, description="extra attempts of a failing block before the run fails")

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def output_defining(self) -> dict[str, Any]:
        """The part of the config that determines the output's bits (not how work is split)."""
        data = self.resolved()
        data.pop("cluster")
        data.pop("retries")
        for key in ("block_tiles", "block_planes"):
            data["tiling"].pop(key)
        return data

    def resume_defining(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues: all but cluster and retries."""
        data = self.resolved()
        data.pop("cluster")
        data.pop("retries")
        return data

    def output_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.output_defining(), sort_keys=True).encode()).hexdigest()


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The file's config (default: the built-in defaults) with dotted-key overrides.

    ``overrides`` maps dotted keys to values, e.g. ``{"cluster.workers": 4}``.
    ``configs/default.yaml`` spells out the defaults with a comment on each key.
    """
    source = path or Path("(defaults)")
    data = _read_yaml(path, "config file") if path is not None else {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise InputError(_describe(error, source)) from None


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as error:
        raise InputError(f"{what} {path} is not valid YAML: {error}") from error
    if loaded is not None and not isinstance(loaded, dict):
        raise InputError(f"{what} {path} must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded or {}


def _describe(error: ValidationError, source: Path) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            problems.append(f"'{key}': {item['msg']} (got {item.get('input')!r})")
    return f"invalid config {source}: " + "; ".join(problems)


def _path_unless_url(value: Any) -> Any:
    """A bucket prefix stays a string (``Path`` would fold ``s3://`` into ``s3:/``); the rest become paths."""
    if isinstance(value, str) and is_url(value):
        return value.rstrip("/")
    return Path(value) if isinstance(value, str) else value


Root = Annotated[Path | str, BeforeValidator(_path_unless_url)]


class NightlyConfig(_Strict):
    """What a nightly run segments, from where to where (``configs/nightly.yaml``).

    Relative paths are relative to the working directory of the run (the
    repository root for the deployment in ``prefect.yaml``). The two roots
    may also be bucket prefixes (``s3://bucket/incoming``): those stay URL
    strings, everything else is a ``Path``.
    """

    input_root: Root = Field(description="folder (or s3:// prefix) the microscopes write acquisitions into")
    output_root: Root = Field(
        description="folder (or s3:// prefix): one OME-Zarr store per acquisition, mirroring the input tree"
    )
    model: Path = Field(description="checkpoint (.safetensors)")
    config: Path | None = Field(None, description="run config YAML; none: the built-in defaults")
    ready_marker: str = Field(
        ".ready", min_length=1, description="NAME.ready next to it, or inside a Zarr folder"
    )
    quiet_seconds: float = Field(
        900.0, ge=0.0, description="without a marker: ready when unchanged this long"
    )
    retries: int = Field(1, ge=0, description="extra attempts of a failed acquisition (each one resumes)")
    retry_delay_seconds: float = Field(30.0, ge=0.0)
    preview_max_pixels: int = Field(768, ge=64, description="longest edge of the preview picture")

    def absolute(self) -> NightlyConfig:
        """The same settings with absolute paths, as run records and reports should name them."""
        paths = {"input_root": self.input_root, "output_root": self.output_root, "model": self.model}
        if self.config is not None:
            paths["config"] = self.config
        return self.model_copy(
            update={key: path.resolve() for key, path in paths.items() if isinstance(path, Path)}
        )


def load_nightly_config(path: Path | None, overrides: dict[str, Any]) -> NightlyConfig:
    """The nightly settings file (optional) with flow parameters on top; errors name the key."""
    source = path or Path("(flow parameters)")
    data = _read_yaml(path, "nightly settings file") if path is not None else {}
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return NightlyConfig.model_validate(data)
    except ValidationError as error:
        raise InputError(_describe(error, source)) from None


class TrainConfig(_Strict):
    """Training with the paper's recipe (``unet-pipeline train``; ``configs/train.yaml``)."""

    base_channels: int = Field(16, ge=1)
    depth: int = Field(5, ge=2)
    tile: int = Field(196, ge=1, description="output tile of a training sample; tile + 2*halo must be valid")
    batch_size: int = Field(1, ge=1, description="the paper: one large tile per step")
    steps: int = Field(1500, ge=1)
    optimizer: Literal["sgd", "adam"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.99, ge=0.0, lt=1.0, description="sgd only (the paper: 0.99)")
    w0: float = Field(10.0, ge=0.0, description="border weight (the paper: 10)")
    sigma: float = Field(5.0, gt=0.0, description="border weight width in px (the paper: 5)")
    elastic_sigma: float = Field(
        10.0, ge=0.0, description="coarse-grid displacement std in px; 0 turns it off"
    )
    elastic_grid: int = Field(3, ge=2)
    flips: bool = True
    intensity_jitter: bool = True
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="of the pairs (or of the rows, for one pair) held out"
    )
    validate_every: int = Field(250, ge=1, description="steps between validations (an epoch)")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="foreground for the validation labels")
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch intra-op threads (results depend on it)")
    device: Literal["cpu", "cuda"] = "cpu"


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    data = _read_yaml(path, "training config file") if path is not None else {}
    data.update(overrides or {})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise InputError(_describe(error, path or Path("(training defaults)"))) from None
