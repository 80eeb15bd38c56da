"""A scenario: a job, the ladder it climbs, and the diagnosis expected of the harness.

Scenarios test the harness's mechanisms (the planted-fault ones in ``scenarios/`` each carry a
realistic bug and the cause the verdict must rank first); teams can write them for their own
jobs too. ``scenario.yaml``::

    job: job.yaml
    steps:                          # the ladder, bottom first (default: local, docker)
      - rung: local
        overrides: {instance_count: 1, processes_per_host: 1, distribution: none}
      - rung: docker
        options: {shm_size: 64m}    # rung settings
    tolerance: {rtol: 1e-5, atol: 1e-6, tensor_rtol: 1e-5, tensor_atol: 1e-6}   # curves; checkpoints
    expect: {outcome: diverged, cause: data-not-sharded, first_rung: local}
    images:                         # images the job needs, built on the torch image before the steps
      - {tag: "scenario/byo:1", steps: ["COPY train /usr/local/bin/train"], context: image}
    s3_data:                        # S3 prefixes staged from local directories before the steps
      s3://bucket/prefix/train: data
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.backends import get_backend, rung_options
from harness.errors import JobSpecError, NoRungCanRun, UsageError
from harness.judge import protocol
from harness.judge.verdict import Verdict
from harness.ladder import climbing
from harness.record.run_record import RunRecord
from harness.spec import s3
from harness.spec.job import load_job
from harness.spec.s3 import S3Uri


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    rung: str
    options: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)

    def to_step(self) -> climbing.Step:
        return climbing.Step(self.rung, self.options, self.overrides)


class Expectation(_Strict):
    outcome: Literal["parity", "diverged", "failed"]
    cause: str | None = None
    first_rung: str | None = None


class Tolerance(_Strict):
    """``rtol``/``atol``: metric curves; ``tensor_rtol``/``tensor_atol``: checkpoint tensors."""

    rtol: float = protocol.DEFAULT_RTOL
    atol: float = protocol.DEFAULT_ATOL
    tensor_rtol: float = protocol.DEFAULT_RTOL
    tensor_atol: float = protocol.DEFAULT_ATOL

    def for_checks(self) -> protocol.Tolerance:
        return protocol.Tolerance(self.rtol, self.atol, self.tensor_rtol, self.tensor_atol)


class ScenarioImage(_Strict):
    """An image a scenario's job names, built (content-tagged, then tagged ``tag``) where Docker runs."""

    tag: str
    steps: list[str]
    context: str | None = None


class ScenarioSpec(_Strict):
    description: str = ""
    job: str = "job.yaml"
    images: list[ScenarioImage] = Field(default_factory=list)
    s3_data: dict[str, str] = Field(default_factory=dict)
    steps: list[Step] = Field(default_factory=lambda: [Step(rung="local"), Step(rung="docker")])
    tolerance: Tolerance = Field(default_factory=Tolerance)
    expect: Expectation

    @field_validator("s3_data")
    @classmethod
    def _s3_uris(cls, value: dict[str, str]) -> dict[str, str]:
        for uri in value:
            S3Uri.parse(uri)  # a ValueError names the URI and the form expected
        return value


@dataclass
class ScenarioResult:
    name: str
    spec: ScenarioSpec
    verdict: Verdict | None
    records: list[RunRecord] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def cause_rank(self) -> int | None:
        """Position (1-based) of the expected cause among the verdict's causes; None if absent."""
        if self.verdict is None or self.spec.expect.cause is None:
            return None
        causes = self.verdict.causes
        return causes.index(self.spec.expect.cause) + 1 if self.spec.expect.cause in causes else None

    @property
    def as_expected(self) -> bool:
        if self.verdict is None:
            return False
        expect = self.spec.expect
        return (
            self.verdict.outcome == expect.outcome
            and (expect.cause is None or self.cause_rank == 1)
            and (expect.first_rung is None or self.verdict.first_rung == expect.first_rung)
        )


def load_scenario(directory: Path) -> ScenarioSpec:
    """The scenario, with every step's rung settings checked against what that rung declares."""
    path = directory / "scenario.yaml"
    try:
        spec = ScenarioSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        for step in spec.steps:
            rung_options(step.rung, step.options)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise JobSpecError(f"{path}: {exc}", hint="scenarios/README.md describes scenario.yaml") from None
    except UsageError as exc:
        raise JobSpecError(f"{path}: {exc.message}", hint=exc.hint) from None
    return spec


def all_scenarios(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/scenario.yaml"))


def run_scenario(directory: Path, records_dir: Path) -> ScenarioResult:
    """Climb the scenario's steps; a step whose rung cannot run here is skipped (with why)."""
    spec = load_scenario(directory)
    base = load_job(directory / spec.job)
    steps = [step.to_step() for step in spec.steps]
    if spec.images:
        _build_images(spec.images, directory)
    unreachable = s3.missing_reason() if spec.s3_data or base.uses_s3 else None
    if unreachable is not None:
        skipped = {step.label: f"the scenario uses S3: {unreachable}" for step in steps}
        return ScenarioResult(directory.name, spec, None, skipped=skipped)
    for uri, source in spec.s3_data.items():
        s3.upload_tree(directory / source, uri, create_bucket=True)
    try:
        result = climbing.climb(base, records_dir, rungs=steps, tolerance=spec.tolerance.for_checks())
    except NoRungCanRun as exc:
        return ScenarioResult(directory.name, spec, None, skipped=exc.skipped)
    return ScenarioResult(directory.name, spec, result.verdict, result.records, result.skipped)


def _build_images(wanted: list[ScenarioImage], directory: Path) -> None:
    """Build the scenario's images where an engine answers; where none does, the steps that
    need them are skipped by their rung's own check."""
    from harness.backends.containers import client
    from harness.runtime.images import build_image, ensure_torch_image

    if get_backend("docker", gpus=False).unavailable_reason() is not None:
        return
    engine = client()
    base = ensure_torch_image(engine)
    for image in wanted:
        context = directory / image.context if image.context else None
        built = build_image(engine, base=base, steps=image.steps, context=context, name="harness/scenario")
        repository, _, tag = image.tag.rpartition(":")
        engine.images.get(built).tag(repository, tag)
