"""Planning the ``sagemaker-local`` rung: what the SDK will write, predicted without running it.

The dry-run shows each host's config files and environment as SDK v3 local mode writes them, and
the rung facts say how local mode differs from SageMaker (:func:`sdk_facts`). The harness builds
none of this for the run itself: the record keeps what the SDK really wrote. What the run needs
(its work dir, the instance type) is typed state on :class:`SdkPlan`, not read back from facts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from harness.backends import sdk_installs
from harness.backends.base import Plan
from harness.backends.containers import DOCKER_DEFAULT_SHM
from harness.backends.sagemaker_sdk import (
    DATA,
    ENTRYPOINT,
    PROBE_CHANNEL,
    RECORD_CHANNEL,
    probe_python_path,
    sdk_hyperparameters,
    sdk_version,
)
from harness.spec.host_contract import HostContract
from harness.spec.job import JobSpec

#: The fixed network every local-mode run on an engine shares (``local_container.py``).
SDK_NETWORK = "sagemaker-local"
#: Where the harness keeps its own files inside the SDK's container root.
OURS = "_harness"


@dataclass
class SdkPlan(Plan[JobSpec]):
    """The predicted contract, and where and how the SDK will run the job."""

    work_dir: Path = field(kw_only=True)  # the SDK's container root, made when the run starts
    instance_type: str = field(kw_only=True)  # local_cpu or local_gpu

    @property
    def ours(self) -> Path:
        """The harness's own files inside the container root (code copy, probe channels, kept hosts)."""
        return self.work_dir / OURS

    @property
    def project(self) -> str:
        """The compose project the SDK's containers belong to."""
        return compose_project(self.work_dir)


@functools.cache
def compose_command() -> tuple[str, ...] | None:
    """The compose the SDK will run: ``docker compose`` (v2 plugin), else ``docker-compose``.

    Mirrors ``_LocalContainer._get_compose_cmd_prefix``; that method runs ``docker compose
    version`` unguarded, so it needs the ``docker`` CLI even where only ``docker-compose`` is used.
    """
    try:
        out = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version\s+v?(\d+)", out.stdout)
    if out.returncode == 0 and match and int(match.group(1)) >= 2:
        return ("docker", "compose")
    return ("docker-compose",) if shutil.which("docker-compose") else None


@functools.cache
def compose_version() -> str:
    command = compose_command()
    if command is None:
        return "none"
    try:
        out = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return " ".join(command)
    return f"{' '.join(command)} {out.stdout.strip()}"


def run_network(container_root: Path) -> str:
    """The network of the run whose container root is ``container_root``: ``sagemaker-local-<8 hex>``
    (:mod:`harness.backends.sagemaker_local.isolation` renames the SDK's network to it)."""
    return f"{SDK_NETWORK}-{container_root.name.rsplit('-', 1)[-1]}"


def compose_project(container_root: Path) -> str:
    """The compose project name of a container root: its base name, normalised as compose does."""
    return re.sub(r"[^-_a-z0-9]", "", container_root.name.lower())


def sdk_channels(job: JobSpec) -> list[str]:
    """Channel order in ``inputdataconfig.json``: the user's, the harness's, then ModelTrainer's."""
    return [*job.channels, PROBE_CHANNEL, RECORD_CHANNEL, *sdk_installs.sdk_channels(job), "code", "sm_drivers"]


def sdk_input_data_config(job: JobSpec) -> dict[str, dict[str, str]]:
    """Only ``TrainingInputMode: File`` (whatever the channel asks) and ``ContentType``."""
    config: dict[str, dict[str, str]] = {}
    for name in sdk_channels(job):
        config[name] = {"TrainingInputMode": "File"}
        channel = job.channels.get(name)
        if channel is not None and channel.content_type:
            config[name]["ContentType"] = channel.content_type
    return config


def sdk_resource_config(job: JobSpec, host: str, instance_type: str) -> dict[str, Any]:
    """No instance groups, the interface ``ethwe`` (absent in the container), a ``local_*`` type."""
    return {
        "current_host": host,
        "hosts": job.hosts,
        "network_interface_name": "ethwe",
        "current_instance_type": instance_type,
    }


def sdk_environment(job: JobSpec) -> dict[str, str]:
    """``ModelTrainer(environment=...)``: the job's, with the probe's variables."""
    return {
        "PYTHONUNBUFFERED": "1",
        **job.environment,
        "PYTHONPATH": probe_python_path(job),
        "HARNESS_PROBE_DIR": str(DATA / RECORD_CHANNEL),
        **sdk_installs.sdk_environment(job),  # pip installs requirements.txt from the wheelhouse channel
    }


def sdk_facts(job: JobSpec, instance_type: str, num_gpus: int) -> dict[str, Any]:
    """How this rung differs from SageMaker, as the SDK makes it differ."""
    return {
        "sdk": f"sagemaker {sdk_version() or 'not installed'}: ModelTrainer, Mode.LOCAL_CONTAINER",
        "compose": f"{compose_version()}: up --build --abort-on-container-exit; never down",
        "launcher": "SDK v3 drivers (sm_train.sh, environment.py, "
        f"{'torchrun_driver.py' if job.distribution == 'torchrun' else 'basic_script_driver.py'})"
        + (f"; the job asks for the {job.launcher} launcher" if job.launcher != "model-trainer" else ""),
        "instance_type": f"{instance_type} (the job's {job.instance_type} is not seen by the containers)",
        "hostnames": "algo-N are network aliases; no hostname is set, so gethostname() is the container id",
        "network": f"the SDK names one network, '{SDK_NETWORK}', for every local-mode run on an engine; the "
        f"harness gives each run its own ('{SDK_NETWORK}-<run>', renamed in the SDK's compose file)",
        "model_dir": "one host directory shared as every host's /opt/ml/model (SageMaker gives each host its "
        "own); the record attributes its files to hosts from the probe's write events",
        "opt_ml": "per host: input/ and output/; shared: model/; no /opt/ml/code, no /opt/ml/checkpoints",
        "channels": "local directories bind-mounted read-write; s3:// channels downloaded by the SDK on the "
        "host (download_folder) into a temporary directory, then mounted; FastFile not honoured (the files are "
        "the same), ShardedByS3Key refused (local mode would give every host every file of a local directory)",
        "code": "a copy of source_dir as the code channel, read-write, cwd of the launcher "
        "(the SDK would mount the directory itself)",
        "resourceconfig": "current_host, hosts, network_interface_name, current_instance_type only "
        "(no instance_groups, no current_group_name)",
        "network_interface_name": "ethwe in resourceconfig.json, which no container has (eth0); the torchrun "
        "driver copies it into NCCL_SOCKET_IFNAME",
        "shm_size": f"Docker's default ({DOCKER_DEFAULT_SHM}): the SDK has no shm setting",
        "ulimits": "Docker's defaults: the SDK sets none",
        "gpus": "all to every container (local_gpu)" if num_gpus else "none (local_cpu)",
        "image_requirements": "python3 (or python) and pip3 (or pip) on PATH: sm_train.sh exits 1 without them",
        "lifecycle": "the first container to exit makes compose stop the others (SIGTERM, 10 s grace)",
        "environment": "the job's Environment and TRAINING_JOB_NAME (<name>-<timestamp>); the SDK adds "
        "S3_ENDPOINT_URL and AWS_REGION for s3 channels (no credentials); the harness adds PYTHONUNBUFFERED, "
        "PYTHONPATH and HARNESS_PROBE_DIR",
        "probe": f"extra channels {PROBE_CHANNEL} (PYTHONPATH) and {RECORD_CHANNEL} (HARNESS_PROBE_DIR): "
        "they appear in inputdataconfig.json and SM_CHANNELS",
        "max_run": "enforced by the harness (local mode ignores StoppingCondition)",
        "machine": {"num_cpus": os.cpu_count() or 1, "num_gpus": num_gpus, "network_interface": "eth0"},
    }


def host_contract(job: JobSpec, host: str, instance_type: str) -> HostContract:
    """What the SDK writes for ``host``: its config files, the container's environment and command."""
    return HostContract(
        host=host,
        opt_ml=PurePosixPath("/opt/ml"),
        files={
            "input/config/hyperparameters.json": json.dumps(sdk_hyperparameters(job)),
            "input/config/resourceconfig.json": json.dumps(sdk_resource_config(job, host, instance_type)),
            "input/config/inputdataconfig.json": json.dumps(sdk_input_data_config(job)),
        },
        platform_env={**sdk_environment(job), "TRAINING_JOB_NAME": f"{job.name}-<timestamp>"},
        launcher_env={},  # written in the container by sm_drivers/scripts/environment.py
        command=ENTRYPOINT,
        cwd=DATA / "code",
        facts={"launcher": "sagemaker-sdk-v3"},
    )


def plan_job(rung: str, job: JobSpec, *, num_gpus: int, image: str | None, stop_grace_s: float) -> SdkPlan:
    """The plan of one run: a fresh container root, ``local_gpu`` where GPUs are passed, the facts.
    ``image`` is the rung's setting (the job's, else the harness's torch image, when unset)."""
    instance_type = "local_gpu" if num_gpus else "local_cpu"
    work = Path(tempfile.gettempdir()) / f"harness-sagemaker-local-{uuid.uuid4().hex[:8]}"
    facts = {
        "work_dir": str(work),
        "compose_project": compose_project(work),
        "image": image or job.image or "harness/torch (built by harness.runtime.images.ensure_torch_image)",
        **sdk_facts(job, instance_type, num_gpus),
        "launcher_env": "set in each container by sm_drivers/scripts/environment.py "
        "(recorded from sm_training.env after the run)",
        "stop": f"SIGTERM, SIGKILL after {stop_grace_s:g} s",
    }
    sdk_installs.sdk_fact(job, facts)
    hosts = {host: host_contract(job, host, instance_type) for host in job.hosts}
    return SdkPlan(rung, job, hosts, facts, work_dir=work, instance_type=instance_type)
