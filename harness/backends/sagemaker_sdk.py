"""What the two SageMaker rungs share: the SDK v3 ``ModelTrainer`` a user would write, the SDK's
serialisation of a job, and the probe's way into the SDK's containers.

``sagemaker-local`` (``Mode.LOCAL_CONTAINER``) and ``sagemaker`` (``Mode.SAGEMAKER_TRAINING_JOB``)
must build the same ``ModelTrainer`` for a job, so that the only difference between the two
rungs is where the SDK sends it; both rungs build it here and neither imports the other.

The SDK controls the containers' mounts and command, so the probe travels as one more input
channel (:data:`PROBE_CHANNEL`, first on ``PYTHONPATH``). Every container gets the same
environment, so the probe learns its host from ``resourceconfig.json`` (a ``sitecustomize``
shim, :func:`write_probe_channel`). The SDK is imported only inside the functions that need it:
planning and the other rungs work without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from harness.backends.hosts import PROBE_DIR
from harness.errors import RungFailed
from harness.record.run_record import RecordWriter
from harness.spec.job import JobSpec

#: The pip extra that installs the SDK (``pip install 'sagemaker-parity-harness[sagemaker]'``).
SDK_EXTRA = "sagemaker"
PROBE_CHANNEL, RECORD_CHANNEL = "harness_probe", "harness_record"
#: Channels ModelTrainer adds after the user's (``code``, ``sm_drivers``) and the harness's own (the probe's,
#: and ``harness_wheels`` for requirements.txt: :data:`harness.backends.sdk_installs.WHEELS_CHANNEL`).
RESERVED_CHANNELS = ("code", "sm_drivers", PROBE_CHANNEL, RECORD_CHANNEL, "harness_wheels")
DATA = PurePosixPath("/opt/ml/input/data")
#: ModelTrainer's container command with ``source_code`` (sagemaker-core ``training/constants.py``).
SM_TRAIN = f"{DATA}/sm_drivers/sm_train.sh"
ENTRYPOINT = ["/bin/bash", "-c", f"chmod +x {SM_TRAIN} && {SM_TRAIN}"]
#: Runs in every Python process of the job before the probe: every container gets the same
#: environment, so the host name comes from the file the SDK writes for each host.
_SHIM = """\
# Written by harness.backends.sagemaker_sdk: name the host, then run the harness probe.
import json, os
if not os.environ.get("HARNESS_HOST"):
    try:
        with open("/opt/ml/input/config/resourceconfig.json") as _config:
            os.environ["HARNESS_HOST"] = json.load(_config)["current_host"]
    except Exception:
        pass
_probe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_harness_sitecustomize.py")
with open(_probe) as _source:
    exec(compile(_source.read(), _probe, "exec"))
"""


def sdk_version() -> str | None:
    """The installed SageMaker Python SDK's version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sagemaker")
    except PackageNotFoundError:
        return None


def sdk_missing_reason() -> str | None:
    """Why the SDK v3 cannot be used from this Python, or None."""
    import importlib.util

    found = sdk_version()
    hint = f"pip install 'sagemaker-parity-harness[{SDK_EXTRA}]' (SageMaker Python SDK v3, about 1 GB)"
    if found is None or importlib.util.find_spec("sagemaker") is None:
        return f"the SageMaker Python SDK is not installed in {sys.executable}; {hint}"
    if int(found.split(".")[0]) < 3:
        return f"the SageMaker Python SDK here is {found}; this rung drives v3's ModelTrainer: {hint}"
    if importlib.util.find_spec("sagemaker.train") is None:
        return f"sagemaker {found} has no sagemaker.train (ModelTrainer); {hint}"
    return None


def sdk_configs() -> Any:
    """The SDK's config classes (``Compute``, ``InputData``, ``SourceCode``, ...):
    ``sagemaker.core.training.configs``, else ``sagemaker.train.configs``, which later SDKs keep
    only as a deprecated alias of it."""
    try:
        from sagemaker.core.training import configs
    except ImportError:
        from sagemaker.train import configs
    return configs


def sdk_hyperparameters(job: JobSpec) -> dict[str, str]:
    """``safe_serialize`` of each value: strings as they are, anything else ``json.dumps``."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in job.hyperparameters.items()}


def sdk_input_data(job: JobSpec) -> list[Any]:
    """The job's channels as ``InputData`` (which refuses ``content_type=None``: given only when set)."""
    return [
        sdk_configs().InputData(
            channel_name=name,
            data_source=channel.source,
            **({"content_type": channel.content_type} if channel.content_type else {}),
        )
        for name, channel in job.channels.items()
    ]


def model_trainer(job: JobSpec, **settings: Any) -> Any:
    """The ``ModelTrainer`` a user would write for this job: its name, distribution, stopping
    condition and hyperparameters, with the rung's ``settings`` (mode, image, code, compute,
    channels, environment, session). The SDK is imported only here."""
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    StoppingCondition = sdk_configs().StoppingCondition  # noqa: N806 - the SDK's class

    try:
        return ModelTrainer(
            base_job_name=job.name,
            distributed=Torchrun(process_count_per_node=job.processes_per_host)
            if job.distribution == "torchrun"
            else None,
            stopping_condition=StoppingCondition(max_runtime_in_seconds=job.max_run),
            hyperparameters=dict(job.hyperparameters),
            **settings,
        )
    except Exception as exc:  # pydantic's ValidationError and the SDK's own checks
        raise RungFailed(
            f"ModelTrainer refused the job: {exc}",
            hint="the SageMaker SDK validates what it would send; fix the job spec",
        ) from exc


def probe_python_path(job: JobSpec) -> str:
    """``PYTHONPATH`` in the SDK's containers: the probe's channel first, then the job's own."""
    return ":".join(p for p in (str(DATA / PROBE_CHANNEL), job.environment.get("PYTHONPATH")) if p)


def write_probe_channel(destination: Path) -> None:
    """The probe as an input channel for the SDK's containers: on ``PYTHONPATH`` it names its host
    from ``resourceconfig.json`` (every container has the same environment), then runs."""
    shutil.copytree(PROBE_DIR, destination, ignore=shutil.ignore_patterns("__pycache__"))
    (destination / "sitecustomize.py").rename(destination / "_harness_sitecustomize.py")
    (destination / "sitecustomize.py").write_text(_SHIM, encoding="utf-8")


#: The probe's own files, relative to ``HARNESS_PROBE_DIR``: the only files a SageMaker rung takes
#: from where the job's processes could write (the record channel, ``output.tar.gz``) into the record.
PROBE_FILES = re.compile(
    r"(?:processes/[A-Za-z0-9_][A-Za-z0-9_.-]*\.json"
    r"|ranks/rank-\d+\.(?:log|jsonl|heartbeat|stacks\.txt)"
    r"|hosts/(?P<host>[A-Za-z0-9_][A-Za-z0-9_.-]*)/fingerprint\.json)"
    r"(?P<partial>\.\d+\.tmp)?"  # the probe writes JSON under a temporary name first
)
#: How many ignored paths a rung fact lists (then their count).
SHOWN_IGNORED = 20


def is_probe_file(name: str, hosts: Sequence[str], *, partial: bool = False) -> bool:
    """Whether ``name`` (relative, POSIX) is one of the probe's files: ``processes/*.json``,
    ``ranks/rank-N.{log,jsonl,heartbeat,stacks.txt}`` or the fingerprint of one of ``hosts``;
    with ``partial``, whether it is one of them under the temporary name it is written with."""
    match = PROBE_FILES.fullmatch(name)
    return (
        match is not None
        and bool(match.group("partial")) == partial
        and (match.group("host") is None or match.group("host") in hosts)
    )


def copy_probe_files(source: Path, record_root: Path, hosts: Sequence[str]) -> list[str]:
    """Copy the probe's files from ``source``, a directory the job's processes could write into,
    to their places in the record; anything else (``manifest.json``, a symbolic link, a file of
    another name) stays out. Returns what was left out, relative to ``source``, except the
    probe's temporary files (a killed process leaves them)."""
    ignored = []
    for directory, dirs, files in os.walk(source):  # symbolic links to directories are not followed
        for name in files + [d for d in dirs if (Path(directory) / d).is_symlink()]:
            path = Path(directory) / name
            relative = path.relative_to(source).as_posix()
            regular = path.is_file() and not path.is_symlink()
            if regular and is_probe_file(relative, hosts):
                (record_root / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, record_root / relative)
            elif not (regular and is_probe_file(relative, hosts, partial=True)):
                ignored.append(relative)
    return sorted(ignored)


def ignored_fact(ignored: list[str], where: str) -> str:
    """The rung fact for what a job left where the probe writes that was not taken into the record."""
    more = f" and {len(ignored) - SHOWN_IGNORED} more" if len(ignored) > SHOWN_IGNORED else ""
    return (
        f"{len(ignored)} entries of {where} were left out of the record (not the probe's files, "
        f"or links): {', '.join(ignored[:SHOWN_IGNORED])}{more}"
    )


def probe_reach(job: JobSpec, record: RecordWriter) -> dict[str, Any]:
    """Where the probe got in: processes seen per host, and ranks with a log of their own."""
    seen: dict[str, int] = {}
    for path in (record.root / "processes").glob("*.json"):
        host = path.stem.rsplit("-", 1)[0]
        seen[host] = seen.get(host, 0) + 1
    ranks = sorted(int(p.stem.removeprefix("rank-")) for p in (record.root / "ranks").glob("rank-*.log"))
    missing = [host for host in job.hosts if host not in seen]
    return {"processes": seen, "rank_logs": ranks, "not_reached": missing or "none", "world_size": job.world_size}
