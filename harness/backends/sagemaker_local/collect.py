"""Collecting a ``sagemaker-local`` run into the record: what the SDK really wrote and ran.

Nothing here was planned by the harness: the config files and ``sm_training.env`` come from the
host directories kept out of the SDK's reach, each container's environment and command from the
engine, the compose file from the SDK's container root, and the probe's files from its record
channel (only the probe's own: the job's processes can write there too). Local mode shares one
``/opt/ml/model`` between hosts, where SageMaker gives each host its own; the probe's write events
say which host wrote which file, so the artifacts are packed per host as SageMaker would have
packed them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from docker import DockerClient
from docker.models.containers import Container

from harness.backends.containers import env_of, host_result
from harness.backends.hosts import artifact_overview, ranks_from_probe
from harness.backends.sagemaker_local.plan import SdkPlan
from harness.backends.sagemaker_local.run import SdkRun, compose_containers
from harness.backends.sagemaker_sdk import RECORD_CHANNEL, copy_probe_files, ignored_fact, probe_reach
from harness.errors import RungFailed
from harness.record import archives
from harness.record.run_record import RecordWriter, redact_env, write_json
from harness.spec.job import JobSpec

_EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)='(.*)'$")


def collect(client: DockerClient, plan: SdkPlan, sdk: SdkRun, record: RecordWriter) -> dict[str, int]:
    """The SDK's files, then each host's exit status and what it received, the probe's files and
    the artifacts; returns the exit code of each host that had a container."""
    job, kept = plan.job, plan.ours / "hosts"
    _keep_sdk_files(plan, record)
    containers = compose_containers(client, plan.project)
    if not containers:
        raise RungFailed(
            f"the SDK started no container: {sdk.error or 'no error reported'}",
            hint=f"its compose output: {record.root / 'sdk' / 'compose.log'}",
        )
    if sdk.error is not None:
        record.set_fact("sdk_error", sdk.error)
    driver_job = job.model_copy(update={"launcher": "model-trainer"})  # the failure text sm_train.sh writes
    codes = {}
    for host, container in sorted(containers.items(), key=lambda item: _host_order(job, item[0])):
        _record_received(host, container, kept / host, record)
        codes[host] = host_result(driver_job, plan.hosts[host], container, kept / host, record)
        record.host_result(host, container=container.name)
    probe_files = plan.ours / RECORD_CHANNEL
    if probe_files.is_dir():  # the job's processes can write there too: only the probe's files are taken
        ignored = copy_probe_files(probe_files, record.root, job.hosts)
        if ignored:
            record.set_fact("probe_files_ignored", ignored_fact(ignored, f"the {RECORD_CHANNEL} channel"))
    else:
        record.set_fact("probe_reached", "no: nothing in the harness_record channel")
    record.update(ranks=ranks_from_probe(record.root))
    trees, writers = _host_trees(plan, record)
    record.set_fact("model_dir_writers", writers)
    record.update(artifacts=artifact_overview(archives.collect(trees, record.root)))
    record.set_fact("probe_reached", probe_reach(job, record))
    return codes


def read_sm_training_env(path: Path) -> dict[str, str]:
    """``/opt/ml/input/sm_training.env``: the ``export K='V'`` lines the v3 driver sources."""
    if not path.is_file():
        return {}
    matches = (_EXPORT.match(line) for line in path.read_text(errors="replace").splitlines())
    return {m.group(1): m.group(2) for m in matches if m}


def _host_order(job: JobSpec, host: str) -> int:
    return job.hosts.index(host) if host in job.hosts else len(job.hosts)


def _keep_sdk_files(plan: SdkPlan, record: RecordWriter) -> None:
    """The compose file the SDK wrote (its credentials redacted: for S3 channels the SDK writes the
    host's AWS keys into every service's environment) and compose's output, under ``sdk/``."""
    target = record.root / "sdk"
    target.mkdir(exist_ok=True)
    compose = plan.work_dir / "docker-compose.yaml"
    if compose.is_file():
        document = yaml.safe_load(compose.read_text())
        for service in (document.get("services") or {}).values():
            env = redact_env(env_of(service.get("environment")))
            service["environment"] = [f"{key}={value}" for key, value in env.items()]
        (target / compose.name).write_text(yaml.safe_dump(document, sort_keys=False))
    if (plan.ours / "compose.log").is_file():
        shutil.copy2(plan.ours / "compose.log", target / "compose.log")


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


def _host_trees(plan: SdkPlan, record: RecordWriter) -> tuple[dict[str, Path], dict[str, Any]]:
    """Per-host ``model`` and ``output/data`` as SageMaker would have them: each host's own output,
    and the shared model dir's files given to the hosts that wrote them (to every host where the
    probe saw no writer: they were in every host's /opt/ml/model)."""
    job, shared, kept, trees = plan.job, plan.work_dir / "model", plan.ours / "hosts", {}
    writers = _model_writers(record.root)
    files = (
        sorted(p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_file()) if shared.is_dir() else []
    )
    for host in job.hosts:
        tree = plan.ours / "trees" / host
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
