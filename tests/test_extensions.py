"""A rung and a check from another package: one new module each, one registration each (the
entry-point groups ``harness.rungs`` and ``harness.checks``), nothing of the harness edited."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.backends import get_backend
from harness.cli import main
from harness.errors import UsageError

TOY_RUNG = '''
"""The local rung under another name, with a setting of its own."""
from harness.backends.local import LocalBackend, LocalOptions


class ToyOptions(LocalOptions):
    label: str = "toy"


class ToyRung(LocalBackend):
    name = "toy"
    Options = ToyOptions
    options: ToyOptions

    def plan(self, job):
        plan = super().plan(job)
        plan.facts["label"] = self.options.label
        return plan
'''

TOY_CHECK = '''
"""A pair check that always finds something, so that a test can see it ran."""
from harness.judge import Finding, PairCheck


def _compare(baseline, candidate, context):
    label = candidate.manifest.rung_facts.get("label", "-")
    title = f"toy: {baseline.rung} -> {candidate.rung} ({label})"
    return [Finding(kind="environment", severity="divergence", title=title, cause="toy-divergence")]


TOY = PairCheck("toy", _compare)
'''

ENTRY_POINTS = """\
[harness.rungs]
toy = toy_harness.rung:ToyRung

[harness.checks]
toy = toy_harness.check:TOY
"""


@pytest.fixture
def toy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pip install toy-harness`` as it leaves site-packages: the package and its ``.dist-info``."""
    site = tmp_path / "site"
    (site / "toy_harness").mkdir(parents=True)
    (site / "toy_harness" / "__init__.py").write_text("")
    (site / "toy_harness" / "rung.py").write_text(TOY_RUNG)
    (site / "toy_harness" / "check.py").write_text(TOY_CHECK)
    info = site / "toy_harness-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-harness\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    for module in ("toy_harness", "toy_harness.rung", "toy_harness.check"):
        monkeypatch.delitem(sys.modules, module, raising=False)


def _job(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    script = "for step in range(3):\n    print(f'step={step} loss={1 / (step + 1)}')\n"
    (tmp_path / "src" / "train.py").write_text(script)
    (tmp_path / "job.yaml").write_text("name: toy-job\nsource_dir: src\nentry_point: train.py\ninstance_count: 2\n")
    return tmp_path / "job.yaml"


@pytest.mark.slow
def test_a_rung_and_a_check_from_an_installed_package_climb_the_ladder(
    toy_package: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "verdict.json"
    code = main(
        [
            "ladder",
            str(_job(tmp_path)),
            "--rungs",
            "local,toy",
            "--records",
            str(tmp_path / "records"),
            "--json",
            str(report),
        ]
    )
    verdict = json.loads(report.read_text())
    assert code == 1, capsys.readouterr()
    assert verdict["rungs"] == ["local", "toy"] and verdict["first_rung"] == "toy"
    assert [f["title"] for f in verdict["findings"] if f["cause"] == "toy-divergence"] == ["toy: local -> toy (toy)"]


@pytest.mark.slow
def test_an_installed_rung_declares_its_settings_like_a_built_in_one(
    toy_package: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert get_backend("toy", label="mine").options.label == "mine"  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="no setting 'colour'\\nHint: its settings: hang_after_s, probe, label$"):
        get_backend("toy", colour="red")
    assert main(["doctor"]) == 0
    assert any(line.startswith("toy ") and "ready" in line for line in capsys.readouterr().out.splitlines())
