"""S3 as the SageMaker platform uses it around a job: ``s3://`` channels are downloaded before the
job starts (File mode), and ``model.tar.gz`` and ``output.tar.gz`` are uploaded after it ends.

The rungs the harness runs itself do both on the host, as the platform does outside the
container, so the job never needs credentials. Which S3 answers is boto3's business: real S3,
or any endpoint named by the standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` variables
(``harness localstack env`` prints them for the harness's LocalStack).

Keys map to files as in the SDK's local mode (``sagemaker.core.common_utils.download_folder``):
an ``S3Uri`` naming one object gives that file; otherwise every object under the prefix, at its
path relative to the prefix. ``ShardedByS3Key`` gives host *i* of *n* every *n*-th key in key
order: SageMaker documents that each instance gets about 1/n of the objects, not which ones.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from harness.errors import HarnessError

_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
#: Objects fetched at once (boto3 clients are thread-safe; each large object is itself split
#: into parts by boto3's transfer manager).
TRANSFERS = 8
INSTALL_HINT = "pip install 'sagemaker-parity-harness[s3]' (boto3)"


class S3Error(HarnessError):
    """An S3 transfer around the job failed: a missing bucket or key, credentials, the endpoint."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        match = _URI.match(uri)
        if match is None:
            raise ValueError(f"{uri!r} is not an S3 URI of the form s3://bucket/key")
        return cls(match["bucket"], match["key"] or "")

    def join(self, *parts: str) -> S3Uri:
        return S3Uri(self.bucket, "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/")))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def missing_reason() -> str | None:
    """Why S3 transfers cannot happen here, or None (checked before a rung starts)."""
    try:
        import boto3
    except ImportError:
        return f"boto3 is not installed; {INSTALL_HINT}"
    if boto3.Session().get_credentials() is None:
        return (
            "no AWS credentials for S3 (aws configure, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; "
            'for LocalStack: eval "$(harness localstack env)")'
        )
    return None


def client() -> Any:
    import boto3

    return boto3.client("s3")


def _translated(exc: Exception, what: str) -> S3Error:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return S3Error(
            f"{what}: {error.get('Code')}: {error.get('Message')}",
            hint="check the bucket, the key and the permissions of your credentials",
        )
    return S3Error(
        f"{what}: {type(exc).__name__}: {exc}",
        hint="is the endpoint up (harness localstack status) and are credentials set?",
    )


def download(
    uri: str, destination: Path, *, shard: tuple[int, int] | None = None, allow_empty: bool = False
) -> dict[str, int]:
    """The objects under ``uri`` into ``destination``; ``shard=(i, n)``: only every n-th key from
    the i-th. Returns the files written (relative path -> size). An empty prefix is an error
    (SageMaker fails a job whose channel is empty) unless ``allow_empty`` (checkpoints)."""
    from botocore.exceptions import BotoCoreError, ClientError

    location, s3 = S3Uri.parse(uri), client()
    destination.mkdir(parents=True, exist_ok=True)
    try:
        objects = [
            (item["Key"], int(item["Size"]))
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.key)
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        ]
        if not objects and allow_empty:
            return {}
        if not objects:
            raise S3Error(
                f"no S3 objects found under {uri}",
                hint="SageMaker fails such a job too; upload the data first or fix the channel's URI",
            )
        exact = [(key, size) for key, size in objects if key == location.key]
        if exact:
            objects = exact
        if shard is not None:
            index, count = shard
            objects = sorted(objects)[index::count]
        written, targets = {}, []
        for key, size in objects:
            relative = PurePosixPath(key).name if exact else key[len(location.key) :].lstrip("/")
            target = (destination / relative).resolve()
            if not target.is_relative_to(destination.resolve()):
                raise S3Error(
                    f"the key {key!r} would be written outside the channel directory",
                    hint="keys with '..' are refused, as the SageMaker SDK refuses them",
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            targets.append((key, str(target)))
            written[relative] = size
        with ThreadPoolExecutor(TRANSFERS) as pool:  # many small objects: latency-bound one by one
            list(pool.map(lambda item: s3.download_file(location.bucket, *item), targets))
    except (BotoCoreError, ClientError) as exc:
        raise _translated(exc, f"downloading {uri}") from exc
    return written


def upload(path: Path, uri: S3Uri) -> str:
    """``path`` to ``uri``; returns the URI."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client().upload_file(str(path), uri.bucket, uri.key)
    except (BotoCoreError, ClientError) as exc:
        raise _translated(exc, f"uploading {path.name} to {uri}") from exc
    return str(uri)


def upload_tree(directory: Path, uri: str, *, create_bucket: bool = False) -> list[str]:
    """Every file under ``directory`` to the prefix ``uri``; ``create_bucket``: make the bucket if
    missing (a team staging its data). Returns the files' paths relative to ``directory``."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix, s3 = S3Uri.parse(uri), client()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    try:
        if create_bucket:
            try:
                s3.head_bucket(Bucket=prefix.bucket)
            except ClientError:
                s3.create_bucket(Bucket=prefix.bucket)
        for path in files:
            target = prefix.join(path.relative_to(directory).as_posix())
            s3.upload_file(str(path), target.bucket, target.key)
    except (BotoCoreError, ClientError) as exc:
        raise _translated(exc, f"uploading {directory} to {uri}") from exc
    return [path.relative_to(directory).as_posix() for path in files]
