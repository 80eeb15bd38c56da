"""Checkpoints that hold more than tensors, read by value without running their code.

``torch.load(weights_only=True)`` refuses any pickled object outside torch's allowlist: a
checkpoint that also saves the script's ``argparse.Namespace``, a config dataclass or a whole
``nn.Module`` cannot be read that way, and unread means uncompared. Loading it with
``weights_only=False`` would run whatever the pickle names. Here every global on torch's own
allowlist (tensors, storages, ``OrderedDict``, dtypes) is what it is, and every other one becomes
an :class:`Opaque` stand-in that only records what the pickle says about the object: its class's
name, the arguments it was built with, its state and items. Two checkpoints are then compared by
value, tensors inside those objects included, and no code of theirs runs.
"""

from __future__ import annotations

import functools
import pickle
import types
from typing import IO, Any


class Opaque:
    """An object of a class that is not imported: ``qualname``, build arguments, state, items."""

    qualname = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Built by ``__new__`` (pickle's NEWOBJ) or called like the class (REDUCE): same record."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:  # pickle's APPEND(S) for list subclasses
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) for dict subclasses
        self.items.append((key, value))

    def _identity(self) -> tuple[Any, ...]:
        return (self.qualname, self.args, self.kwargs, self.state, self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self.qualname)

    def __repr__(self) -> str:
        shown = self.state if self.state is not None else (self.items or self.args)
        return f"{self.qualname}({shown!r})"


@functools.cache
def _opaque_class(module: str, name: str) -> type[Opaque]:
    return type(name, (Opaque,), {"qualname": f"{module}.{name}", "__module__": __name__})


@functools.cache
def _allowed() -> dict[str, Any]:
    """torch's own weights-only allowlist: the globals a tensor checkpoint legitimately names."""
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed().get(f"{module}.{name}")
        return allowed if allowed is not None else _opaque_class(module, name)


def _load(file: IO[bytes], **kwargs: Any) -> Any:
    return _Unpickler(file, **kwargs).load()


#: What ``torch.load(..., pickle_module=RESTRICTED)`` takes: an ``Unpickler`` and a ``load``.
RESTRICTED = types.ModuleType("harness_restricted_pickle")
RESTRICTED.Unpickler = _Unpickler  # type: ignore[attr-defined]
RESTRICTED.load = _load  # type: ignore[attr-defined]


def state_of(value: Any) -> Any:
    """The part of an :class:`Opaque` that holds its contents (a module's ``__dict__``, a
    namespace's fields), for flattening into dotted keys; None for anything else."""
    if isinstance(value, Opaque) and isinstance(value.state, dict):
        return value.state
    return None
