"""What the harness takes out of archives and directories a job could write into.

A job's ``output.tar.gz`` (the ``sagemaker`` rung) and the ``harness_record`` channel
(``sagemaker-local``) carry the probe's files, but the job's own processes write there too: only
the probe's own files may enter the record, never over the record's ``manifest.json``. Every
archive the harness opens is extracted within size and member caps, so a gzip bomb is refused
with the reason instead of filling the disk.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from harness.backends.sagemaker import PROBE_OUTPUT, unpack_probe
from harness.backends.sagemaker_sdk import copy_probe_files, ignored_fact, is_probe_file
from harness.errors import HarnessError
from harness.judge.artifacts import _extract
from harness.record import archives
from harness.record.archives import ArchiveRefused
from harness.record.run_record import pack_like_sagemaker

pytestmark = pytest.mark.unit

HOSTS = ["algo-1", "algo-2"]
REAL_MANIFEST = {"format_version": 1, "status": "succeeded", "rung": "sagemaker"}


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks (the bomb is built without holding it in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _bomb(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return path


def test_a_gzip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = _bomb(tmp_path / "output.tar.gz", 50 * 2**20)
    assert archive.stat().st_size < 2**20  # 50 MiB of zeros in well under 1 MiB of gzip
    dest = tmp_path / "out"
    with pytest.raises(ArchiveRefused) as refused:
        archives.extract(archive, dest, max_bytes=10 * 2**20)
    message = refused.value.message
    assert "unpacks to more than 10.0 MiB" in message and "'zeros.bin' alone is 50.0 MiB" in message
    assert str(archive) in message
    assert isinstance(refused.value, HarnessError) and isinstance(refused.value, tarfile.TarError)
    assert not any(p.is_file() for p in dest.rglob("*"))  # nothing of the member was written
    archives.extract(archive, tmp_path / "fits", max_bytes=60 * 2**20)  # under the cap it unpacks
    assert (tmp_path / "fits" / "zeros.bin").stat().st_size == 50 * 2**20


def test_an_archive_of_too_many_members_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(50):
            info = tarfile.TarInfo(f"f{i}")
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveRefused, match="more than 20 members"):
        archives.extract(archive, tmp_path / "out", max_members=20)
    assert len(list((tmp_path / "out").iterdir())) == 20  # stopped at the cap


def test_the_caps_are_the_documented_defaults() -> None:
    assert archives.MAX_ARCHIVE_BYTES == 20 * 2**30 and archives.MAX_ARCHIVE_MEMBERS == 100_000


def test_a_bomb_in_a_record_is_an_unreadable_archive_to_the_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The diff streams checkpoints out through the same caps; a refusal is a ``TarError``, which
    the diff reports as an archive it could not read (a divergence), never as equal."""
    archive = _bomb(tmp_path / "model.tar.gz", 50 * 2**20)
    monkeypatch.setattr(archives, "MAX_ARCHIVE_BYTES", 10 * 2**20)
    with pytest.raises(tarfile.TarError, match="unpacks to more than 10.0 MiB"):
        _extract(archive, {"zeros.bin"}, tmp_path / "out")


def _forged_output(tmp_path: Path) -> Path:
    """``output.tar.gz`` as a job could leave it: its data, the probe's files, and files that
    would replace the record's own (manifest, metrics, a host's log) or point outside it."""
    tree = tmp_path / "job-output"
    probe = tree / PROBE_OUTPUT
    (tree / "result.txt").parent.mkdir(parents=True)
    (tree / "result.txt").write_text("the job's own output\n")
    for name, text in {
        "processes/algo-1-7.json": '{"pid": 7}',
        "ranks/rank-0.log": "2026-01-01T00:00:00.000000Z hello\n",
        "ranks/rank-0.jsonl": '{"t": 1, "kind": "batch"}\n',
        "ranks/rank-0.heartbeat.9.tmp": "{",  # the probe's temporary name: dropped without a note
        "hosts/algo-2/fingerprint.json": '{"python": "3.11"}',
        "manifest.json": json.dumps({"format_version": 1, "status": "succeeded", "forged": True}),
        "metrics.json": '{"train:loss": {"algo-1": [0.0]}}',
        "hosts/algo-1/log.txt": "forged log\n",
        "hosts/evil/fingerprint.json": "{}",
        "ranks/rank-0.py": "import os\n",
    }.items():
        (probe / name).parent.mkdir(parents=True, exist_ok=True)
        (probe / name).write_text(text)
    (probe / "processes" / "algo-1-8.json").symlink_to("/etc/passwd")
    archive = tmp_path / "record" / "artifacts" / "output.tar.gz"
    pack_like_sagemaker(tree, archive)
    return archive


def test_a_forged_probe_directory_in_the_jobs_archive_cannot_replace_the_record(tmp_path: Path) -> None:
    archive = _forged_output(tmp_path)
    record = archive.parent.parent
    (record / "manifest.json").write_text(json.dumps(REAL_MANIFEST))
    found, ignored = unpack_probe(record, HOSTS)
    assert found
    assert json.loads((record / "manifest.json").read_text()) == REAL_MANIFEST
    assert not (record / "metrics.json").exists() and not (record / "hosts" / "algo-1" / "log.txt").exists()
    assert not (record / "hosts" / "evil").exists() and not (record / "ranks" / "rank-0.py").exists()
    assert not (record / "processes" / "algo-1-8.json").exists()  # a link is never followed
    assert (record / "processes" / "algo-1-7.json").read_text() == '{"pid": 7}'
    assert (record / "ranks" / "rank-0.log").is_file() and (record / "ranks" / "rank-0.jsonl").is_file()
    assert (record / "hosts" / "algo-2" / "fingerprint.json").is_file()
    assert ignored == [
        "harness-probe/hosts/algo-1/log.txt",
        "harness-probe/hosts/evil/fingerprint.json",
        "harness-probe/manifest.json",
        "harness-probe/metrics.json",
        "harness-probe/processes/algo-1-8.json",  # refused by tarfile's data filter: a link out of the archive
        "harness-probe/ranks/rank-0.py",
    ]
    with tarfile.open(archive) as tar:  # repacked without the probe's directory
        assert sorted(tar.getnames()) == ["result.txt"]
    fact = ignored_fact(ignored, "output.tar.gz")
    assert fact.startswith("6 entries of output.tar.gz were left out of the record") and "manifest.json" in fact


def test_unpacking_a_bomb_fails_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _bomb(tmp_path / "record" / "artifacts" / "output.tar.gz", 50 * 2**20)
    monkeypatch.setattr(archives, "MAX_ARCHIVE_BYTES", 10 * 2**20)
    with pytest.raises(ArchiveRefused, match="unpacks to more than 10.0 MiB"):
        unpack_probe(archive.parent.parent, HOSTS)


def test_the_record_channel_gives_only_the_probes_files(tmp_path: Path) -> None:
    """``sagemaker-local``: the ``harness_record`` channel is a host directory every container
    can write into; its copy into the record takes the probe's files only."""
    channel, record = tmp_path / "harness_record", tmp_path / "record"
    (channel / "ranks").mkdir(parents=True)
    (channel / "ranks" / "rank-1.stacks.txt").write_text("stack\n")
    (channel / "manifest.json").write_text('{"forged": true}')
    (channel / "linked").symlink_to(tmp_path, target_is_directory=True)
    record.mkdir()
    (record / "manifest.json").write_text(json.dumps(REAL_MANIFEST))
    assert copy_probe_files(channel, record, HOSTS) == ["linked", "manifest.json"]
    assert json.loads((record / "manifest.json").read_text()) == REAL_MANIFEST
    assert (record / "ranks" / "rank-1.stacks.txt").read_text() == "stack\n"
    assert not (record / "linked").exists()


@pytest.mark.parametrize(
    "name, taken",
    [
        ("processes/algo-1-12.json", True),
        ("ranks/rank-12.heartbeat", True),
        ("ranks/rank-3.stacks.txt", True),
        ("hosts/algo-1/fingerprint.json", True),
        ("hosts/algo-3/fingerprint.json", False),  # not a host of the job
        ("hosts/../fingerprint.json", False),
        ("processes/../manifest.json", False),
        ("processes/sub/x.json", False),
        ("ranks/rank-x.log", False),
        ("manifest.json", False),
        ("README.md", False),
        ("artifacts/model.tar.gz", False),
    ],
)
def test_probe_files_are_only_the_probes_own_places(name: str, taken: bool) -> None:
    assert is_probe_file(name, HOSTS) is taken
