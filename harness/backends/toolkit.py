"""The real SageMaker training toolkit on the docker rung, where the image has it.

``launcher: toolkit`` is an emulation (:mod:`harness.spec.host_contract`) on every rung the harness runs
itself: if it were wrong, every rung would agree with the others and disagree with SageMaker. An
image that carries the toolkit (:func:`harness.runtime.images.ensure_toolkit_image`, or a PyTorch deep
learning container loaded with ``docker load``) runs the toolkit itself instead: the rung gives
each host the platform layer only (the ``/opt/ml/input/config`` files, the channels,
``TRAINING_JOB_NAME`` and the job's ``Environment``) and starts ``train``, and the toolkit derives
the ``SM_*`` variables, ``MASTER_*``, ``NCCL_*`` and the command from them, as on SageMaker.

Afterwards each host's ``received/`` says what the toolkit handed the entry point, read from the
probe's record of the process ``train`` started (``env.json``, ``command.json``), beside what the
rung gave the container (``container_env.json``, ``container_command.json``), so that the
contract check compares the emulation on one rung with the real toolkit on the other.
docs/toolkit.md lists where the two differ, and tests/test_toolkit.py holds them to it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.errors import ImageError
from harness.record.run_record import RecordFiles, RecordWriter, redact_env, write_json
from harness.runtime.images import (
    TOOLKIT_IMAGE,
    TOOLKIT_LABEL,
    TOOLKIT_VERSIONS,
    python_json_in_image,
    toolkit_description,
)
from harness.spec.host_contract import HostContract
from harness.spec.job import JobSpec

__all__ = ["EMULATED", "found_in_image", "hand_over", "image_for", "planned", "record_launched"]

#: The ``toolkit`` rung fact where the image has no toolkit and the contract's emulation runs.
EMULATED = "emulated (harness/spec/host_contract.py)"
#: The console script the DLCs run on ``docker run IMAGE train`` (sagemaker-training ``setup.py``).
TRAIN = "train"
_MODULE_VARIABLE = "SAGEMAKER_TRAINING_MODULE"


def image_for(client: Any, job: JobSpec, override: str | None) -> tuple[str, str | None]:
    """The image the job's hosts run, and why it lacks the toolkit where the rung chose it.

    A script with ``launcher: toolkit`` and no image of its own (the rung's ``image`` or the
    job's) runs the toolkit image by default, built here when missing
    (:func:`harness.runtime.images.ensure_toolkit_image`): the ladder a user climbs then tests
    SageMaker's own launcher, not only the harness's emulation of it. Where this machine cannot
    build it, the torch image runs the emulation, and the second value says why. ``harness/toolkit``
    named explicitly is built too, and its failure is the run's. Any other image is
    :func:`harness.backends.containers.resolve_image`'s."""
    from harness.backends.containers import resolve_image
    from harness.runtime import images

    name = override or job.image if job.is_script_mode else job.image
    if job.is_script_mode and name in (TOOLKIT_IMAGE, f"{TOOLKIT_IMAGE}:latest"):
        return images.ensure_toolkit_image(client), None
    if name is None and job.is_script_mode and job.launcher == "toolkit":
        blocker = images.toolkit_build_blocker(client)
        if blocker is None:
            try:
                return images.ensure_toolkit_image(client), None
            except ImageError as exc:
                blocker = exc.message
        return images.ensure_torch_image(client), blocker
    return resolve_image(client, job, override), None


def planned(job: JobSpec, override: str | None, blocker: str | None) -> str:
    """The ``toolkit`` fact of a plan: which launcher layer the hosts will run, as far as it is
    known before the image is (:func:`image_for` decides); ``blocker`` is
    :func:`harness.runtime.images.toolkit_build_blocker`'s answer, asked only for the default image."""
    name = override or job.image
    if name in (TOOLKIT_IMAGE, f"{TOOLKIT_IMAGE}:latest") or (name is None and blocker is None):
        return f"{toolkit_description()} (the {TOOLKIT_IMAGE} image, built here when missing)"
    if name is None:
        return f"{EMULATED}: {blocker}"
    return f"{EMULATED}, unless the image has the toolkit (decided when it is known)"


def found_in_image(client: Any, image: str, labels: dict[str, str]) -> str | None:
    """The toolkit ``image`` runs on ``train``, as ``name version, ...``; None where it has none.

    The harness's toolkit image says so in its label; an image without the label that names a
    framework module the way the DLCs do (``SAGEMAKER_TRAINING_MODULE`` in its environment) is
    asked for the versions its Python has installed (one short container, no network)."""
    config = client.images.get(image).attrs.get("Config") or {}
    label = (config.get("Labels") or {}).get(TOOLKIT_LABEL)
    if label:
        return str(label)
    if not any(entry.startswith(f"{_MODULE_VARIABLE}=") for entry in config.get("Env") or []):
        return None
    code = (
        "import json, importlib.metadata as m\n"
        "found = {}\n"
        f"for name in {list(TOOLKIT_VERSIONS)!r}:\n"
        "    try: found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))"
    )
    from docker.errors import APIError, ContainerError

    try:
        versions = python_json_in_image(client, image, code, labels)
    except (ContainerError, APIError, ValueError, IndexError):
        return None
    return toolkit_description(versions) if "sagemaker-training" in versions else None


def hand_over(contracts: dict[str, HostContract], toolkit: str) -> dict[str, HostContract]:
    """Each host's contract as the rung gives it to the toolkit: the platform layer (files and
    variables) and ``train``; the launcher layer is the toolkit's to make. The working directory
    stays the code directory, where the host's tree holds the code (the DLCs start ``train`` in
    ``/``; the toolkit runs the entry point in ``/opt/ml/code`` either way)."""
    return {
        host: replace(contract, launcher_env={}, command=[TRAIN], facts={**contract.facts, "toolkit": toolkit})
        for host, contract in contracts.items()
    }


def record_launched(record: RecordWriter, hosts: Iterable[str]) -> dict[str, bool]:
    """Each host's ``received/env.json`` and ``command.json`` as the toolkit launched the entry
    point (the probe's record of the last Python process ``train`` started: the script's
    interpreter, or ``torchrun``); the rung's own kept as ``container_env.json`` and
    ``container_command.json``. A host whose toolkit started no Python process (it failed first,
    or the entry point is a shell script) keeps the rung's. Returns, per host, whether it was found."""
    processes = RecordFiles(record.root).processes()
    found = {}
    for host in hosts:
        child = _launched(processes, host)
        found[host] = child is not None
        if child is None:
            continue
        received = record.host_dir(host) / "received"
        for name in ("env", "command"):
            (received / f"{name}.json").replace(received / f"container_{name}.json")
        write_json(received / "env.json", redact_env(dict(child.get("env") or {})))
        write_json(received / "command.json", {"argv": launched_argv(child), "cwd": child.get("cwd")})
    return found


def _launched(processes: list[dict[str, Any]], host: str) -> dict[str, Any] | None:
    ours = [p for p in processes if p.get("host") == host]
    trainers = {p["pid"] for p in ours if _script(p) == TRAIN}
    children = [p for p in ours if p.get("ppid") in trainers and _script(p) != TRAIN]
    return max(children, key=lambda p: str(p.get("started_at") or ""), default=None)


def _script(process: dict[str, Any]) -> str:
    argv = process.get("argv") or []
    return os.path.basename(str(argv[1])) if len(argv) > 1 else ""


def launched_argv(process: dict[str, Any]) -> list[str]:
    """The command the toolkit ran, from the probe's record of the process: the interpreter's own
    command line (``/usr/bin/python3 -- train.py ...``), except for a console script, which the
    toolkit runs by name (``torchrun ...``: the interpreter then ran the script's file)."""
    argv, orig = [str(a) for a in process.get("argv") or []], [str(a) for a in process.get("orig_argv") or []]
    if len(argv) > 1 and len(orig) > 1 and orig[1] == argv[1] and Path(argv[1]).is_absolute():
        return [Path(argv[1]).name, *argv[2:]]
    return orig or argv
