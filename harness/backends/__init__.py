"""The rungs, in ladder order, and the one place that turns a rung's name and settings into a
backend. Backends are imported lazily by name, so a rung's heavy dependencies (the docker SDK,
the SageMaker SDK) are only loaded when that rung is used.

Rungs of other packages join through the entry-point group ``harness.rungs`` (name → a
:class:`~harness.backends.base.Backend` subclass), as pytest plugins join ``pytest11``; they
climb after the built-in rungs.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from harness.backends.base import Backend, RungOptions
from harness.errors import UsageError

ENTRY_POINT_GROUP = "harness.rungs"

#: rung name → "module:class", in the order the ladder climbs.
BUILTIN_RUNGS: dict[str, str] = {
    "single": "harness.backends.local:SingleBackend",
    "local": "harness.backends.local:LocalBackend",
    "local-gpu": "harness.backends.local:LocalGpuBackend",
    "docker": "harness.backends.docker:DockerBackend",
    "sagemaker-local": "harness.backends.sagemaker_local:SageMakerLocalBackend",
    "sagemaker": "harness.backends.sagemaker:SageMakerBackend",
}


#: Rungs registered in this process (:func:`registered`), which stand in for any rung of their name.
_REGISTERED: dict[str, type[Backend[Any, Any]]] = {}


def rungs() -> dict[str, str]:
    """Every rung known here, built-in first, then those installed packages declare."""
    found = dict(BUILTIN_RUNGS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    found.update({name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in _REGISTERED.items()})
    return found


@contextlib.contextmanager
def registered(backends: Mapping[str, type[Backend[Any, Any]]]) -> Iterator[None]:
    """``backends`` (rung name → class) stand in for the rungs of those names while the block
    runs, for this process only: how :mod:`harness.testing` puts a canned rung under the ladder
    and the CLI without an installed package."""
    saved = dict(_REGISTERED)
    _REGISTERED.update(backends)
    try:
        yield
    finally:
        _REGISTERED.clear()
        _REGISTERED.update(saved)


def check_rung_names(names: list[str], *, where: str = "") -> None:
    """Raise :class:`UsageError` naming the first unknown rung, the choices and the closest name;
    ``where`` (a flag, a setting) prefixes the message."""
    known = list(rungs())
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise UsageError(
                f"{where + ': ' if where else ''}unknown rung {name!r}; choose from {', '.join(known)}",
                hint=f"did you mean {close[0]!r}?" if close else "`harness doctor` lists every rung",
            )


def parse_rung_list(text: str, *, where: str) -> list[str]:
    """The rungs a comma-separated list names (a flag, a setting); at least one, all known."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"{where}: no rung named", hint=f"e.g. {where} local,docker")
    check_rung_names(names, where=where)
    return names


def backend_class(name: str) -> type[Backend[Any, Any]]:
    """The class behind rung ``name`` (imports its module, and with it the rung's dependencies)."""
    check_rung_names([name])
    if name in _REGISTERED:
        return _REGISTERED[name]
    module, _, attribute = rungs()[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"rung {name!r} cannot be loaded from {rungs()[name]}: {exc}",
            hint="install the package (or the extra) that provides it",
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UsageError(
            f"rung {name!r} ({rungs()[name]}) is not a harness.backends.base.Backend subclass",
            hint="fix the package that declares it in the harness.rungs entry-point group",
        )
    return cls


def rung_options(name: str, options: dict[str, Any]) -> RungOptions:
    """``options`` validated against rung ``name``'s declared settings."""
    model = backend_class(name).Options
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "options"
        choices = ", ".join(model.model_fields) or "none"
        if error["type"] == "extra_forbidden":
            raise UsageError(f"rung {name!r} has no setting {key!r}", hint=f"its settings: {choices}") from None
        raise UsageError(
            f"rung {name!r} setting {key!r}: {error['msg']} (got {error.get('input')!r})",
            hint=f"its settings: {choices}",
        ) from None


def get_backend(name: str, **options: Any) -> Backend[Any, Any]:
    """The rung called ``name``; ``options`` are that rung's settings (e.g. docker's ``shm_size``),
    checked against the settings it declares."""
    return backend_class(name)(rung_options(name, options))
