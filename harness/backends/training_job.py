"""Following a SageMaker training job into a run record: its status (``DescribeTrainingJob``), its
logs (CloudWatch Logs, one stream per host) and its artifacts (S3), with nothing but boto3.

The service leaves a finished job as: log streams ``<job name>/algo-N-<epoch seconds>`` in the
group ``/aws/sagemaker/TrainingJobs``, ``model.tar.gz`` at ``ModelArtifacts.S3ModelArtifacts``
and ``output.tar.gz`` beside it, under ``<S3OutputPath>/<job name>/output/``. Host logs become
``hosts/algo-N/log.txt`` with each event's own timestamp, as every rung writes them.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any

from harness.record.run_record import RecordWriter, Status, scrub, write_json
from harness.runtime import interrupts
from harness.spec import s3

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL: dict[str, Status] = {"Completed": "succeeded", "Failed": "failed", "Stopped": "interrupted"}
_STREAM_HOST = re.compile(r"/(algo-\d+)-\d+$")

Sink = Callable[[str, str], None]


class LogFollower:
    """New CloudWatch events of every host's stream, appended to ``hosts/<host>/log.txt``."""

    def __init__(
        self, logs: Any, job_name: str, record: RecordWriter, sink: Sink | None, secrets: tuple[bytes, ...] = ()
    ) -> None:
        self.logs, self.job_name, self.record, self.sink, self.secrets = logs, job_name, record, sink, secrets
        self.tokens: dict[str, str | None] = {}

    def poll(self) -> int:
        """Read what arrived since the last poll; returns the number of lines."""
        from botocore.exceptions import ClientError

        try:
            pages = self.logs.get_paginator("describe_log_streams").paginate(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self.job_name}/"
            )
            streams = [s["logStreamName"] for page in pages for s in page.get("logStreams", [])]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":  # no stream yet
                return 0
            raise
        return sum(self._drain(stream) for stream in sorted(streams))

    def _drain(self, stream: str) -> int:
        match = _STREAM_HOST.search(stream)
        host = match.group(1) if match else stream.rsplit("/", 1)[-1]
        count = 0
        with (self.record.host_dir(host) / "log.txt").open("a", encoding="utf-8") as log:
            while True:
                args: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
                if self.tokens.get(stream):
                    args["nextToken"] = self.tokens[stream]
                page = self.logs.get_log_events(**args)
                for event in page.get("events", []):
                    stamp = dt.datetime.fromtimestamp(event["timestamp"] / 1000, dt.UTC)
                    text = scrub(event["message"].rstrip("\n").encode(), self.secrets).decode()
                    log.write(f"{stamp.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} {text}\n")
                    if self.sink is not None:
                        self.sink(host, text)
                    count += 1
                done = page.get("nextForwardToken") == self.tokens.get(stream)
                self.tokens[stream] = page.get("nextForwardToken")
                if done or not page.get("events"):
                    return count


def follow(
    sagemaker: Any, follower: LogFollower, job_name: str, *, poll_s: float, deadline: float
) -> tuple[dict[str, Any], bool]:
    """Poll the job until it ends, streaming its logs; stop it past ``deadline`` (monotonic), on a
    signal, or when following it fails. Returns the last description and whether the harness
    stopped it for time.

    While it follows, SIGINT, SIGTERM and SIGHUP only set a flag (:mod:`harness.runtime.interrupts`),
    read between calls and every 0.2 s of the wait between polls: the job is stopped
    (``StopTrainingJob``, bounded by botocore's timeouts and retries), then
    :class:`~harness.runtime.interrupts.Interrupted` is raised. A signal that came before (while the job
    was submitted) is taken at once."""
    try:
        with interrupts.deferred():
            try:
                outcome = _poll(sagemaker, follower, job_name, poll_s=poll_s, deadline=deadline)
            except BaseException:  # the harness cannot follow: never leave a job running unseen
                _stop(sagemaker, follower, job_name, "the harness could not follow the job")
                raise
            if outcome is None:
                _stop(sagemaker, follower, job_name, "the harness was stopped by a signal")
    finally:
        interrupts.raise_if_requested()
    assert outcome is not None  # None only on a signal, raised just above
    return outcome


def _poll(
    sagemaker: Any, follower: LogFollower, job_name: str, *, poll_s: float, deadline: float
) -> tuple[dict[str, Any], bool] | None:
    """The last description and whether the job was stopped for time; None on a signal."""
    stopped_for_time = False
    while not interrupts.requested():
        description = sagemaker.describe_training_job(TrainingJobName=job_name)
        follower.poll()
        if description["TrainingJobStatus"] in TERMINAL:
            follower.poll()  # the last lines can land after the status changes
            return description, stopped_for_time
        if time.monotonic() > deadline and not stopped_for_time:
            sagemaker.stop_training_job(TrainingJobName=job_name)
            follower.record.set_fact("stop_training_job", "sent: max_run plus the grace period had passed")
            stopped_for_time = True
        waited = time.monotonic() + poll_s
        while time.monotonic() < waited and not interrupts.requested():
            time.sleep(min(0.2, max(0.0, waited - time.monotonic())))
    return None


def _stop(sagemaker: Any, follower: LogFollower, job_name: str, why: str) -> None:
    try:
        sagemaker.stop_training_job(TrainingJobName=job_name)
    except Exception as exc:  # noqa: BLE001 - said in the record; the error that brought us here goes on
        follower.record.set_fact("stop_training_job", f"failed ({why}): {type(exc).__name__}: {exc}")
    else:
        follower.record.set_fact("stop_training_job", f"sent: {why}")


def collect(description: dict[str, Any], hosts: list[str], record: RecordWriter) -> Status:
    """The description, the artifacts and each host's result into the record; returns the status."""
    write_json(record.root / "sagemaker" / "describe_training_job.json", description)
    status = TERMINAL[description["TrainingJobStatus"]]
    if description.get("SecondaryStatus") == "MaxRuntimeExceeded":
        status = "timeout"
    model = description.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if model:
        output = model.rsplit("/", 1)[0] + "/output.tar.gz"
        for uri in (model, output):
            name = uri.rsplit("/", 1)[-1]
            try:
                s3.download(uri, record.root / "artifacts")
            except s3.S3Error as exc:
                record.update(artifacts_missing={**record.manifest.artifacts_missing, name: exc.message})
    failure = description.get("FailureReason")
    for host in hosts:
        received = record.host_dir(host) / "received"
        write_json(received / "hyperparameters.json", description.get("HyperParameters", {}))
        write_json(received / "inputdataconfig.json", container_input_data_config(description))
        write_json(received / "env.json", description.get("Environment", {}))
        record.host_result(
            host,
            exit_code=_exit_code(status, failure),
            started_at=_iso(description.get("TrainingStartTime")),
            ended_at=_iso(description.get("TrainingEndTime")),
            failure_reason=failure[:1024] if failure else None,
            failure_written_by="service" if failure else None,
        )
        if failure:
            (record.host_dir(host) / "failure").write_text(failure)
    return status


def container_input_data_config(description: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``/opt/ml/input/config/inputdataconfig.json`` as the service writes it in each container from
    the job's ``InputDataConfig`` (a list in the API): one entry per channel, by name, with
    ``TrainingInputMode``, ``S3DistributionType``, ``RecordWrapperType`` and ``ContentType``
    where set, so that it compares with the other rungs' file key by key."""
    config = {}
    for channel in description.get("InputDataConfig", []):
        s3 = channel.get("DataSource", {}).get("S3DataSource", {})
        entry = {
            "TrainingInputMode": channel.get("InputMode")
            or description.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File"),
            "S3DistributionType": s3.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        if channel.get("ContentType"):
            entry["ContentType"] = channel["ContentType"]
        config[channel["ChannelName"]] = entry
    return config


def _exit_code(status: Status, failure: str | None) -> int | None:
    """The service reports the job, not each host: a launcher's ``ExitCode N`` in the failure
    reason where it gives one, else 1 for a failed job."""
    if status == "succeeded":
        return 0
    found = re.search(r"ExitCode:?\s*(\d+)", failure or "")
    return int(found.group(1)) if found else (1 if status == "failed" else None)


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return None
