"""``harness bisect``: which one difference between two rungs makes a job depart.

Between ``local`` and ``docker`` many things change at once: the network model (where the lower
rung's hosts share one loopback, as ``single``'s one process or a ``local`` run without a network
namespace per host does, against each its own network stack), ``/dev/shm``, ulimits, the
environment (a local run inherits the shell's variables, a container gets the contract's only),
the image (Python and packages), channel delivery. Each dimension the docker rung can take from
the local rung is a setting of it; the bisect runs the upper rung with one dimension at a time
set as on the lower one, and the first run that agrees with the lower rung names the dimension.
For the environment it then halves the inherited variables until one variable (or the smallest
group it can find) is left. Every run is a record of its own; the search stops at ``max_runs``.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends import get_backend
from harness.backends.containers import default_shm_size
from harness.errors import HarnessError, UsageError
from harness.judge.verdict import Verdict, judge
from harness.record.run_record import RunRecord, redact_env
from harness.spec.job import JobSpec

#: The pairs of rungs whose differences the bisect knows how to take apart.
PAIRS = {("local", "docker"), ("single", "docker")}
#: Variables of the machine that are never a job's input and would break a container (paths of
#: this machine, its shell, its session, its credentials).
MACHINE_ONLY = (
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "HOSTNAME",
    "SHLVL",
    "_",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "TMPDIR",
    "DISPLAY",
    "TERM",
    "SHELL",
    "USER",
    "LOGNAME",
    "MAIL",
    "LS_COLORS",
    "COLUMNS",
    "LINES",
)
MACHINE_PREFIXES = ("SSH_", "XDG_", "CONDA_", "PYENV_", "DOCKER_", "AWS_", "HARNESS_", "SM_", "PYTEST_")
DEFAULT_MAX_RUNS = 16


@dataclass
class Step:
    """One run of the search: what it changed on the upper rung, and how it came out."""

    dimension: str
    change: str
    record: str
    agrees: bool
    #: The step's verdict against the lower rung: ``parity``, or the outcome and its first cause
    #: (``failed (shm-exhausted)``; ``diverged (rendezvous-address)`` where the change removed the
    #: failure and a finding remains: a loopback rendezvous succeeds on a shared network).
    outcome: str


@dataclass
class Bisection:
    lower: str
    upper: str
    departure: str
    steps: list[Step] = field(default_factory=list)
    dimension: str | None = None
    culprit: str | None = None
    not_bisected: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "departure": self.departure,
            "dimension": self.dimension,
            "culprit": self.culprit,
            "steps": [vars(step) for step in self.steps],
            "not_bisected": self.not_bisected,
        }


def inherited_environment() -> dict[str, str]:
    """What a local run inherits from this machine that a container does not get."""
    return {k: v for k, v in os.environ.items() if k not in MACHINE_ONLY and not k.startswith(MACHINE_PREFIXES)}


def bisect(
    job: JobSpec,
    records_dir: Path,
    *,
    lower: str = "local",
    upper: str = "docker",
    upper_options: dict[str, Any] | None = None,
    max_runs: int = DEFAULT_MAX_RUNS,
    on_record: Callable[[RunRecord], None] = lambda record: None,
) -> Bisection:
    """Run both rungs, then the upper one with one dimension at a time as on the lower one."""
    if (lower, upper) not in PAIRS:
        raise UsageError(
            f"bisect takes {lower} -> {upper} apart in no known dimensions",
            hint="bisect between " + ", ".join(f"{a} and {b}" for a, b in sorted(PAIRS)),
        )
    if max_runs < 2:
        raise UsageError(
            f"--max-runs {max_runs}: the two rungs alone take two runs",
            hint=f"give --max-runs 2 or more (default {DEFAULT_MAX_RUNS})",
        )
    options = dict(upper_options or {})
    runs: list[RunRecord] = []

    def run(rung: str, settings: dict[str, Any]) -> RunRecord:
        if len(runs) >= max_runs:
            raise _Budget(max_runs)
        record = get_backend(rung, **settings).run(job, records_dir)
        on_record(record)
        runs.append(record)
        return record

    base, top = run(lower, {}), run(upper, options)
    verdict = judge([base, top])
    result = Bisection(lower, upper, _departure(verdict))
    if verdict.outcome not in ("diverged", "failed") or verdict.first_rung != upper:
        result.departure = f"nothing to bisect: {upper} does not depart from {lower} ({verdict.outcome})"
        return result

    def agrees(dimension: str, change: str, settings: dict[str, Any]) -> bool:
        """Whether the change removes the departure: parity, or a failure gone (the run ends as
        the lower one did, whatever else still differs)."""
        record = run(upper, {**options, **settings})
        step = judge([base, record])
        ok = step.outcome in ("parity", "nothing-compared") or (
            verdict.outcome == "failed" and step.outcome != "failed" and record.status == base.status
        )
        result.steps.append(Step(dimension, change, str(record.root), ok, _outcome(step)))
        return ok

    try:
        for dimension, change, settings in _dimensions(options, shared_network=_shares_a_network(lower, job)):
            if agrees(dimension, change, settings):
                result.dimension = dimension
                if dimension == "environment":
                    result.culprit = _narrow(sorted(inherited_environment()), agrees)
                break
    except _Budget:
        result.not_bisected["budget"] = f"stopped after {max_runs} runs (--max-runs)"
    result.not_bisected.update(
        {
            "image": "Python and packages of the image against this machine's: not a setting of the docker rung",
            "channel delivery": "bind mounts against symbolic links: not a setting of the docker rung",
        }
    )
    return result


class _Budget(HarnessError):
    """The search reached ``max_runs``: raised and caught inside :func:`bisect` (which checks that
    its first two runs fit), which then reports what it found so far."""

    def __init__(self, max_runs: int) -> None:
        super().__init__(f"the search reached {max_runs} runs", hint="give a larger --max-runs to search further")


def _departure(verdict: Verdict) -> str:
    return f"{verdict.first_rung} {_outcome(verdict)}"


def _outcome(verdict: Verdict) -> str:
    if verdict.outcome in ("parity", "nothing-compared"):
        return verdict.outcome
    return f"{verdict.outcome} ({verdict.causes[0] if verdict.causes else verdict.outcome})"


def _shares_a_network(lower: str, job: JobSpec) -> bool:
    """Whether the lower rung runs the job's hosts on one network: ``single`` (one host for all),
    or ``local`` where this machine gives no network namespace per host."""
    plan = get_backend(lower).plan(job)
    return len(job.hosts) > 1 and (plan.shared_network or len(plan.job.hosts) != len(job.hosts))


def _dimensions(options: dict[str, Any], *, shared_network: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """Each dimension in which the upper rung, as configured, differs from a local run, the ones
    most often behind a departure first."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    local_shm = default_shm_size()
    if options.get("shm_size", local_shm) != local_shm:
        found.append(
            ("/dev/shm", f"/dev/shm {local_shm} as on the host, not {options['shm_size']}", {"shm_size": local_shm})
        )
    if shared_network:
        found.append(
            (
                "network model",
                "every host in one network namespace, sharing a loopback as the lower rung's hosts do",
                {"network": "shared"},
            )
        )
    inherited = inherited_environment()
    if inherited:
        found.append(
            (
                "environment",
                f"the {len(inherited)} variables a local run inherits from this machine "
                f"({', '.join(sorted(redact_env(inherited)))[:200]})",
                {"environment": inherited},
            )
        )
    limits = {name: _soft_limit(name) for name in ("memlock", "stack")}
    found.append(("ulimits", f"ulimits as on the host ({limits})", {"ulimits": limits}))
    return found


def _soft_limit(name: str) -> int:
    soft = resource.getrlimit(getattr(resource, f"RLIMIT_{name.upper()}"))[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


def _narrow(names: list[str], agrees: Callable[[str, str, dict[str, Any]], bool]) -> str:
    """The one inherited variable (or smallest group found) without which the job departs."""
    environment = inherited_environment()
    while len(names) > 1:
        half = len(names) // 2
        for part in (names[:half], names[half:]):
            if agrees(
                "environment",
                f"only {', '.join(part[:8])}{' ...' if len(part) > 8 else ''}",
                {"environment": {name: environment[name] for name in part}},
            ):
                names = part
                break
        else:
            return ", ".join(names)  # needs variables from both halves together
    return names[0]


def to_text(result: Bisection) -> str:
    lines = [f"bisect {result.lower} -> {result.upper}: {result.departure}"]
    for number, step in enumerate(result.steps, 1):
        if not step.agrees:
            outcome = f"departs: {step.outcome}"
        elif step.outcome == "parity":
            outcome = f"agrees with {result.lower}"
        else:  # a failure the change removed, with what still differs
            outcome = f"ends as on {result.lower} (verdict: {step.outcome})"
        lines.append(f"  {number}. [{step.dimension}] {result.upper} with {step.change}: {outcome}")
        lines.append(f"     {step.record}")
    if result.dimension:
        culprit = f": {result.culprit}" if result.culprit else ""
        lines.append(
            f"the {result.upper} run departs because of its {result.dimension}{culprit} "
            f"(set as on {result.lower}, the job ends as on {result.lower})"
        )
    elif result.steps:
        lines.append("no single dimension the bisect can set makes it agree")
    lines += [f"not bisected: {what}: {why}" for what, why in result.not_bisected.items()]
    return "\n".join(lines)
