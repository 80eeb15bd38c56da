"""The host family's template, proved by a third rung: tests/plain_hosts_rung.py is one module,
registered here in one line, and climbs the ladder beside ``local`` to parity."""

from __future__ import annotations

from pathlib import Path

import pytest
from plain_hosts_rung import PlainHostsRung

from harness.backends import registered
from harness.ladder import climb
from harness.spec.job import load_job

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_a_rung_of_one_module_and_one_registration_runs_the_job_as_local_does(tmp_path: Path) -> None:
    job = load_job(ROOT / "scenarios" / "ddp_csv" / "job.yaml").model_copy(update={"instance_count": 1})
    with registered({"plain-hosts": PlainHostsRung}):
        result = climb(job, tmp_path, rungs=["local", "plain-hosts"])
    assert [record.rung for record in result.records] == ["local", "plain-hosts"]
    plain = result.records[1]
    assert plain.status == "succeeded", plain.manifest.error
    assert plain.manifest.hosts["algo-1"].exit_code == 0
    assert plain.manifest.artifacts["model.tar.gz"].files > 0
    assert sorted(plain.manifest.ranks) == ["0", "1"], plain.manifest.ranks
    assert result.verdict.outcome == "parity", result.verdict.findings
    assert not Path(plain.manifest.rung_facts["work_dir"]).exists()  # the session removed what it made
