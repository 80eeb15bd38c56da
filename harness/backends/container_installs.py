"""``requirements.txt`` on the docker rung: in each container at start, before the launcher, the
container's own Python runs ``-m pip install -r requirements.txt`` (:mod:`harness.runtime.install_requirements`
as the entrypoint, which then ``exec``\\ s the launcher), offline, from a wheelhouse the host's pip
made once (:func:`harness.runtime.requirements.wheelhouse`) and mounted read-only."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from harness.record.run_record import RecordWriter, now, write_json
from harness.runtime.requirements import (
    SCRIPT,
    InstallFailed,
    add_to_fact,
    cache_root,
    fail_hosts,
    file_record,
    image_python,
    installed_summary,
    make_wheelhouse,
    requirements_file,
    short_target,
)
from harness.spec.host_contract import (
    REQUIREMENTS_FILE,
    HostContract,
    Machine,
    requirements_announcement,
    requirements_command,
    requirements_failure_message,
)
from harness.spec.job import JobSpec

SETUP_MOUNT = PurePosixPath("/opt/harness/setup")
WHEELS_MOUNT = PurePosixPath("/opt/harness/wheels")


def plan_fact(job: JobSpec, facts: dict[str, Any]) -> None:
    """The ``requirements`` rung fact of a docker plan: what will install ``requirements.txt``, and where."""
    if requirements_file(job) is None:
        return
    how = (
        "installed in each container at start, before the launcher, by the container's python "
        f"(-m pip install -r {REQUIREMENTS_FILE}) with --no-index from a wheelhouse the host's pip "
        f"made (mounted read-only at {WHEELS_MOUNT}); the entrypoint is {SCRIPT.name}, which then "
        "execs the launcher's command"
    )
    facts["requirements"] = {"how": how, "cache": str(cache_root())}


@dataclass(frozen=True)
class ContainerSetup:
    """What each container needs to install the requirements at start: the wheelhouse and a
    per-host directory holding the installer (where it writes its result)."""

    wheelhouse: Path
    wheelhouse_reused: bool
    setup_dirs: dict[str, Path]
    python: str = "python3"

    def mounts(self, host: str) -> list[Any]:
        from docker.types import Mount

        return [
            Mount(str(WHEELS_MOUNT), str(self.wheelhouse), type="bind", read_only=True),
            Mount(str(SETUP_MOUNT), str(self.setup_dirs[host]), type="bind"),
        ]

    def wrap(self, job: JobSpec, contract: HostContract, probe_mount: str) -> HostContract:
        """The contract with the installer in front of its command (``received/command.json``
        keeps the launcher's own command)."""
        announce = requirements_announcement(job, ["{python}", "-m", "pip", "install", "-r", REQUIREMENTS_FILE])
        installer = [
            self.python,
            "-I",
            str(SETUP_MOUNT / SCRIPT.name),
            "--result",
            str(SETUP_MOUNT / "result.json"),
            "--pip-env",
            "PIP_NO_INDEX=1",
            "--pip-env",
            f"PIP_FIND_LINKS={WHEELS_MOUNT}",
            "--pip-env",
            "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "--drop-path",
            probe_mount,
            *(arg for line in announce for arg in ("--announce", line)),
            "--",
        ]
        return replace(contract, command=[*installer, *contract.command])


def container_contract(
    setup: ContainerSetup | None, job: JobSpec, contract: HostContract, probe_mount: str
) -> HostContract:
    """What the container runs: the installer in front of the launcher, where there are requirements."""
    return contract if setup is None else setup.wrap(job, contract, probe_mount)


def container_mounts(setup: ContainerSetup | None, host: str) -> list[Any]:
    return [] if setup is None else setup.mounts(host)


def prepare_containers(
    client: Any, image: str, job: JobSpec, hosts: list[str], work: Path, record: RecordWriter, labels: dict[str, str]
) -> ContainerSetup | None:
    """The wheelhouse for the image's Python (built once on the host) and each host's setup
    directory; None without ``requirements.txt``. Raises :class:`InstallFailed` when the host's
    pip cannot get the wheels (a requirement that does not exist, ...)."""
    path = requirements_file(job)
    if path is None:
        return None
    target = image_python(client, image, labels)
    wheelhouse, reused = make_wheelhouse(path, target)
    setup_dirs = {}
    for host in hosts:
        setup_dirs[host] = work / host / "setup"
        setup_dirs[host].mkdir(parents=True, exist_ok=True)
        shutil.copy2(SCRIPT, setup_dirs[host] / SCRIPT.name)
    add_to_fact(record, wheelhouse=str(wheelhouse), image_python=short_target(target))
    return ContainerSetup(wheelhouse, reused, setup_dirs)


def fail_containers(job: JobSpec, hosts: list[str], record: RecordWriter, failed: InstallFailed) -> None:
    """The hosts of a run whose wheelhouse could not be made: failed as their launchers would
    (the same pip error), no container started."""
    assert job.source_dir is not None
    command = requirements_command(job, Machine(num_cpus=1))
    info = {
        **file_record(job.source_dir / REQUIREMENTS_FILE),
        "launcher": job.launcher,
        "command": command,
        "emulated": "in each container at start, from a wheelhouse made on the host",
        "exit_code": failed.returncode,
        "stderr": failed.stderr,
        "stage": failed.stage,
    }
    fail_hosts(job, hosts, record, info, failed, command, now())


def collect_containers(job: JobSpec, setup: ContainerSetup | None, record: RecordWriter) -> None:
    """Each host's ``received/requirements.json`` from what its installer wrote; a host whose
    install failed gets the launcher's failure message in place of the one for a failed script."""
    if setup is None:
        return
    assert job.source_dir is not None
    installed: dict[str, dict[str, str]] = {}
    for host, directory in setup.setup_dirs.items():
        info: dict[str, Any] = {
            **file_record(job.source_dir / REQUIREMENTS_FILE),
            "launcher": job.launcher,
            "emulated": "in the container at start, before the launcher, from the wheelhouse",
            "wheelhouse": str(setup.wheelhouse),
            "wheelhouse_reused": setup.wheelhouse_reused,
            "wheels": sorted(p.name for p in setup.wheelhouse.glob("*.whl")),
        }
        result_file = directory / "result.json"
        if not result_file.is_file():
            info["exit_code"] = None  # stopped before the installer finished
            write_json(record.host_dir(host) / "received" / "requirements.json", info)
            continue
        result = json.loads(result_file.read_text())
        info.update(result)
        write_json(record.host_dir(host) / "received" / "requirements.json", info)
        installed[host] = result.get("installed", {})
        if result.get("exit_code"):
            message = requirements_failure_message(job, result["exit_code"], result["command"], result["stderr"])
            (record.host_dir(host) / "failure").write_text(message)
            record.host_result(host, failure_reason=message[:1024], failure_written_by="launcher")
    if installed:
        add_to_fact(record, installed=installed_summary(installed))
