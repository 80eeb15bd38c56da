"""Metrics parsed from logs with the job's ``metric_definitions``, as SageMaker parses them.

SageMaker applies each definition's regex to every log line of every host and keeps the first
capture group of each match as one data point; the harness does the same per host log and per
rank log, so that curves can be compared per source. A point is a float, as in CloudWatch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.record.run_record import log_text
from harness.spec.job import MetricDefinition

Series = dict[str, dict[str, list[float]]]  # metric name → source (host or rank-N) → values


def parse_lines(definitions: Sequence[MetricDefinition], lines: Iterable[str]) -> dict[str, list[float]]:
    compiled = [(d.name, re.compile(d.regex)) for d in definitions]
    values: dict[str, list[float]] = {name: [] for name, _ in compiled}
    for line in lines:
        for name, pattern in compiled:
            for match in pattern.finditer(line):
                try:
                    values[name].append(float(match.group(1)))
                except ValueError:
                    continue
    return values


def parse_logs(definitions: Sequence[MetricDefinition], logs: dict[str, Path]) -> Series:
    """Parse each source's log; sources without a single point are left out."""
    series: Series = {d.name: {} for d in definitions}
    for source, path in logs.items():
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", errors="replace") as handle:
            lines = (log_text(line) for line in handle)
            for name, values in parse_lines(definitions, lines).items():
                if values:
                    series[name][source] = values
    return series
