"""``requirements.txt`` on the SDK's rungs (``sagemaker-local``, ``sagemaker``): the SDK's own
``sm_train.sh`` installs it, given ``SourceCode(requirements="requirements.txt")``; on
``sagemaker-local`` offline, from a wheelhouse the host's pip made, given as an extra channel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from harness.record.run_record import RecordWriter, now, write_json
from harness.runtime.requirements import (
    DONE_MARK,
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
)
from harness.spec.job import JobSpec

#: The input channel that carries the wheelhouse into the SDK's containers (the SDK controls the
#: mounts: a channel is the only way in, as for the probe).
WHEELS_CHANNEL = "harness_wheels"
#: ``sm_train.sh`` runs the SDK's installer after ``cd`` to the code channel (``templates.py``).
SDK_COMMAND = ["python3", "/opt/ml/input/data/sm_drivers/scripts/install_requirements.py", REQUIREMENTS_FILE]


def sdk_channels(job: JobSpec) -> list[str]:
    """The harness's extra channel for the SDK's containers, where the job has requirements."""
    return [WHEELS_CHANNEL] if requirements_file(job) is not None else []


def sdk_environment(job: JobSpec) -> dict[str, str]:
    """``ModelTrainer(environment=...)`` additions: pip in the SDK's containers installs offline
    from the wheelhouse channel. The SDK gives one environment to the whole container, so the
    job's processes see these too (a rung fact says so)."""
    if requirements_file(job) is None:
        return {}
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": f"/opt/ml/input/data/{WHEELS_CHANNEL}"}


def sdk_fact(job: JobSpec, facts: dict[str, Any]) -> None:
    """The ``requirements`` rung fact of a ``sagemaker-local`` plan."""
    if requirements_file(job) is None:
        return
    facts["requirements"] = {
        "how": "installed by the SDK's own sm_train.sh (SourceCode.requirements='requirements.txt', set by the "
        f"harness): `{' '.join(SDK_COMMAND)}` in the code channel, i.e. python3 -m pip install -r requirements.txt; "
        f"offline, from a wheelhouse the host's pip made, given as the extra channel {WHEELS_CHANNEL} "
        f"(PIP_NO_INDEX=1 and PIP_FIND_LINKS in the job's environment, which the job's processes see too)",
        "cache": str(cache_root()),
    }


def prepare_sdk(
    client: Any, image: str, job: JobSpec, ours: Path, labels: dict[str, str], record: RecordWriter
) -> bool:
    """The wheelhouse, copied into the channel directory ``ours/harness_wheels`` (channels are
    mounted read-write: the cache itself is never given to a container). False when the host's
    pip could not make it: every host is then failed as ``sm_train.sh`` fails, before compose runs."""
    path = requirements_file(job)
    if path is None:
        return True
    driver_job = job.model_copy(update={"launcher": "model-trainer"})
    try:
        target = image_python(client, image, labels)
        wheelhouse, reused = make_wheelhouse(path, target)
    except InstallFailed as failed:
        info = {
            **file_record(path),
            "launcher": "SDK v3 sm_train.sh",
            "command": SDK_COMMAND,
            "emulated": "by the SDK's driver in each container, from a wheelhouse made on the host",
            "exit_code": failed.returncode,
            "stderr": failed.stderr,
            "stage": failed.stage,
        }
        fail_hosts(driver_job, job.hosts, record, info, failed, SDK_COMMAND, now())
        return False
    shutil.copytree(wheelhouse, ours / WHEELS_CHANNEL, ignore=shutil.ignore_patterns(DONE_MARK))
    add_to_fact(record, wheelhouse=str(wheelhouse), image_python=short_target(target))
    (ours / f"{WHEELS_CHANNEL}.json").write_text(json.dumps({"wheelhouse": str(wheelhouse), "reused": reused}))
    return True


def collect_sdk(job: JobSpec, ours: Path, record: RecordWriter) -> None:
    """Each host's ``received/requirements.json`` from its log: the SDK's driver writes no report,
    so what was installed is pip's ``Successfully installed`` line, and the install succeeded when
    ``sm_train.sh`` went on to its driver (``Running ... driver``)."""
    path = requirements_file(job)
    made = ours / f"{WHEELS_CHANNEL}.json"
    if path is None or not made.is_file():
        return
    wheelhouse = json.loads(made.read_text())
    installed_by_host: dict[str, dict[str, str]] = {}
    for host in job.hosts:
        log = record.root / "hosts" / host / "log.txt"
        lines = (
            [line.partition(" ")[2] for line in log.read_text(errors="replace").splitlines()] if log.is_file() else []
        )
        installed: dict[str, str] = {}
        for line in lines:
            if line.startswith("Successfully installed "):
                for item in line.split()[2:]:
                    name, _, version = item.rpartition("-")
                    installed[name] = version
        went_on = any(line.startswith("Running ") and "river" in line for line in lines)
        installed_by_host[host] = installed
        write_json(
            record.host_dir(host) / "received" / "requirements.json",
            {
                **file_record(path),
                "launcher": "SDK v3 sm_train.sh",
                "command": SDK_COMMAND,
                "cwd": "/opt/ml/input/data/code",
                "emulated": f"by the SDK's driver in the container, from the {WHEELS_CHANNEL} channel",
                "wheelhouse": wheelhouse["wheelhouse"],
                "wheelhouse_reused": wheelhouse["reused"],
                "wheels": sorted(p.name for p in (ours / WHEELS_CHANNEL).glob("*.whl")),
                "installed": installed,
                "succeeded": went_on,
                "installed_from": "pip's 'Successfully installed' line in the log",
            },
        )
    add_to_fact(record, installed=installed_summary(installed_by_host))
