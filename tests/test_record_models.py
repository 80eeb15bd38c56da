"""The record's typed models (harness.record.models) and docs/run-record.md say the same."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fake_records import JOB
from pydantic import BaseModel

from harness.errors import RecordError
from harness.record.models import HostResult, Manifest, RankResult, Topology, manifest_problems
from harness.record.run_record import RecordWriter, RunRecord

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-record.md"


def _manifest_rows() -> dict[str, str]:
    """The manifest table of the page: key (each of a row's names) → the row's text."""
    blocks = DOC.read_text(encoding="utf-8").split("## manifest.json", 1)[1].split("\n\n")
    section = next(block for block in blocks if block.startswith("| key |"))
    rows: dict[str, str] = {}
    for line in section.splitlines()[2:]:
        keys, _, meaning = line.strip("|").partition("|")
        for key in re.findall(r"`([a-z_]+)`", keys):
            rows[key] = meaning
    return rows


def test_every_key_of_the_manifest_has_a_row_on_the_page_and_every_row_a_key() -> None:
    rows = _manifest_rows()
    assert sorted(rows) == sorted(Manifest.model_fields)


@pytest.mark.parametrize(("key", "model"), [("topology", Topology), ("hosts", HostResult), ("ranks", RankResult)])
def test_the_page_names_every_field_of_the_manifests_parts(key: str, model: type[BaseModel]) -> None:
    meaning = _manifest_rows()[key]
    assert [field for field in model.model_fields if f"`{field}`" not in meaning] == []


def test_a_manifest_the_harness_writes_is_checked_as_written() -> None:
    manifest = {
        "format_version": 1,
        "harness_version": "0",
        "run_id": "r",
        "rung": "local",
        "job": {"name": "j", "hyperparameters": {}},
        "topology": {"hosts": ["algo-1"], "processes_per_host": 1, "distribution": "none"},
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": None,
        "status": "running",
        "complete": False,
        "hosts": {"algo-1": {"exit_code": "0"}},
        "ranks": {"zero": {}},
        "rung_facts": {},
    }
    assert manifest_problems(manifest) == [
        "topology.world_size: missing",
        "hosts.algo-1.exit_code: expected an integer, got the string '0'",
        "ranks: keys must be rank numbers, got ['zero']",
    ]


def test_the_writer_refuses_a_part_of_the_wrong_type_where_it_is_set_and_writes_nothing(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "run", JOB, "local")
    writer.start()
    written = (writer.root / "manifest.json").read_text()
    with pytest.raises(RecordError, match=r"about to write artifacts\.model\.tar\.gz\.files: expected an integer"):
        writer.update(artifacts={"model.tar.gz": {"files": "3", "clashes": {}}})
    with pytest.raises(RecordError, match=r"about to write hosts\.algo-1\.exit_code: expected an integer"):
        writer.host_result("algo-1", exit_code="0")
    assert (writer.root / "manifest.json").read_text() == written


def test_the_file_holds_only_the_parts_a_rung_set_and_a_reader_gets_them_typed(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "run", JOB, "local")
    writer.start()
    writer.host_result("algo-1", exit_code=3, started_at="2026-01-01T00:00:00.000Z")
    writer.update(artifacts={"model.tar.gz": {"files": 2, "clashes": {}}})
    writer.finish("failed")
    on_disk = json.loads((writer.root / "manifest.json").read_text())
    assert "checkpoints" not in on_disk and "error" not in on_disk and "uploaded" not in on_disk
    assert on_disk["hosts"] == {"algo-1": {"exit_code": 3, "started_at": "2026-01-01T00:00:00.000Z"}}
    manifest = RunRecord.load(writer.root).manifest
    assert isinstance(manifest.hosts["algo-1"], HostResult) and manifest.failed_hosts() == {
        "algo-1": manifest.hosts["algo-1"]
    }
    assert manifest.artifacts["model.tar.gz"].files == 2 and manifest.checkpoints is None
    assert manifest.job.hyperparameters == {"lr": 0.1, "flag": False} and manifest.topology.world_size == 1
