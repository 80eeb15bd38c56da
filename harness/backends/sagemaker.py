"""The ``sagemaker`` rung: the job as a real SageMaker training job, submitted by SDK v3
``ModelTrainer`` (``Mode.SAGEMAKER_TRAINING_JOB``) and followed into a run record.

Dry-run: :func:`training_job_request` builds the exact ``CreateTrainingJob`` request
``ModelTrainer._create_training_job_args(boto3=True)`` sends for the job (sagemaker-train
``model_trainer.py``; checked field by field against the SDK's own output in
``tests/test_sagemaker_request.py``), and :func:`validate_request` checks it against botocore's
service model. Neither needs credentials: the SDK itself cannot build the request without them
(``ModelTrainer`` asks IAM about the role, and stages local code and data in S3 while it builds
the request). Local directories (channels, the code, the SDK's drivers) are uploaded by the SDK to
``s3://<bucket>/<job name>/<training job name>/input/<channel>``; :attr:`RequestPlan.uploads`
says what goes where.

Run: ``ModelTrainer.train(wait=False)`` submits; :mod:`harness.backends.training_job` follows
the job (status, CloudWatch logs per host) and downloads its archives into the record.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import PositiveFloat

from harness.backends import training_job
from harness.backends.base import Backend, Capabilities, Plan, Progress, RungOptions
from harness.backends.hosts import PROBE_DIR, artifact_overview, ranks_from_probe
from harness.backends.sagemaker_sdk import (
    DATA,
    ENTRYPOINT,
    PROBE_CHANNEL,
    RESERVED_CHANNELS,
    copy_probe_files,
    ignored_fact,
    model_trainer,
    probe_python_path,
    probe_reach,
    sdk_configs,
    sdk_hyperparameters,
    sdk_input_data,
    sdk_missing_reason,
    write_probe_channel,
)
from harness.errors import JobSpecError, RungFailed
from harness.record import archives
from harness.record.run_record import RecordWriter, Status, pack_like_sagemaker, secret_values
from harness.runtime import interrupts, requirements
from harness.spec.host_contract import HostContract
from harness.spec.job import Channel, JobSpec

#: Settings read from the environment when not given to the rung.
ROLE_ENV, BUCKET_ENV = "HARNESS_SAGEMAKER_ROLE", "HARNESS_SAGEMAKER_BUCKET"
#: ``TrainDefaults``: the volume ModelTrainer asks for when ``Compute`` gives none.
DEFAULT_VOLUME_GB = 30
#: Stand-ins the dry-run prints where a setting is missing (each still passes botocore's patterns).
PLACEHOLDER_ROLE = "arn:aws:iam::000000000000:role/SET-HARNESS_SAGEMAKER_ROLE"
PLACEHOLDER_BUCKET = "SET-HARNESS_SAGEMAKER_BUCKET"
PLACEHOLDER_IMAGE = "SET-THE-JOB-IMAGE"
#: How often the job's status and logs are polled (``DescribeTrainingJob`` is throttled at about
#: one call a second per account), and how long past ``max_run`` the harness waits before it
#: stops a job the service has not stopped itself.
POLL_S = 10.0
GRACE_S = 300
#: Where the probe writes inside the job: under ``/opt/ml/output/data``, so that its files come
#: back in ``output.tar.gz`` (the rung takes them out again before the artifacts are compared).
PROBE_OUTPUT = "harness-probe"


def with_probe(job: JobSpec, probe_channel: Path) -> JobSpec:
    """The job as submitted with the probe: one more channel (the probe, first on ``PYTHONPATH``)
    and ``HARNESS_PROBE_DIR`` under the output data directory."""
    return job.model_copy(
        update={
            "channels": {**job.channels, PROBE_CHANNEL: Channel(source=str(probe_channel))},
            "environment": {
                **job.environment,
                "PYTHONPATH": probe_python_path(job),
                "HARNESS_PROBE_DIR": f"/opt/ml/output/data/{PROBE_OUTPUT}",
            },
        }
    )


def unpack_probe(record_root: Path, hosts: Sequence[str]) -> tuple[bool, list[str]]:
    """Move the probe's files out of the downloaded ``output.tar.gz`` into the record (where the
    other rungs' probes write them) and repack the archive without ``harness-probe/``. Only the
    probe's own files (:func:`~harness.backends.sagemaker_sdk.is_probe_file`) go into the record:
    the job could have written anything there. Returns whether the archive had a probe directory,
    and the members left out (of the record, or of the repacked archive where tarfile's ``data``
    filter refused them), by their names in the archive."""
    archive = record_root / "artifacts" / "output.tar.gz"
    if not archive.is_file():
        return False, []
    with tempfile.TemporaryDirectory(prefix="harness-output-") as tmp:
        unpacked = Path(tmp)
        refused = archives.extract(archive, unpacked)
        probe = unpacked / PROBE_OUTPUT
        if not probe.is_dir() or probe.is_symlink():
            return False, []
        ignored = [f"{PROBE_OUTPUT}/{name}" for name in copy_probe_files(probe, record_root, hosts)]
        shutil.rmtree(probe)
        pack_like_sagemaker(unpacked, archive)
    return True, sorted({*ignored, *(name.removeprefix("./") for name in refused)})


def unique_name(base: str, now: dt.datetime | None = None) -> str:
    """``sagemaker.train.utils._get_unique_name``: ``<base>-<YYYYmmddHHMMSS>``, local time, cut at
    63 characters (a base longer than 48 loses part of the timestamp: the SDK does the same)."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d%H%M%S")
    return f"{base.replace('_', '-')}-{stamp}"[:63]


def _s3_channel(
    name: str,
    uri: str,
    *,
    distribution: str = "FullyReplicated",
    input_mode: str = "File",
    content_type: str | None = None,
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": distribution}
        },
    }
    if content_type:
        channel["ContentType"] = content_type
    channel["InputMode"] = input_mode
    return channel


@dataclass(frozen=True)
class Request:
    """A ``CreateTrainingJob`` request and the local directories the SDK uploads for it."""

    body: dict[str, Any]
    uploads: dict[str, str] = field(default_factory=dict)  # local path → S3 URI


def training_job_request(job: JobSpec, *, role: str, bucket: str, image: str, job_name: str | None = None) -> Request:
    """What ``ModelTrainer(source_code=..., distributed=Torchrun(...), compute=..., ...).train()``
    sends for ``job``, in the SDK's key order; ``job_name`` fixes the timestamped name (tests)."""
    name = job_name or unique_name(job.name)
    prefix = f"s3://{bucket}/{job.name}/{name}"
    uploads: dict[str, str] = {}
    channels = []
    for channel_name, channel in job.channels.items():
        uri = channel.source if channel.is_s3 else f"{prefix}/input/{channel_name}"
        if not channel.is_s3:
            uploads[channel.source] = uri
        channels.append(
            _s3_channel(
                channel_name,
                uri,
                distribution=channel.distribution,
                input_mode=channel.input_mode,
                content_type=channel.content_type,
            )
        )
    algorithm: dict[str, Any] = {"TrainingInputMode": "File", "TrainingImage": image}
    if job.metric_definitions:
        algorithm["MetricDefinitions"] = [{"Name": m.name, "Regex": m.regex} for m in job.metric_definitions]
    if job.is_script_mode:  # source_code: the code and the SDK's drivers travel as two more channels
        algorithm.update(ContainerEntrypoint=ENTRYPOINT[:1], ContainerArguments=ENTRYPOINT[1:])
        uploads[str(job.source_dir)] = f"{prefix}/input/code"
        uploads["<sagemaker.train container_drivers, sourcecode.json, distributed.json, sm_train.sh>"] = (
            f"{prefix}/input/sm_drivers"
        )
        channels += [_s3_channel(name, f"{prefix}/input/{name}") for name in ("code", "sm_drivers")]
    body: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": algorithm,
        "HyperParameters": sdk_hyperparameters(job),
    }
    if channels:
        body["InputDataConfig"] = channels
    body.update(
        {
            "ResourceConfig": {
                "InstanceType": job.instance_type,
                "InstanceCount": job.instance_count,
                "VolumeSizeInGB": DEFAULT_VOLUME_GB,
            },
            "RoleArn": role,
            "StoppingCondition": {"MaxRuntimeInSeconds": job.max_run},
            "OutputDataConfig": {
                "S3OutputPath": job.output_path or f"s3://{bucket}/{job.name}",
                "CompressionType": "GZIP",
            },
        }
    )
    if job.checkpoint is not None:
        body["CheckpointConfig"] = {
            "S3Uri": job.checkpoint.s3_uri or f"{prefix}/checkpoints",
            "LocalPath": job.checkpoint.local_path,
        }
    if job.environment:
        body["Environment"] = dict(job.environment)
    return Request(body, uploads)


def validate_request(body: dict[str, Any]) -> None:
    """Raise :class:`JobSpecError` where botocore's service model (the one installed) refuses the
    request. botocore's ``ParamValidator`` checks required members, types and minimums, as boto3
    does before sending; the service also enforces the model's maximums, patterns and enums,
    which :func:`_limits` checks here, so that the dry-run finds what the call would be refused for."""
    try:
        import botocore.session
        from botocore.validate import ParamValidator
    except ImportError as exc:
        raise RungFailed(
            "botocore is not installed, so the request cannot be checked",
            hint="pip install 'sagemaker-parity-harness[sagemaker]'",
        ) from exc
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateTrainingJob").input_shape
    report = ParamValidator().validate(body, shape)
    errors = [report.generate_report()] if report.has_errors() else []
    errors += _limits(body, shape, "")
    if errors:
        raise JobSpecError(
            "CreateTrainingJob would be refused:\n" + "\n".join(errors),
            hint="the job spec holds a value SageMaker does not accept (see the message)",
        )


def _limits(value: Any, shape: Any, path: str) -> list[str]:
    """Maximum lengths and values, patterns and enums of the service model, recursively."""
    meta, errors = shape.metadata, []
    where = path or "request"
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in value.items():
            if name in shape.members:
                errors += _limits(member, shape.members[name], f"{path}.{name}".lstrip("."))
    elif shape.type_name == "list" and isinstance(value, list):
        errors += [f"{where}: {len(value)} items, at most {meta['max']}"] if len(value) > meta.get("max", 1e9) else []
        for index, item in enumerate(value):
            errors += _limits(item, shape.member, f"{path}[{index}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        errors += [f"{where}: {len(value)} entries, at most {meta['max']}"] if len(value) > meta.get("max", 1e9) else []
        for key, item in value.items():
            errors += _limits(key, shape.key, f"{path}.{key} (key)")
            errors += _limits(item, shape.value, f"{path}.{key}")
    elif shape.type_name == "string" and isinstance(value, str):
        if len(value) > meta.get("max", 1e9):
            errors.append(f"{where}: {len(value)} characters, at most {meta['max']}")
        if "enum" in shape.metadata and value not in shape.enum:
            errors.append(f"{where}: {value!r} is not one of {', '.join(shape.enum)}")
        pattern = meta.get("pattern")
        if pattern and not _matches(pattern, value):
            errors.append(f"{where}: {value[:80]!r} does not match the pattern {pattern}")
    elif shape.type_name in ("integer", "long") and isinstance(value, int) and value > meta.get("max", 1e18):
        errors.append(f"{where}: {value}, at most {meta['max']}")
    return errors


def _matches(pattern: str, value: str) -> bool:
    """The model's patterns are Java regular expressions matched against the whole value; one
    Python cannot compile is not held against the request."""
    try:
        return re.fullmatch(pattern, value, flags=re.DOTALL) is not None
    except re.error:
        return True


@dataclass
class RequestPlan(Plan[JobSpec]):
    """The dry-run of the ``sagemaker`` rung: the request itself, printable as is."""

    request: dict[str, Any] = field(default_factory=dict)
    uploads: dict[str, str] = field(default_factory=dict)
    placeholders: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "CreateTrainingJob": self.request,
            "uploads": self.uploads,
            "placeholders": self.placeholders,
            "facts": self.facts,
        }


class SageMakerOptions(RungOptions):
    #: Execution role ARN; default ``$HARNESS_SAGEMAKER_ROLE``.
    role: str | None = None
    #: Bucket for staging and output; default ``$HARNESS_SAGEMAKER_BUCKET``.
    bucket: str | None = None
    #: AWS region; default boto3's.
    region: str | None = None
    #: Training image URI; default the job's.
    image: str | None = None
    #: Seconds between polls of the job's status and logs.
    poll_s: PositiveFloat = POLL_S
    #: False submits the job without the probe's channel.
    probe: bool = True


class SageMakerBackend(Backend[JobSpec, RequestPlan]):
    name = "sagemaker"
    workload = "training"
    capabilities = Capabilities(gpus=True, separate_hosts=True, containers=True, hang_detection=False)
    Options = SageMakerOptions
    options: SageMakerOptions
    uploads_artifacts = False  # the service uploads them; the rung downloads them into the record

    def __init__(self, options: SageMakerOptions | None = None, *, boto_session: Any = None) -> None:
        """``boto_session``: the session to call AWS with (default: boto3's, for the option's region)."""
        super().__init__(options)
        self.role = self.options.role or os.environ.get(ROLE_ENV)
        self.bucket = self.options.bucket or os.environ.get(BUCKET_ENV)
        self._boto = boto_session

    def _session(self) -> Any:
        if self._boto is None:
            import boto3

            self._boto = boto3.Session(region_name=self.options.region)
        return self._boto

    def unavailable_reason(self) -> str | None:
        try:
            import boto3  # noqa: F401
            import botocore  # noqa: F401
        except ImportError:
            return "boto3 is not installed; pip install 'sagemaker-parity-harness[sagemaker]'"
        session = self._session()
        checks = {
            "the SageMaker SDK": sdk_missing_reason(),
            "credentials": None
            if session.get_credentials() is not None
            else "no AWS credentials (aws configure, aws sso login, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            "region": None if session.region_name else "no AWS region (AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config)",
            "role": None if self.role else f"no execution role: set {ROLE_ENV} to the ARN of a role SageMaker assumes",
            "bucket": None if self.bucket else f"no S3 bucket for code, data and artifacts: set {BUCKET_ENV}",
        }
        missing = [why for why in checks.values() if why]
        return "; ".join(missing) if missing else None

    def unsupported_reason(self, job: JobSpec) -> str | None:
        reserved = [name for name in job.channels if name in RESERVED_CHANNELS]
        if reserved:
            return f"channels {reserved} are names ModelTrainer or the harness adds ({', '.join(RESERVED_CHANNELS)})"
        if job.is_script_mode and not (self.options.image or job.image):
            return (
                "no training image: a SageMaker job needs an image URI (ECR) with python3 and pip, "
                "e.g. a PyTorch training DLC; set `image` in the job"
            )
        return None

    def plan(self, job: JobSpec) -> RequestPlan:
        image = self.options.image or job.image
        placeholders = [
            what
            for what, missing in (
                (f"RoleArn: {ROLE_ENV} is not set", not self.role),
                (f"bucket: {BUCKET_ENV} is not set", not self.bucket),
                ("TrainingImage: the job has no image", not image),
            )
            if missing
        ]
        request = training_job_request(
            with_probe(job, PROBE_DIR) if self.options.probe else job,
            role=self.role or PLACEHOLDER_ROLE,
            bucket=self.bucket or PLACEHOLDER_BUCKET,
            image=image or PLACEHOLDER_IMAGE,
        )
        validate_request(request.body)
        env = {**job.environment, "TRAINING_JOB_NAME": request.body["TrainingJobName"]}
        command = ENTRYPOINT if job.is_script_mode else ["train"]
        hosts = {
            host: HostContract(
                host,
                PurePosixPath("/opt/ml"),
                {"input/config/hyperparameters.json": json.dumps(request.body["HyperParameters"])},
                env,
                {},
                command,
                DATA / "code" if job.is_script_mode else PurePosixPath("/"),
                {"launcher": "sagemaker-sdk-v3" if job.is_script_mode else "image"},
            )
            for host in job.hosts
        }
        facts = {
            "sdk": "ModelTrainer, Mode.SAGEMAKER_TRAINING_JOB (request built by the harness as the SDK builds it)",
            "validated_with": _botocore_version(),
            "cost": f"{job.instance_count} x {job.instance_type} on-demand price per hour x billed hours "
            "(BillableTimeInSeconds / 3600) + S3 storage of code, data and artifacts",
            "probe": f"channel {PROBE_CHANNEL} (PYTHONPATH); it writes under /opt/ml/output/data/{PROBE_OUTPUT}, "
            "which comes back in output.tar.gz and is moved into the record"
            if self.options.probe
            else "off",
        }
        return RequestPlan(
            self.name, job, hosts, facts, request=request.body, uploads=request.uploads, placeholders=placeholders
        )

    def _execute(self, plan: RequestPlan, record: RecordWriter, progress: Progress | None) -> Status:
        """Submit through ``ModelTrainer``, follow the job (status, CloudWatch logs), then fetch
        its artifacts; past ``max_run`` plus :data:`GRACE_S`, or on a signal, the job is stopped."""
        job, session = plan.job, self._session()
        # From submission on, a signal only sets a flag: a job created as it arrived is stopped too.
        try:
            with interrupts.deferred():
                with tempfile.TemporaryDirectory(prefix="harness-probe-channel-") as tmp:  # uploaded by train()
                    if self.options.probe:
                        write_probe_channel(Path(tmp) / PROBE_CHANNEL)
                    submitted = with_probe(job, Path(tmp) / PROBE_CHANNEL) if self.options.probe else job
                    trainer = self._model_trainer(submitted, session)
                    trainer.train(wait=False, logs=False)
                name = trainer._latest_training_job.training_job_name  # the SDK keeps it nowhere public
                record.set_fact("training_job_name", name)
                sagemaker, logs = session.client("sagemaker"), session.client("logs")
                follower = training_job.LogFollower(logs, name, record, progress, secret_values(job.environment))
                description, stopped = training_job.follow(
                    sagemaker,
                    follower,
                    name,
                    poll_s=self.options.poll_s,
                    deadline=time.monotonic() + job.max_run + GRACE_S,
                )
        finally:
            interrupts.raise_if_requested()  # also where submitting failed as the signal came
        status = training_job.collect(description, job.hosts, record)
        record.set_fact("billable_seconds", description.get("BillableTimeInSeconds"))
        if self.options.probe:
            found, ignored = unpack_probe(record.root, job.hosts)
            if ignored:
                record.set_fact("probe_files_ignored", ignored_fact(ignored, "output.tar.gz"))
            record.set_fact(
                "probe_reached", probe_reach(job, record) if found else "no: output.tar.gz holds no probe files"
            )
            record.update(ranks=ranks_from_probe(record.root))
        record.update(artifacts=artifact_overview(archives.summarize_archives(record.root)))
        return "timeout" if stopped else status

    def _model_trainer(self, job: JobSpec, session: Any) -> Any:
        """The ``ModelTrainer`` a user would write for the job (built as ``sagemaker-local`` builds it,
        :func:`~harness.backends.sagemaker_sdk.model_trainer`, with ``Mode.SAGEMAKER_TRAINING_JOB``,
        the rung's role, bucket and image)."""
        from sagemaker.core.helper.session_helper import Session
        from sagemaker.train.model_trainer import Mode

        configs = sdk_configs()

        trainer = model_trainer(
            job,
            training_mode=Mode.SAGEMAKER_TRAINING_JOB,
            sagemaker_session=Session(boto_session=session, default_bucket=self.bucket),
            role=self.role,
            training_image=self.options.image or job.image,
            source_code=configs.SourceCode(
                source_dir=str(job.source_dir),
                entry_script=job.entry_point,
                requirements=requirements.sdk_requirements(job),
            )
            if job.is_script_mode
            else None,
            compute=configs.Compute(instance_type=job.instance_type, instance_count=job.instance_count),
            environment=dict(job.environment) or None,
            input_data_config=sdk_input_data(job) or None,
        )
        if job.metric_definitions:
            trainer = trainer.with_metric_definitions(
                [configs.MetricDefinition(name=m.name, regex=m.regex) for m in job.metric_definitions]
            )
        return trainer


def _botocore_version() -> str:
    import botocore

    return f"botocore {botocore.__version__} service model"
