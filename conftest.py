"""Shared test fixtures (paths of the scenarios, a per-test records directory, the engines) and
the check that every test carries a tier marker."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent
SCENARIOS = ROOT / "scenarios"


#: The tiers: the markers pyproject.toml declares (plugins register markers of their own, such as
#: ``harness_parity``, which are no tier).
TIERS = frozenset(
    line.split(":", 1)[0].strip()
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"][
        "markers"
    ]
)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` and ``-k`` deselect: an unmarked test fails every run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail the collection where a test carries none of the tier markers: ``-m unit`` is the fast
    tier run on every change, and CI picks the other tiers by marker too, so a selection can only
    be trusted to be complete (and the fast one fast) if every test says which tier it belongs to.
    An unmarked test would silently drop out of every ``-m`` selection, so the suite refuses to
    run instead, naming the tests to mark."""
    unmarked = [item.nodeid for item in items if not TIERS.intersection(m.name for m in item.iter_markers())]
    if unmarked:
        raise pytest.UsageError(
            f"{len(unmarked)} test(s) carry none of the tier markers ({', '.join(sorted(TIERS))}); "
            "mark each with its tier(s) (pyproject.toml's [tool.pytest.ini_options] markers):\n  "
            + "\n  ".join(unmarked)
        )


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

    from harness.backends import get_backend

    reason = get_backend("docker", gpus=False).unavailable_reason()
    if reason:
        pytest.skip(reason)
    client = docker.from_env()
    before = _harness_resources(client)
    yield client
    left = sorted(_harness_resources(client) - before)
    client.close()
    assert not left, f"the tests left these behind in the Docker engine: {left}"


def _harness_resources(client: Any) -> set[str]:
    """Everything in the engine that carries the harness's label and is not a cached image:
    whatever a test or a run leaks (a build's intermediate container, a run's network) shows here
    once the session is over, whichever test made it."""
    found = {"label": "harness.managed=true"}
    return {
        *(f"container {c.name}" for c in client.containers.list(all=True, filters=found)),
        *(f"network {n.name}" for n in client.networks.list(filters=found)),
        *(f"volume {v.name}" for v in client.volumes.list(filters=found)),
        *(f"untagged image {i.short_id}" for i in client.images.list(filters={**found, "dangling": True})),
    }


@pytest.fixture(scope="module")
def torch_image(engine: Any) -> str:
    """The image with python3, pip and torch the container rungs run scripts on (built once per
    machine; module scope so that a module may narrow ``engine``)."""
    from harness.runtime.images import ensure_torch_image

    return ensure_torch_image(engine)


@pytest.fixture(scope="session")
def localstack() -> Iterator[dict[str, str]]:
    """The harness's LocalStack (started here unless it already runs; stopped after the session if
    started here), with this process's AWS variables pointing at it. The secret key is a fresh
    random value, so that a test can prove it was written nowhere."""
    import secrets

    from harness.runtime import localstack as service

    pytest.importorskip("boto3", reason="S3 needs boto3 (the [s3] extra)")
    try:
        service.find_python()
    except service.LocalStackError as exc:
        pytest.skip(exc.message)
    already = service.current()
    running = already or service.up()
    secret = f"harness-test-secret-{secrets.token_hex(8)}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        for name, value in {**running.env(), "AWS_SECRET_ACCESS_KEY": secret}.items():
            patch.setenv(name, value)
        yield {"endpoint": running.endpoint, "secret": secret}
    if already is None:
        service.down()
