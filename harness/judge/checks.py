"""The registry of checks: the one list of what the verdict looks at (docs/report.md).

The built-in checks come first, in the order their findings are listed before ranking (ties in
severity and confidence keep this order), then the checks installed packages declare in the
entry-point group ``harness.checks``. Each entry point names a :class:`RunCheck` or a
:class:`PairCheck` object; its class says whether it is given one record or a pair::

    # pyproject.toml of a package with a check of its own
    [project.entry-points."harness.checks"]
    loss-spikes = "mypackage.checks:LOSS_SPIKES"   # LOSS_SPIKES = PairCheck("loss-spikes", compare)
"""

from __future__ import annotations

from importlib.metadata import entry_points

from harness.errors import UsageError
from harness.judge import (
    artifacts,
    contract,
    data,
    devices,
    environment,
    failures,
    hang,
    learning,
    lockstep,
    logs,
    metrics,
    model,
    nccl,
    ranks,
    rendezvous,
    replay,
    sharing,
    state_dicts,
    variables,
)
from harness.judge.findings import Finding
from harness.judge.protocol import Check, CheckContext, PairCheck, RunCheck
from harness.record.run_record import RunRecord

ENTRY_POINT_GROUP = "harness.checks"

BUILTIN: tuple[Check, ...] = (
    RunCheck("model", model.check_run),
    RunCheck("replay", replay.check_run),
    RunCheck("data", data.check_run),
    RunCheck("ranks", ranks.check_run),
    RunCheck("lockstep", lockstep.check_run),
    RunCheck("rendezvous", rendezvous.check_run),
    RunCheck("sharing", sharing.check_run),
    RunCheck("devices", devices.check_run),
    RunCheck("hang", hang.check_run),
    RunCheck("logs", logs.check_run),
    RunCheck("checkpoint-clash", artifacts.check_run),
    RunCheck("state-dicts", state_dicts.check_run),
    RunCheck("variables-unset", variables.check_run),
    PairCheck("failures", failures.compare),
    PairCheck("data-against-baseline", data.compare),
    PairCheck("metrics", metrics.compare),
    PairCheck("learning", learning.compare),
    PairCheck("artifacts", artifacts.compare),
    PairCheck("contract", contract.compare),
    PairCheck("environment", environment.compare),
    PairCheck("nccl", nccl.compare),
    PairCheck("variables", variables.compare),
)


def registered() -> tuple[Check, ...]:
    """The built-in checks, then the installed ones. Read on every call, not cached: what is
    installed can change within one process (a notebook's ``pip install``, a test)."""
    checks = BUILTIN + installed()
    names = [check.name for check in checks]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(
            f"checks registered twice: {', '.join(twice)}",
            hint=f"give each check in the {ENTRY_POINT_GROUP!r} entry points a name of its own",
        )
    return checks


def installed() -> tuple[Check, ...]:
    """The checks of the entry-point group, in a stable order (by entry point name). A broken
    entry point stops the verdict: a check silently left out would pass for parity."""
    checks = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        where = f"entry point {point.name} = {point.value} ({ENTRY_POINT_GROUP})"
        try:
            check = point.load()
        except Exception as exc:  # any import error of another package's code
            raise UsageError(
                f"{where} cannot be loaded: {type(exc).__name__}: {exc}",
                hint="fix or uninstall the package that declares it",
            ) from exc
        if not isinstance(check, RunCheck | PairCheck):
            raise UsageError(
                f"{where} is a {type(check).__name__}, not a check",
                hint="point it at a harness.judge.protocol.RunCheck or PairCheck object",
            )
        checks.append(check)
    return tuple(checks)


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    """Every pair check's findings between two records, notes included, unranked: what
    ``harness diff A B`` weighs before it decides."""
    return [f for check in registered() if isinstance(check, PairCheck) for f in check(baseline, candidate, context)]
