"""The ``sagemaker-local`` rung: the job run by the SageMaker Python SDK v3 itself, in local mode.

``ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)`` with ``source_code`` (the job's
``source_dir``/``entry_point``), ``Torchrun(process_count_per_node=...)``, the job's
hyperparameters, environment and channels (local directories as ``InputData``). The SDK writes
the config files and a compose file with one service per host and runs ``docker compose up
--abort-on-container-exit``; its drivers (``sm_train.sh``) launch the entry point. The harness
does not build any of the contract here: the record holds what the SDK really wrote.

What the harness adds, without changing what the SDK does:

* **the probe**: two extra channels, ``harness_probe`` (the probe, on ``PYTHONPATH``) and
  ``harness_record`` (a writable host directory, ``HARNESS_PROBE_DIR``); the SDK controls the
  mounts, so channels are the only way in. Every container gets the same environment, so the
  probe learns its host from ``resourceconfig.json`` (a ``sitecustomize`` shim, below).
* **per-host evidence the SDK deletes**: on success the SDK removes each host's ``input`` and
  ``output`` directories. The harness makes them symbolic links into its own work dir before the
  SDK starts (the SDK's ``rmtree`` removes the links, not what they point to), so the config
  files, ``sm_training.env``, ``output/data`` and ``failure`` of each host survive.
* **labels**: the SDK's compose file has no labels, so each run uses its own tag of the image
  carrying ``harness.run_id`` and the owner's pid; containers inherit image labels, so
  :func:`harness.backends.docker.gc` finds what a killed harness left.
* **lifecycle**: ``max_run`` and Ctrl-C stop the containers (SIGTERM, then SIGKILL) and the
  compose process; afterwards the containers the SDK leaves behind (it never runs ``down``), its
  ``sagemaker-local`` network (when no other container uses it), the run's image tag and the
  SDK's work dir are removed, whatever the outcome.

The SDK's own behaviours are recorded as rung facts (:func:`sdk_facts`); each was read in
sagemaker-train's ``local/local_container.py``, ``model_trainer.py`` and ``templates.py`` and
checked on a real run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import yaml
from docker import DockerClient
from docker.errors import APIError, BuildError, DockerException
from docker.models.containers import Container

from harness import artifacts
from harness.backends.base import Backend, Capabilities, Plan, Progress, copy_source
from harness.backends.containers import (
    RUN_ID,
    engine_gpus,
    env_of,
    host_gpu_count,
    host_result,
    pump_logs,
    quietly,
    resolve_image,
    run_labels,
    shielded,
    stop,
    teardown,
)
from harness.backends.docker import DOCKER_DEFAULT_SHM, DockerBackend
from harness.backends.hosts import PROBE_DIR, artifact_overview, ranks_from_probe, s3_unsupported
from harness.contract import HostContract
from harness.errors import ImageError, RungFailed
from harness.jobspec import JobSpec
from harness.record import RecordWriter, Status, redact_env, write_json
from harness.supervise import STOP_GRACE_S

#: The pip extra that installs the SDK (``pip install 'sagemaker-parity-harness[sagemaker]'``).
SDK_EXTRA = "sagemaker"
PROBE_CHANNEL, RECORD_CHANNEL = "harness_probe", "harness_record"
#: Channels ModelTrainer adds after the user's (``code``, ``sm_drivers``) and the harness's own.
RESERVED_CHANNELS = ("code", "sm_drivers", PROBE_CHANNEL, RECORD_CHANNEL)
DATA = PurePosixPath("/opt/ml/input/data")
#: ModelTrainer's container command with ``source_code`` (sagemaker-core ``training/constants.py``).
SM_TRAIN = f"{DATA}/sm_drivers/sm_train.sh"
ENTRYPOINT = ["/bin/bash", "-c", f"chmod +x {SM_TRAIN} && {SM_TRAIN}"]
#: The fixed network every local-mode run on an engine shares (``local_container.py``).
SDK_NETWORK = "sagemaker-local"
#: Where the harness keeps its own files inside the SDK's container root.
_OURS = "_harness"
_EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)='(.*)'$")
#: Runs in every Python process of the job before the probe: every container gets the same
#: environment, so the host name comes from the file the SDK writes for each host.
_SHIM = """\
# Written by harness.backends.sagemaker_local: name the host, then run the harness probe.
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


def compose_project(container_root: Path) -> str:
    """The compose project name of a container root: its base name, normalised as compose does."""
    return re.sub(r"[^-_a-z0-9]", "", container_root.name.lower())


# --- what the SDK writes (predicted for the dry-run; the record keeps what it really wrote) ----


def sdk_hyperparameters(job: JobSpec) -> dict[str, str]:
    """``safe_serialize`` of each value: strings as they are, anything else ``json.dumps``."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in job.hyperparameters.items()}


def sdk_channels(job: JobSpec) -> list[str]:
    """Channel order in ``inputdataconfig.json``: the user's, the harness's, then ModelTrainer's."""
    return [*job.channels, PROBE_CHANNEL, RECORD_CHANNEL, "code", "sm_drivers"]


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
        "network": f"'{SDK_NETWORK}', one fixed name shared by every local-mode run on this engine",
        "model_dir": "one host directory shared as every host's /opt/ml/model (SageMaker gives each host its "
        "own); the record attributes its files to hosts from the probe's write events",
        "opt_ml": "per host: input/ and output/; shared: model/; no /opt/ml/code, no /opt/ml/checkpoints",
        "channels": "local directories bind-mounted read-write; s3:// channels downloaded by the SDK on the "
        "host (download_folder) into a temporary directory, then mounted; FastFile not honoured, "
        "ShardedByS3Key refused",
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


class SageMakerLocalBackend(Backend):
    """Settings: ``image`` (script-mode base; default the job's, else
    :func:`harness.images.ensure_torch_image`), ``gpus`` (``local_gpu``; default when the engine
    can pass NVIDIA GPUs), ``stop_grace_s`` (SIGTERM to SIGKILL on ``max_run`` or Ctrl-C)."""

    name = "sagemaker-local"
    capabilities = Capabilities(gpus=True, separate_hosts=True, containers=True)

    def __init__(
        self,
        *,
        image: str | None = None,
        gpus: bool | None = None,
        stop_grace_s: float = STOP_GRACE_S,
        client: DockerClient | None = None,
    ) -> None:
        self.gpus = gpus
        self.stop_grace_s = stop_grace_s
        self.docker = DockerBackend(image=image, gpus=gpus, stop_grace_s=stop_grace_s, client=client)

    def unavailable_reason(self) -> str | None:
        missing = sdk_missing_reason() or self.docker.unavailable_reason()
        if missing:
            return missing
        if shutil.which("docker") is None:
            return "no docker CLI on PATH: the SDK runs `docker compose version` to find compose"
        if compose_command() is None:
            return (
                "no docker compose: neither the v2 plugin (`docker compose`) nor docker-compose v1 is "
                "installed; the SDK runs the job with it (apt-get install docker-compose)"
            )
        return None

    def unsupported_reason(self, job: JobSpec) -> str | None:
        if not job.is_script_mode:
            return (
                "a bring-your-own image: SDK v3 local mode starts it without the `train` argument "
                "SageMaker passes (no command in its compose file), so it would not run as on SageMaker"
            )
        sharded = [n for n, c in job.channels.items() if c.is_s3 and c.distribution == "ShardedByS3Key"]
        if sharded:
            return (f"channels {sharded} are ShardedByS3Key: local mode refuses them "
                    "(it supports FullyReplicated S3 channels only)")
        s3_reason = s3_unsupported(job)
        if s3_reason:
            return s3_reason
        reserved = [name for name in job.channels if name in RESERVED_CHANNELS]
        if reserved:
            return f"channels {reserved} are names ModelTrainer or the harness adds ({', '.join(RESERVED_CHANNELS)})"
        return None

    def _num_gpus(self) -> int:
        enabled = self.gpus if self.gpus is not None else (host_gpu_count() > 0 and engine_gpus(self.docker.client()))
        return host_gpu_count() if enabled else 0

    def plan(self, job: JobSpec) -> Plan:
        num_gpus = self._num_gpus()
        instance_type = "local_gpu" if num_gpus else "local_cpu"
        work = Path(tempfile.gettempdir()) / f"harness-sagemaker-local-{uuid.uuid4().hex[:8]}"
        env = _sdk_environment(job)
        hosts = {
            host: HostContract(
                host=host,
                opt_ml=PurePosixPath("/opt/ml"),
                files={
                    "input/config/hyperparameters.json": json.dumps(sdk_hyperparameters(job)),
                    "input/config/resourceconfig.json": json.dumps(sdk_resource_config(job, host, instance_type)),
                    "input/config/inputdataconfig.json": json.dumps(sdk_input_data_config(job)),
                },
                platform_env={**env, "TRAINING_JOB_NAME": f"{job.name}-<timestamp>"},
                launcher_env={},  # written in the container by sm_drivers/scripts/environment.py
                command=ENTRYPOINT,
                cwd=DATA / "code",
                facts={"launcher": "sagemaker-sdk-v3"},
            )
            for host in job.hosts
        }
        facts = {
            "work_dir": str(work),
            "compose_project": compose_project(work),
            "image": self.docker.image or job.image or "harness/torch (built by harness.images.ensure_torch_image)",
            **sdk_facts(job, instance_type, num_gpus),
            "launcher_env": "set in each container by sm_drivers/scripts/environment.py "
            "(recorded from sm_training.env after the run)",
            "stop": f"SIGTERM, SIGKILL after {self.stop_grace_s:g} s",
        }
        return Plan(self.name, job, hosts, facts)

    def _execute(self, plan: Plan, record: RecordWriter, progress: Progress | None) -> Status:
        client, job = self.docker.client(), plan.job
        work = Path(str(plan.facts["work_dir"]))
        labels = run_labels(str(record.manifest["run_id"]))
        run_image = ""
        stdout = _ThreadStdout.install()
        try:
            image = resolve_image(client, job, self.docker.image)
            run_image = _labelled_image(client, image, labels)
            record.set_fact("image", image)
            record.set_fact("run_image", run_image)
            _prepare(job, work)
            instance_type = "local_gpu" if self._num_gpus() else "local_cpu"
            trainer = _local_model_trainer(job, run_image, work, instance_type)
            sdk = _SdkRun(trainer, work / _OURS / "compose.log", stdout)
            timed_out = self._supervise(sdk, client, job, work, record, progress)
            _keep_sdk_files(work, record)
            containers = _containers(client, compose_project(work))
            if not containers:
                raise RungFailed(
                    f"the SDK started no container: {sdk.error or 'no error reported'}",
                    hint=f"its compose output: {record.root / 'sdk' / 'compose.log'}",
                )
            if sdk.error is not None:
                record.set_fact("sdk_error", sdk.error)
            codes = self._collect(job, plan, containers, work, record)
        finally:
            shielded(lambda: _cleanup(client, labels, run_image, work))
            stdout.uninstall()
        if timed_out:
            return "timeout"
        missing = [host for host in job.hosts if host not in codes]
        return "succeeded" if not missing and all(code == 0 for code in codes.values()) else "failed"

    def _supervise(
        self,
        sdk: _SdkRun,
        client: DockerClient,
        job: JobSpec,
        work: Path,
        record: RecordWriter,
        progress: Progress | None,
    ) -> bool:
        """Stream each host's log as its container appears; stop everything at ``max_run`` or Ctrl-C."""
        project, pumps = compose_project(work), dict[str, threading.Thread]()
        deadline, timed_out = time.monotonic() + job.max_run, False
        sdk.start()
        try:
            while sdk.is_alive():
                _start_pumps(client, project, pumps, record, progress)
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.25)
        finally:
            if sdk.is_alive():
                shielded(lambda: _stop_run(client, project, work, sdk, self.stop_grace_s))
            _start_pumps(client, project, pumps, record, progress)  # a container that came and went
            for pump in pumps.values():
                pump.join(timeout=5)
        return timed_out

    def _collect(
        self, job: JobSpec, plan: Plan, containers: dict[str, Container], work: Path, record: RecordWriter
    ) -> dict[str, int]:
        """Exit status, what each host received, the probe's files and the artifacts."""
        kept = work / _OURS / "hosts"
        driver_job = job.model_copy(update={"launcher": "model-trainer"})  # the failure text sm_train.sh writes
        codes = {}
        for host, container in sorted(containers.items(), key=lambda item: _host_order(job, item[0])):
            _record_received(host, container, kept / host, record)
            codes[host] = host_result(driver_job, plan.hosts[host], container, kept / host, record)
            record.host_result(host, container=container.name)
        probe_files = work / _OURS / RECORD_CHANNEL
        if probe_files.is_dir():
            shutil.copytree(probe_files, record.root, dirs_exist_ok=True)
        else:
            record.set_fact("probe_reached", "no: nothing in the harness_record channel")
        record.manifest["ranks"] = ranks_from_probe(record.root)
        trees, writers = _host_trees(job, work, record)
        record.set_fact("model_dir_writers", writers)
        record.manifest["artifacts"] = artifact_overview(artifacts.collect(trees, record.root))
        record.set_fact("probe_reached", probe_reach(job, record))
        return codes


# --- preparing the SDK's container root ----------------------------------------------------------


def probe_python_path(job: JobSpec) -> str:
    """``PYTHONPATH`` in the SDK's containers: the probe's channel first, then the job's own."""
    return ":".join(p for p in (str(DATA / PROBE_CHANNEL), job.environment.get("PYTHONPATH")) if p)


def _sdk_environment(job: JobSpec) -> dict[str, str]:
    """``ModelTrainer(environment=...)``: the job's, with the probe's variables."""
    return {
        "PYTHONUNBUFFERED": "1",
        **job.environment,
        "PYTHONPATH": probe_python_path(job),
        "HARNESS_PROBE_DIR": str(DATA / RECORD_CHANNEL),
    }


def sdk_input_data(job: JobSpec) -> list[Any]:
    """The job's channels as ``InputData`` (which refuses ``content_type=None``: given only when set)."""
    from sagemaker.train.configs import InputData

    return [
        InputData(channel_name=name, data_source=channel.source,
                  **({"content_type": channel.content_type} if channel.content_type else {}))
        for name, channel in job.channels.items()
    ]


def write_probe_channel(destination: Path) -> None:
    """The probe as an input channel for the SDK's containers: on ``PYTHONPATH`` it names its host
    from ``resourceconfig.json`` (every container has the same environment), then runs."""
    shutil.copytree(PROBE_DIR, destination, ignore=shutil.ignore_patterns("__pycache__"))
    (destination / "sitecustomize.py").rename(destination / "_harness_sitecustomize.py")
    (destination / "sitecustomize.py").write_text(_SHIM, encoding="utf-8")


def _prepare(job: JobSpec, work: Path) -> None:
    """The code copy, the probe channels and each host's ``input``/``output`` kept out of the SDK's
    reach: ``<root>/<host>/{input,output}`` are links into ``_harness/hosts/<host>``."""
    ours = work / _OURS
    copy_source(job, ours / "code")
    write_probe_channel(ours / PROBE_CHANNEL)
    (ours / RECORD_CHANNEL).mkdir()
    for host in job.hosts:
        for sub in ("input", "output"):
            (ours / "hosts" / host / sub).mkdir(parents=True)
            (work / host).mkdir(parents=True, exist_ok=True)
            (work / host / sub).symlink_to(ours / "hosts" / host / sub, target_is_directory=True)


def model_trainer(job: JobSpec, **settings: Any) -> Any:
    """The ``ModelTrainer`` a user would write for this job: its name, distribution, stopping
    condition and hyperparameters, with the rung's ``settings`` (mode, image, code, compute,
    channels, environment, session). The SDK is imported only here."""
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import StoppingCondition
    from sagemaker.train.distributed import Torchrun

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


def _local_model_trainer(job: JobSpec, image: str, work: Path, instance_type: str) -> Any:
    """Local mode: the code copy, the probe's two channels, the SDK's container root in ``work``."""
    from sagemaker.train.configs import Compute, InputData, SourceCode
    from sagemaker.train.model_trainer import Mode

    ours = work / _OURS
    channels = sdk_input_data(job)
    channels += [InputData(channel_name=name, data_source=str(ours / name)) for name in (PROBE_CHANNEL, RECORD_CHANNEL)]
    return model_trainer(
        job,
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=image,
        source_code=SourceCode(source_dir=str(ours / "code"), entry_script=job.entry_point),
        compute=Compute(instance_type=instance_type, instance_count=job.instance_count),
        environment=_sdk_environment(job),
        input_data_config=channels,
        local_container_root=str(work),
    )


def _labelled_image(client: DockerClient, image: str, labels: dict[str, str]) -> str:
    """A tag of ``image`` carrying the run's labels (no layer added), so the SDK's containers do."""
    tag = f"harness/sagemaker-local-run:{labels[RUN_ID][-120:]}"
    try:
        client.images.build(fileobj=io.BytesIO(f"FROM {image}\n".encode()), tag=tag, labels=labels, rm=True, pull=False)
    except (BuildError, APIError) as exc:
        raise ImageError(f"cannot tag {image} with the run's labels: {exc}") from exc
    return tag


# --- running and stopping ------------------------------------------------------------------------


class _ThreadStdout:
    """``sys.stdout`` for one run: what the SDK's thread prints (compose's output) goes to a file,
    every other thread's output where it went before."""

    def __init__(self, original: TextIO) -> None:
        self.original = original
        self.sinks: dict[int, TextIO] = {}

    @classmethod
    def install(cls) -> _ThreadStdout:
        proxy = cls(sys.stdout)
        sys.stdout = proxy
        return proxy

    def uninstall(self) -> None:
        if sys.stdout is self:
            sys.stdout = self.original

    def write(self, text: str) -> int:
        return self.sinks.get(threading.get_ident(), self.original).write(text)

    def flush(self) -> None:
        self.sinks.get(threading.get_ident(), self.original).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class _SdkRun(threading.Thread):
    """``ModelTrainer.train()`` in a thread, so that the harness keeps the clock and Ctrl-C."""

    def __init__(self, trainer: Any, log_path: Path, stdout: _ThreadStdout) -> None:
        super().__init__(name="harness-sagemaker-local", daemon=True)
        self.trainer, self.log_path, self.stdout = trainer, log_path, stdout
        self.error: str | None = None

    def run(self) -> None:
        with self.log_path.open("a", encoding="utf-8", errors="replace") as log:
            self.stdout.sinks[threading.get_ident()] = log
            try:
                self.trainer.train(wait=True, logs=True)
            except BaseException as exc:  # noqa: BLE001 - reported by the rung, never lost in a thread
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self.stdout.sinks.pop(threading.get_ident(), None)


def _host_order(job: JobSpec, host: str) -> int:
    return job.hosts.index(host) if host in job.hosts else len(job.hosts)


def _containers(client: DockerClient, project: str) -> dict[str, Container]:
    """The run's containers by host (compose's service label)."""
    found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels.get("com.docker.compose.service", c.name): c for c in found}


def _start_pumps(
    client: DockerClient,
    project: str,
    pumps: dict[str, threading.Thread],
    record: RecordWriter,
    progress: Progress | None,
) -> None:
    with contextlib.suppress(APIError, DockerException):
        for host, container in _containers(client, project).items():
            if host not in pumps:
                pumps[host] = threading.Thread(
                    target=pump_logs, daemon=True, args=(container, record.host_dir(host) / "log.txt", host, progress)
                )
                pumps[host].start()


def _compose_pids(work: Path) -> list[int]:
    """This process's compose children for the run (the SDK keeps no handle we can reach)."""
    compose_file, pids = str(work / "docker-compose.yaml").encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (proc / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and compose_file in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return pids


def _stop_run(client: DockerClient, project: str, work: Path, sdk: _SdkRun, grace_s: float) -> None:
    """``max_run`` or Ctrl-C: stop the containers as ``docker stop`` does, then compose itself
    (which would otherwise go on creating the containers it had not started yet)."""
    stop(list(_containers(client, project).values()), grace_s)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in _compose_pids(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        sdk.join(timeout=5)
        if not sdk.is_alive():
            break
    stop(list(_containers(client, project).values()), 0)  # what compose created meanwhile


def _cleanup(client: DockerClient, labels: dict[str, str], run_image: str, work: Path) -> None:
    """The containers the SDK leaves (by label, and by compose project should a label be missing),
    its shared network when no container uses it any more, the run's image tag, the work dir."""
    for pid in _compose_pids(work):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for container in _containers(client, compose_project(work)).values():
        quietly(functools.partial(container.remove, force=True, v=True))
    teardown(client, labels, run_image, work)
    with contextlib.suppress(APIError, DockerException):
        for network in client.networks.list(names=[SDK_NETWORK]):
            network.reload()
            if network.name == SDK_NETWORK and not network.attrs.get("Containers"):
                quietly(network.remove)
    if run_image:
        quietly(lambda: client.images.remove(run_image, noprune=False))


# --- collecting ----------------------------------------------------------------------------------


def _keep_sdk_files(work: Path, record: RecordWriter) -> None:
    """The compose file the SDK wrote (its credentials redacted: for S3 channels the SDK writes the
    host's AWS keys into every service's environment) and compose's output, under ``sdk/``."""
    target = record.root / "sdk"
    target.mkdir(exist_ok=True)
    compose = work / "docker-compose.yaml"
    if compose.is_file():
        document = yaml.safe_load(compose.read_text())
        for service in (document.get("services") or {}).values():
            env = redact_env(env_of(service.get("environment")))
            service["environment"] = [f"{key}={value}" for key, value in env.items()]
        (target / compose.name).write_text(yaml.safe_dump(document, sort_keys=False))
    if (work / _OURS / "compose.log").is_file():
        shutil.copy2(work / _OURS / "compose.log", target / "compose.log")


def read_sm_training_env(path: Path) -> dict[str, str]:
    """``/opt/ml/input/sm_training.env``: the ``export K='V'`` lines the v3 driver sources."""
    if not path.is_file():
        return {}
    matches = (_EXPORT.match(line) for line in path.read_text(errors="replace").splitlines())
    return {m.group(1): m.group(2) for m in matches if m}


def _record_received(host: str, container: Container, kept: Path, record: RecordWriter) -> None:
    """Config files as the SDK wrote them, the container's environment (``docker inspect``) and
    the driver's ``sm_training.env``; ``env.json`` is the two together, as the launcher saw them."""
    received = record.host_dir(host) / "received"
    received.mkdir(exist_ok=True)
    for path in sorted((kept / "input" / "config").glob("*.json")):
        shutil.copy2(path, received / path.name)
    driver_env = kept / "input" / "sm_training.env"
    if driver_env.is_file():
        shutil.copy2(driver_env, received / "sm_training.env")
    config = container.client.api.inspect_container(container.id)["Config"]
    container_env = env_of(config.get("Env"))
    write_json(received / "container_env.json", redact_env(container_env))
    write_json(received / "env.json", redact_env({**container_env, **read_sm_training_env(driver_env)}))
    argv = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    write_json(received / "command.json", {"argv": argv, "cwd": config.get("WorkingDir") or "/"})


def _model_writers(record_root: Path) -> dict[str, list[str]]:
    """Files under ``/opt/ml/model`` → the hosts whose ranks wrote them (the probe's write events)."""
    hosts = {rank: info["host"] for rank, info in ranks_from_probe(record_root).items()}  # type: ignore[index]
    writers: dict[str, list[str]] = {}
    for events in sorted((record_root / "ranks").glob("rank-*.jsonl")):
        host = hosts.get(events.stem.removeprefix("rank-"))
        for line in events.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                path = str(event.get("path", ""))
                if event.get("kind") == "write" and path.startswith("/opt/ml/model/") and host:
                    name = path.removeprefix("/opt/ml/model/")
                    writers.setdefault(name, [])
                    if host not in writers[name]:
                        writers[name].append(host)
    return writers


def _host_trees(job: JobSpec, work: Path, record: RecordWriter) -> tuple[dict[str, Path], dict[str, Any]]:
    """Per-host ``model`` and ``output/data`` as SageMaker would have them: each host's own output,
    and the shared model dir's files given to the hosts that wrote them (to every host where the
    probe saw no writer: they were in every host's /opt/ml/model)."""
    shared, kept, trees = work / "model", work / _OURS / "hosts", {}
    writers = _model_writers(record.root)
    files = (
        sorted(p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_file()) if shared.is_dir() else []
    )
    for host in job.hosts:
        tree = work / _OURS / "trees" / host
        (tree / "model").mkdir(parents=True)
        data = kept / host / "output" / "data"
        if data.is_dir():
            shutil.copytree(data, tree / "output" / "data")
        for name in files:
            if host in writers.get(name, job.hosts):
                (tree / "model" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(shared / name, tree / "model" / name)
        trees[host] = tree
    attribution = {name: writers.get(name) or f"unknown: given to {', '.join(job.hosts)}" for name in files}
    return trees, attribution


def probe_reach(job: JobSpec, record: RecordWriter) -> dict[str, Any]:
    """Where the probe got in: processes seen per host, and ranks with a log of their own."""
    seen: dict[str, int] = {}
    for path in (record.root / "processes").glob("*.json"):
        host = path.stem.rsplit("-", 1)[0]
        seen[host] = seen.get(host, 0) + 1
    ranks = sorted(int(p.stem.removeprefix("rank-")) for p in (record.root / "ranks").glob("rank-*.log"))
    missing = [host for host in job.hosts if host not in seen]
    return {"processes": seen, "rank_logs": ranks, "not_reached": missing or "none", "world_size": job.world_size}
