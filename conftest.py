"""Shared test fixtures: paths of the scenarios and a per-test records directory."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SCENARIOS = ROOT / "scenarios"


@pytest.fixture
def scenarios() -> Path:
    return SCENARIOS


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records"
    path.mkdir()
    return path
