"""The rungs, in ladder order. Backends are imported lazily by name, so a rung's heavy
dependencies (the docker SDK, the SageMaker SDK) are only loaded when that rung is used."""

from __future__ import annotations

import importlib

from harness.backends.base import Backend
from harness.errors import UsageError

#: rung name → "module:class", in the order the ladder climbs.
RUNGS: dict[str, str] = {
    "local": "harness.backends.local:LocalBackend",
    "local-gpu": "harness.backends.local:LocalGpuBackend",
    "docker": "harness.backends.docker:DockerBackend",
    "sagemaker-local": "harness.backends.sagemaker_local:SageMakerLocalBackend",
    "sagemaker": "harness.backends.sagemaker:SageMakerBackend",
}


def get_backend(name: str, **options: object) -> Backend:
    """The rung called ``name``; ``options`` are that rung's settings (e.g. docker's ``shm_size``)."""
    try:
        target = RUNGS[name]
    except KeyError:
        raise UsageError(f"unknown rung {name!r}; choose from {', '.join(RUNGS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(**options)  # type: ignore[no-any-return]
