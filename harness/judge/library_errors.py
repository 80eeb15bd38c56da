"""The errors the distributed libraries raise, extracted from their installed sources.

A job that misuses FSDP, DDP, the elastic launcher, distributed checkpointing, accelerate or
Lightning stops with the library's own message; the catalogue of :mod:`harness.judge.logs` knows
a few dozen by hand and calls the rest a ``python-exception``. This module knows every one the
pinned libraries can raise from Python: ``python -m harness.judge.extract_library_errors`` reads
their sources (each ``raise SomeError("...")`` whose message is a string or f-string), keeps the
first line of each message as literal parts around the formatted values, and writes them to
``harness/judge/library_errors.json``; rerun it when a pin moves (a test fails until it is). A line
the catalogue calls a ``python-exception`` whose message is one of them becomes a finding of the
library's component (``fsdp-refused``, ``ddp-refused`` …) that says which library check raised
it, in which file, line and function: where the user reads why.

Messages raised in C++ (the DDP reducer, c10d's process groups) are not in the Python sources;
the hand-written catalogue covers those that users meet.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import json
import re
from dataclasses import dataclass

#: The packages read, with the folders of each that hold distributed code.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch/distributed", "torch/nn/parallel", "torch/utils/data/distributed.py"),
    "accelerate": ("accelerate",),
    "lightning": ("lightning/fabric", "lightning/pytorch"),
}


@dataclass(frozen=True)
class Component:
    """A part of a library whose refusals share a cause and a hint."""

    prefix: str  # the sources it owns, relative to site-packages
    cause: str
    title: str
    hint: str


#: First match wins: the more specific prefixes first.
COMPONENTS: tuple[Component, ...] = (
    Component(
        "torch/distributed/fsdp/",
        "fsdp-refused",
        "FSDP refused the model or its use",
        "FSDP checks the model, its wrapping policy and the state-dict settings the same on every rank",
    ),
    Component(
        "torch/distributed/_composable/fsdp/",
        "fsdp-refused",
        "FSDP refused the model or its use",
        "FSDP checks the model, its wrapping policy and the state-dict settings the same on every rank",
    ),
    Component(
        "torch/nn/parallel/",
        "ddp-refused",
        "DistributedDataParallel refused the model or its use",
        "DDP needs the same parameters on every rank, on the device it was given, and one forward per backward",
    ),
    Component(
        "torch/distributed/elastic/",
        "launcher-refused",
        "the elastic launcher (torchrun) refused the launch",
        "torchrun's arguments and the rendezvous variables must agree on every host",
    ),
    Component(
        "torch/distributed/run.py",
        "launcher-refused",
        "the elastic launcher (torchrun) refused the launch",
        "torchrun's arguments and the rendezvous variables must agree on every host",
    ),
    Component(
        "torch/distributed/checkpoint/",
        "checkpoint-refused",
        "distributed checkpointing refused the state or the storage",
        "every rank must save and load the same state-dict keys, to storage every rank can reach",
    ),
    Component(
        "torch/distributed/tensor/",
        "dtensor-refused",
        "DTensor or the device mesh refused the layout",
        "the mesh and placements must describe the ranks and devices the job really has",
    ),
    Component(
        "torch/distributed/device_mesh.py",
        "dtensor-refused",
        "DTensor or the device mesh refused the layout",
        "the mesh and placements must describe the ranks and devices the job really has",
    ),
    Component(
        "torch/distributed/pipelining/",
        "pipelining-refused",
        "pipeline parallelism refused the stages or the schedule",
        "every stage must agree on the schedule, the microbatches and the shapes it sends",
    ),
    Component(
        "torch/distributed/",
        "torch-distributed-refused",
        "torch.distributed refused the call",
        "torch.distributed was called with arguments, or at a time, it does not allow (before init_process_group, "
        "after destroy_process_group, with a group this rank is not in)",
    ),
    Component(
        "torch/utils/data/",
        "sampler-refused",
        "DistributedSampler refused its arguments",
        "num_replicas and rank must be the job's world size and global rank (dist.get_world_size(), "
        "dist.get_rank()), or leave both out",
    ),
    Component(
        "accelerate/",
        "accelerate-refused",
        "accelerate refused the configuration or the call",
        "accelerate's configuration (accelerate config, the launch arguments, the plugins) must match what runs",
    ),
    Component(
        "lightning/",
        "lightning-refused",
        "Lightning refused the strategy or the call",
        "the Trainer's or Fabric's strategy, devices and num_nodes must match what the launcher started",
    ),
)


@dataclass(frozen=True)
class LibraryError:
    """One message a library raises: its first line as literal parts around formatted values."""

    parts: tuple[str, ...]
    exception: str
    source: str  # "torch/distributed/fsdp/_init_utils.py:123", relative to site-packages
    function: str

    @property
    def example(self) -> str:
        return "X".join(self.parts)

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("(?:.+?)".join(map(re.escape, self.parts)) + ("" if self.parts[-1] else ".*"))

    @functools.cached_property
    def component(self) -> Component:
        return next(c for c in COMPONENTS if self.source.startswith(c.prefix))


_EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]: ?)?(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception): (?P<message>.+)")


@dataclass(frozen=True)
class Index:
    versions: dict[str, str]
    errors: tuple[LibraryError, ...]
    #: Per error, its longest literal part: a plain substring test before any regex.
    anchors: tuple[str, ...]

    def find(self, line: str, raised_in: str | None = None) -> LibraryError | None:
        """The library error an exception line reports, the most literal one where several match;
        with ``raised_in`` (the traceback's innermost frame), only one raised in that file."""
        said = _EXCEPTION_LINE.match(line)
        if said is None:
            return None
        message = said["message"]
        found = [
            e
            for e, a in zip(self.errors, self.anchors, strict=True)
            if a in message
            and e.pattern.match(message)
            and (raised_in is None or raised_in.endswith("/" + e.source.rsplit(":", 1)[0]))
        ]
        return max(found, key=lambda e: len("".join(e.parts)), default=None)


@functools.cache
def index() -> Index:
    data = json.loads(
        importlib.resources.files("harness.judge").joinpath("library_errors.json").read_text(encoding="utf-8")
    )
    errors = tuple(LibraryError(tuple(e["parts"]), e["exception"], e["source"], e["function"]) for e in data["errors"])
    return Index(data["versions"], errors, tuple(max(e.parts, key=len) for e in errors))


#: Every cause this module can name: findings that explain a python-exception explain these too.
CAUSES = tuple(dict.fromkeys(c.cause for c in COMPONENTS))
