"""docker/: what can be checked without a Docker engine (CI has none; the image is never built here).

The compose file parses, its services are wired as docs/deploy.md says,
every published port is bound to 127.0.0.1, every variable it reads is
documented in .env.example, and every service's command exists in the
installed package, with every option it passes, and answers --help. The
Dockerfile parses (dockerfile-parse) and installs the project as the
README says for a GPU machine: a CUDA torch first, then the gpu extra.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from pipeline.worker_environment import PLACEMENT, dask_variable

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
BIN = Path(sys.executable).parent
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?-([^}]*))?\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def example_environment() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs if not name.lstrip().startswith("#")}


def interpolate(text: str, environment: dict[str, str]) -> str:
    return VARIABLE.sub(lambda match: environment.get(match.group(1)) or match.group(2) or "", text)


def test_compose_parses_and_has_the_four_services() -> None:
    services = compose()["services"]
    assert set(services) == {"prefect-server", "dask-scheduler", "dask-worker", "prefect-worker"}
    for name, service in services.items():
        assert service["image"] and service["build"]["dockerfile"] == "docker/Dockerfile", name
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert isinstance(service["command"], list), f"{name}: a list command, no shell in between"
        assert service["environment"]["HEALTHCHECK_URL"].startswith("http://127.0.0.1:"), name
    gpus = services["dask-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": "${GPU_COUNT:-all}", "capabilities": ["gpu"]}]
    assert "prefect-database:/var/lib/prefect" in services["prefect-server"]["volumes"]
    assert "prefect-database" in compose()["volumes"]
    assert "tcp://dask-scheduler:8786" in services["dask-worker"]["command"]
    assert (
        services["prefect-worker"]["command"][services["prefect-worker"]["command"].index("--pool") + 1]
        == (yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"][0]["work_pool"]["name"])
    )
    for name in ("dask-worker", "prefect-worker"):  # both see the data at the paths the nightly settings name
        mounts = {interpolate(v, example_environment()).split(":")[1] for v in services[name]["volumes"]}
        nightly = yaml.safe_load((ROOT / "docker" / "nightly.yaml").read_text())
        assert {nightly["input_root"], nightly["output_root"], str(Path(nightly["model"]).parent)} <= mounts


def test_composes_scheduler_places_blocks_as_the_schedulers_a_run_starts() -> None:
    """A run places each block on a worker itself; the schedulers it starts do not steal work, and
    neither does compose's (Dask reads DASK_* variables as its settings)."""
    environment = compose()["services"]["dask-scheduler"]["environment"]
    for name, value in PLACEMENT.items():
        assert yaml.safe_load(str(environment.get(dask_variable(name)))) == value, name


def test_published_ports_are_bound_to_localhost() -> None:
    environment = example_environment()
    published = 0
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            host, host_port, container_port = interpolate(port, environment).split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} beyond this machine"
            assert host_port.isdigit() and container_port.isdigit(), port
            published += 1
    assert published == 3  # Prefect API/UI, Dask scheduler, Dask dashboard


def test_every_variable_compose_reads_is_documented() -> None:
    read = {match.group(1) for match in VARIABLE.finditer(COMPOSE.read_text())}
    assert read - set(example_environment()) == set()


def help_command(command: list[str]) -> list[str]:
    """The command up to its first argument that is not a subcommand, then --help."""
    words = []
    for word in command:
        if word.startswith("-") or "://" in word:
            break
        words.append(word)
    return [str(BIN / words[0]), *words[1:], "--help"]


@pytest.mark.parametrize("service", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_service_command_exists_and_takes_its_options(service: str) -> None:
    command = compose()["services"][service]["command"]
    if command[:2] == ["dask", "cuda"] and find_spec("dask_cuda") is None:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        assert any(requirement.startswith("dask-cuda") for requirement in extras["gpu"])
        assert "gpu" in dockerfile_install_extras()
        pytest.skip("dask-cuda (the gpu extra the image installs) is not installed here: CPU only")
    result = subprocess.run(help_command(command), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for option in (word for word in command if word.startswith("--")):
        assert option in result.stdout, f"{service}: {option} is not an option of {' '.join(command[:3])}"


def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(ROOT / "docker" / "Dockerfile"))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    result: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def dockerfile_install_extras() -> set[str]:
    runs = " ".join(i["value"] for i in stages(dockerfile())[0] if i["instruction"] == "RUN")
    match = re.search(r"pip install [^&]*'\.\[([a-z0-9,]+)\]'", runs)
    assert match, "the build stage installs the project with pip install '.[extras]'"
    return set(match.group(1).split(","))


def test_dockerfile_builds_a_gpu_worker_image_the_readme_way() -> None:
    parser = dockerfile()
    build = stages(parser)[0]
    assert re.match(r"nvidia/cuda:[\d.]+-cudnn-runtime-", _arg_default(parser, "CUDA_BASE"))
    assert [i["value"].split()[0] for i in parser.structure if i["instruction"] == "FROM"] == [
        "${CUDA_BASE}"
    ] * 2
    runs = [i["value"] for i in build if i["instruction"] == "RUN"]
    torch_step = next(n for n, run in enumerate(runs) if "torch==" in run)
    project_step = next(n for n, run in enumerate(runs) if "'.[" in run)
    assert torch_step < project_step, "a CUDA torch first, then the project (README: GPU machine)"
    assert "--index-url ${TORCH_INDEX}" in runs[torch_step]
    assert _arg_default(parser, "TORCH_INDEX").startswith("https://download.pytorch.org/whl/cu")
    pinned = (ROOT / "constraints.txt").read_text().split("==")[1].strip()
    assert _arg_default(parser, "TORCH_VERSION") == pinned  # the same torch as CI tests, built for CUDA
    assert {"gpu", "s3"} <= dockerfile_install_extras()
    assert "pip install -e '.[gpu]'" in (ROOT / "README.md").read_text()


def _arg_default(parser: DockerfileParser, name: str) -> str:
    for instruction in parser.structure:
        if instruction["instruction"] == "ARG" and instruction["value"].startswith(f"{name}="):
            return str(instruction["value"].split("=", 1)[1])
    raise AssertionError(f"no ARG {name} with a default")


def test_runtime_stage_is_lean_non_root_and_checks_its_health() -> None:
    _, runtime = stages(dockerfile())
    text = " ".join(i["value"] for i in runtime)
    for tool in ("build-essential", "gcc", "python3-dev", "git "):
        assert tool not in text, f"{tool} in the final stage"
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert any(i["instruction"] == "HEALTHCHECK" for i in runtime)
    assert any(i["instruction"] == "COPY" and i["value"].startswith("--from=build ") for i in runtime)


def test_everything_the_dockerfile_copies_is_in_the_build_context() -> None:
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    for instruction in dockerfile().structure:
        if instruction["instruction"] != "COPY" or instruction["value"].startswith("--from="):
            continue
        *sources, _ = [word for word in instruction["value"].split() if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is ignored"
