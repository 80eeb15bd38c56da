"""A job file of any workload: its ``workload:`` key says which (``training`` where it has none),
and that workload's loader validates the rest.

Training's loader is :func:`harness.spec.job.job_from_mapping`. Another workload's package
declares its own in the entry-point group ``harness.workloads`` (kind → a callable taking the
parsed file, ``origin`` and ``base_dir``), as rungs and checks join theirs::

    [project.entry-points."harness.workloads"]
    serving = "mypackage.spec:load"     # load(data, *, origin, base_dir) -> ServingSpec
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.errors import JobSpecError
from harness.spec.job import JobSpec, did_you_mean, job_from_mapping, read_job_file
from harness.spec.workload import Workload

ENTRY_POINT_GROUP = "harness.workloads"
WORKLOAD_KEY = "workload"

Loader = Callable[..., Workload]


def loaders() -> dict[str, Loader]:
    """Every workload whose job files load here: training, then those installed packages declare."""
    found: dict[str, Loader] = {JobSpec.kind: job_from_mapping}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, _entry_point_loader(point.name, point.value, point.load))
    return found


def load_spec(path: Path) -> Workload:
    """Read a job file and validate it as the workload it names."""
    data = read_job_file(path)
    kind = data.pop(WORKLOAD_KEY, JobSpec.kind) if isinstance(data, dict) else JobSpec.kind
    known = loaders()
    if not isinstance(kind, str) or kind not in known:
        raise JobSpecError(
            f"{path}: {WORKLOAD_KEY}: {kind!r} is not a workload known here{did_you_mean(str(kind), list(known))}",
            hint=f"workloads here: {', '.join(known)}; another installs its loader in {ENTRY_POINT_GROUP!r}",
        )
    return known[kind](data, origin=str(path), base_dir=path.resolve().parent)


def _entry_point_loader(name: str, value: str, load: Callable[[], Any]) -> Loader:
    """The loader an entry point names, imported when a job file of its workload is read."""

    def loader(data: Any, *, origin: str, base_dir: Path) -> Workload:
        try:
            loaded = load()
        except Exception as exc:  # any import error of another package's code
            raise JobSpecError(
                f"{origin}: the {name!r} workload's loader ({value}) cannot be imported: {type(exc).__name__}: {exc}",
                hint="fix or uninstall the package that declares it",
            ) from exc
        return loaded(data, origin=origin, base_dir=base_dir)  # type: ignore[no-any-return]

    return loader
