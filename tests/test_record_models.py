"""The record's typed models (harness.record.models) and docs/run-record.md say the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from harness.record.models import HostResult, Manifest, RankResult, Topology, manifest_problems

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-record.md"


def _manifest_rows() -> dict[str, str]:
    """The manifest table of the page: key (each of a row's names) → the row's text."""
    section = DOC.read_text(encoding="utf-8").split("## manifest.json", 1)[1].split("\n\n", 2)[1]
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
        "topology": {"hosts": ["algo-1"], "processes_per_host": 1, "world_size": 1, "distribution": "none"},
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": None,
        "status": "running",
        "complete": False,
        "hosts": {"algo-1": {"exit_code": "0"}},
        "ranks": {"zero": {}},
        "rung_facts": {},
    }
    assert manifest_problems(manifest) == [
        "topology.launcher: missing",
        "hosts.algo-1.exit_code: expected an integer, got the string '0'",
        "ranks: keys must be rank numbers, got ['zero']",
    ]
    assert manifest_problems(manifest, strict=False) == manifest_problems(manifest)[1:]
