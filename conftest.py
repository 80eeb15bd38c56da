"""Shared test fixtures: paths of the scenarios and a per-test records directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent
SCENARIOS = ROOT / "scenarios"


@pytest.fixture
def scenarios() -> Path:
    return SCENARIOS


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    """A client for a reachable Docker engine; tests using it are skipped, with the reason, where
    there is none."""
    import docker

    from harness.backends.docker import DockerBackend

    reason = DockerBackend(gpus=False).unavailable_reason()
    if reason:
        pytest.skip(reason)
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def torch_image(engine: Any) -> str:
    """The image with python3, pip and torch the container rungs run scripts on (built once per
    machine; module scope so that a module may narrow ``engine``)."""
    from harness.images import ensure_torch_image

    return ensure_torch_image(engine)
