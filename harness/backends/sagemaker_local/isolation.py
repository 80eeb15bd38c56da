"""Keeping concurrent ``sagemaker-local`` runs on one Docker engine apart.

SDK v3 local mode puts every run on one network, ``sagemaker-local``, a fixed name in the compose
file it writes (``_LocalContainer._generate_compose_file``), with the same aliases ``algo-1``,
``algo-2``, ... for every run. Two runs at once collide: both composes create the network at
the same time (``network sagemaker-local is ambiguous (2 matches)``), or the second run's
``algo-1`` resolves to the first run's container and its ranks join the wrong job.

The harness gives each run a network of its own: once the SDK has written its compose file, and
before it starts compose, the network's ``name`` becomes ``sagemaker-local-<run>`` (with the
run's labels, so that ``harness gc`` finds it). The network's key in the file, the services,
their aliases, mounts, environment and command stay as the SDK wrote them: a container cannot
tell the difference (it never sees the network's name). The record keeps the file as it ran and
says so in its rung facts.

Where that cannot be done (an SDK without the method, SageMaker Studio's fixed ``sagemaker``
network), runs take turns instead: an inter-process lock per Docker engine, waited for with a
line that names the run holding it, for at most :data:`LOCK_WAIT_S`; the kernel releases it
whenever its process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.backends.sagemaker_local.plan import SDK_NETWORK, run_network
from harness.errors import RungFailed

#: How long a run waits for another one's lock, where runs must take turns.
LOCK_WAIT_S = 3600.0
#: The attribute that marks the SDK's method as wrapped by the harness.
_WRAPPED = "_harness_renames_network"

_renames: dict[str, tuple[str, dict[str, str]]] = {}  # real container root -> (network name, labels)
_renames_lock = threading.Lock()


@dataclass(frozen=True)
class Isolation:
    """How a run was kept apart from others: its network's name and the rung facts to record."""

    network: str
    facts: dict[str, Any]


def say(line: str) -> None:
    print(f"harness: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def isolated(
    work_dir: Path, labels: dict[str, str], *, wait_s: float = LOCK_WAIT_S, report: Callable[[str], None] = say
) -> Iterator[Isolation]:
    """Within the block, the SDK's run in ``work_dir`` uses a network of its own, or, where the
    compose file cannot be adapted, holds the engine's lock."""
    local_container = _sdk_class()
    if local_container is None:
        with engine_lock(wait_s=wait_s, report=report) as waited:
            yield Isolation(
                SDK_NETWORK,
                {
                    "network": f"'{SDK_NETWORK}', the SDK's fixed name: this SDK's compose file cannot be adapted, so "
                    "sagemaker-local runs on this engine take turns (a lock)",
                    "waited_for_other_run_s": round(waited, 1),
                },
            )
        return
    _wrap(local_container)
    key, network = os.path.realpath(work_dir), run_network(work_dir)
    with _renames_lock:
        _renames[key] = (network, dict(labels))
    try:
        yield Isolation(
            network,
            {
                "network": f"'{network}', the run's own: the harness renamed the SDK's fixed '{SDK_NETWORK}' "
                "network in the compose file the SDK wrote, before compose started (the file's network key, "
                "services and algo-N aliases unchanged), so that runs at once do not share algo-N",
                "adapted": {"network": network},
            },
        )
    finally:
        with _renames_lock:
            _renames.pop(key, None)


def _sdk_class() -> Any | None:
    """``_LocalContainer`` where it writes its compose file by the method the harness adapts and
    uses the ``sagemaker-local`` network (not in SageMaker Studio); else None."""
    try:
        from sagemaker.train.local import local_container
    except ImportError:
        return None
    cls = getattr(local_container, "_LocalContainer", None)
    if not callable(getattr(cls, "_generate_compose_file", None)):
        return None
    try:
        studio = bool(local_container.check_for_studio())
    except Exception:  # noqa: BLE001 - the SDK refuses Studio apps it does not know: not ours to adapt
        studio = True
    return None if studio else cls


def _wrap(cls: Any) -> None:
    """Wrap the SDK's compose-file writer once per process: a run registered in ``_renames`` gets
    its own network; every other call is left exactly as the SDK makes it."""
    with _renames_lock:
        original = cls._generate_compose_file
        if getattr(original, _WRAPPED, False):
            return

        @functools.wraps(original)
        def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
            content = original(self, *args, **kwargs)
            with _renames_lock:
                entry = _renames.get(os.path.realpath(self.container_root))
            if entry is not None:
                rename_network(content, Path(self.container_root), *entry)
            return content

        setattr(generate, _WRAPPED, True)
        cls._generate_compose_file = generate


def rename_network(content: dict[str, Any], container_root: Path, network: str, labels: dict[str, str]) -> None:
    """Give the SDK's network ``network`` as its name and ``labels``, in ``content`` and in the file
    the SDK wrote from it (dumped as the SDK dumps it); raise where the SDK wrote no such network."""
    networks = content.get("networks")
    if not isinstance(networks, dict) or not isinstance(networks.get(SDK_NETWORK), dict):
        raise RungFailed(
            f"the SDK's compose file has no {SDK_NETWORK!r} network to give this run its own, so it would "
            "share algo-N with any other run",
            hint="this SDK version writes its compose file differently; report it with sdk/docker-compose.yaml",
        )
    networks[SDK_NETWORK] = {**networks[SDK_NETWORK], "name": network, "labels": dict(labels)}
    (container_root / "docker-compose.yaml").write_text(yaml.dump(content, default_flow_style=False))


def lock_path() -> Path:
    """The lock of the Docker engine this process talks to (``DOCKER_HOST``, else the default socket)."""
    engine = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    digest = hashlib.sha256(engine.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"harness-sagemaker-local-{digest}.lock"


@contextlib.contextmanager
def engine_lock(
    *, wait_s: float = LOCK_WAIT_S, report: Callable[[str], None] = say, path: Path | None = None
) -> Iterator[float]:
    """Hold the engine's lock for the block (yields the seconds waited for it). Another run holding
    it is waited for with one line naming its pid, for at most ``wait_s``; then :class:`RungFailed`."""
    path = path or lock_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    started = time.monotonic()
    try:
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                if time.monotonic() - started > wait_s:
                    raise RungFailed(
                        f"another sagemaker-local run (pid {holder}) held this Docker engine for more than "
                        f"{wait_s:g} s",
                        hint=f"wait for it to end, or stop it; its lock is {path}",
                    ) from None
                if not said:
                    report(
                        f"waiting for another sagemaker-local run (pid {holder}) on this Docker engine, "
                        f"at most {wait_s:g} s"
                    )
                    said = True
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield time.monotonic() - started
    finally:
        os.close(fd)  # releases the lock; the kernel releases it too when the process dies
