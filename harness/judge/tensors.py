"""Checkpoints compared tensor by tensor: keys, renamed keys, shapes, dtypes and values.

Checkpoints are large and usually bit-identical, so nothing is copied: torch zip files are
loaded with ``torch.load(mmap=True)`` and ``.safetensors`` files are memory-mapped by a reader of
their own (8-byte little-endian header length, JSON header, raw buffer), which keeps the
``safetensors`` package out of the dependencies. Identical tensors are recognised by one
``torch.equal`` over integer views (memory bandwidth, no NaN logic); only tensors that differ are
walked again, in chunks, for their error statistics, so no full-size temporary is ever made.

A wrapper that renames every key (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``) is found
as one :class:`KeyRename` instead of N missing plus N extra keys, and the renamed tensors are
still compared. torch is imported inside the functions: the harness core runs without it and
:class:`CheckpointError` says so.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import CheckpointError
from harness.judge import unpickle

if TYPE_CHECKING:
    import torch

__all__ = [
    "CheckpointDiff",
    "CheckpointError",
    "KeyRename",
    "TensorDiff",
    "ValueDiff",
    "compare",
    "compare_state",
    "compare_tensor",
    "find_renames",
    "flatten",
    "is_checkpoint_name",
    "load",
    "sniff",
]

#: File names treated as checkpoints whatever their first bytes say.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
#: Elements per chunk when a differing tensor is walked for its statistics: 8 MiB temporaries
#: in float64, large enough to amortise torch's thread start-up (measured best on 16 cores).
CHUNK = 1 << 20
#: Bytes :func:`sniff` needs: a zip's first local header with a long archive name.
SNIFF_BYTES = 512

Format = Literal["torch", "torch-legacy", "safetensors"]
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickled 0x1950a86a20f9469cfc6c
_SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit
_METADATA = "__metadata__"  # the safetensors header's string-to-string map
_SAFETENSORS_DTYPES = {  # format name → torch attribute name
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
}
_INSTALL_HINT = "pip install 'sagemaker-parity-harness[torch]' (or the torch build the jobs use)"


@dataclass(frozen=True)
class TensorDiff:
    """One tensor on both sides. ``name`` is the baseline key, ``other`` the candidate's (they
    differ for renamed keys). Statistics follow numpy's ``isclose`` rule with the baseline as
    reference: an element is beyond tolerance when ``|a - b| > atol + rtol * |a|``; NaN equals
    NaN, a NaN on one side only is an infinite error. Shapes that differ are not compared."""

    name: str
    other: str
    shape: tuple[int, ...]
    other_shape: tuple[int, ...]
    dtype: str
    other_dtype: str
    numel: int = 0
    differing: int = 0
    beyond: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    #: Elements that are NaN or infinite on one side only: (on the baseline, on the candidate).
    nonfinite: tuple[int, int] = (0, 0)

    @property
    def shape_differs(self) -> bool:
        return self.shape != self.other_shape

    @property
    def dtype_differs(self) -> bool:
        return self.dtype != self.other_dtype

    @property
    def equal(self) -> bool:
        return not self.shape_differs and self.differing == 0

    @property
    def within_tolerance(self) -> bool:
        return not self.shape_differs and self.beyond == 0


@dataclass(frozen=True)
class KeyRename:
    """Keys that match once ``segment`` is removed: ``scope`` is the dotted path it sits under
    (``""``: a prefix of the whole key, ``"*"``: wherever it appears, as FSDP wrappers do);
    ``side`` is the checkpoint that carries it. ``pairs`` are (baseline key, candidate key)."""

    segment: str
    scope: str
    side: Literal["baseline", "candidate"]
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ValueDiff:
    """A non-tensor leaf (an epoch counter, a learning rate, metadata) that differs."""

    name: str
    value: str
    other: str


@dataclass(frozen=True)
class CheckpointDiff:
    """Everything that differs between two checkpoints; ``tensors`` holds every compared pair,
    equal ones included, so callers can say how much agreed."""

    missing: tuple[str, ...]
    extra: tuple[str, ...]
    renames: tuple[KeyRename, ...]
    tensors: tuple[TensorDiff, ...]
    values: tuple[ValueDiff, ...]
    rtol: float
    atol: float

    @property
    def shape_mismatches(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.shape_differs]

    @property
    def dtype_mismatches(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.dtype_differs and not t.shape_differs]

    @property
    def beyond_tolerance(self) -> list[TensorDiff]:
        """Comparable tensors with elements beyond tolerance, worst (largest share) first."""
        bad = [t for t in self.tensors if not t.shape_differs and t.beyond]
        return sorted(bad, key=lambda t: (t.beyond / max(t.numel, 1), t.max_abs), reverse=True)

    @property
    def keys_match(self) -> bool:
        return not (self.missing or self.extra or self.renames)

    @property
    def identical(self) -> bool:
        """Same keys, shapes, dtypes and values (the bytes may still differ: pickle metadata)."""
        return self.keys_match and not self.values and all(t.equal and not t.dtype_differs for t in self.tensors)

    @property
    def within_tolerance(self) -> bool:
        return (
            self.keys_match
            and not self.values
            and not self.dtype_mismatches
            and all(t.within_tolerance for t in self.tensors)
        )


# --- reading ---------------------------------------------------------------------------------------


def is_checkpoint_name(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_SUFFIXES)


def sniff(head: bytes) -> Format | None:
    """The checkpoint format from a file's first bytes (``SNIFF_BYTES`` of them), or None."""
    if head.startswith(b"PK\x03\x04") and len(head) >= 30:
        name_len = struct.unpack_from("<H", head, 26)[0]
        first = head[30 : 30 + name_len]
        return "torch" if len(first) == name_len and first.endswith(b"data.pkl") else None
    if head.startswith(_LEGACY_MAGIC):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack_from("<Q", head)[0] <= _SAFETENSORS_MAX_HEADER:
        return "safetensors"
    return None


#: What a checkpoint that cannot be read tensor by tensor is compared as, and how to change that.
_BYTES_ONLY = (
    "its bytes are compared, not its tensors; write it with torch.save or safetensors, or check that it was "
    "written whole"
)


def load(path: Path) -> dict[str, Any]:
    """A checkpoint as flat ``{dotted key: leaf}``, tensors memory-mapped where the format allows."""
    with path.open("rb") as handle:
        fmt = sniff(handle.read(SNIFF_BYTES))
    if fmt is None and not is_checkpoint_name(path.name):
        raise CheckpointError(f"{path.name}: not a torch or safetensors checkpoint", hint=_BYTES_ONLY)
    torch = _torch()
    if fmt == "safetensors":
        return _load_safetensors(path, torch)
    try:
        obj = torch.load(path, mmap=fmt == "torch", weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - objects beyond torch's allowlist: read them by value instead
        try:
            obj = torch.load(
                path, mmap=fmt == "torch", weights_only=False, map_location="cpu", pickle_module=unpickle.RESTRICTED
            )
        except Exception as exc:  # pickle, zip and torch errors all mean "cannot read"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path.name}: cannot load as a checkpoint ({first})",
                hint="the file is damaged or not a torch checkpoint",
            ) from exc
    return flatten(obj)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts, lists and tuples as dotted keys: ``{"model": {"fc.weight": t}}`` gives
    ``model.fc.weight``, an optimizer's ``param_groups[0]["lr"]`` gives ``param_groups.0.lr``; a
    pickled object (:class:`harness.judge.unpickle.Opaque`) gives its class and its fields."""
    state = unpickle.state_of(obj)
    if state is not None:  # an object pickled with its fields: its class, then each field
        return {f"{prefix}.__class__" if prefix else "__class__": obj.qualname, **flatten(state, prefix)}
    if isinstance(obj, Mapping):
        items: Any = obj.items()
    elif isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields") and type(obj).__name__ != "Size":
        items = enumerate(obj)
    else:
        return {prefix: obj}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            "torch is not installed, so checkpoints cannot be compared tensor by tensor", hint=_INSTALL_HINT
        ) from None
    return torch


def _load_safetensors(path: Path, torch: Any) -> dict[str, Any]:
    """Memory-map a ``.safetensors`` file: copy-on-write mapping (writable for torch, never
    written back), one tensor view per header entry."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path.name}: corrupt safetensors header ({exc})", hint=_BYTES_ONLY) from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path.name}: corrupt safetensors header (not a JSON object)", hint=_BYTES_ONLY)
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    base = torch.frombuffer(mapped, dtype=torch.uint8) if size > 8 + length else torch.empty(0, dtype=torch.uint8)
    flat: dict[str, Any] = {f"{_METADATA}.{k}": v for k, v in (header.pop(_METADATA, None) or {}).items()}
    for name, entry in header.items():
        try:
            dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
            begin, end = (8 + length + offset for offset in entry["data_offsets"])
            flat[name] = _view(base[begin:end], dtype, entry["shape"])
        except (KeyError, AttributeError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path.name}: tensor {name!r}: bad header entry {entry!r} ({exc})", hint=_BYTES_ONLY
            ) from None
    return flat


def _view(raw: torch.Tensor, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if raw.numel() != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{raw.numel()} bytes for shape {shape}")
    try:
        return raw.view(dtype).reshape(shape)
    except RuntimeError:  # offset not a multiple of the element size: copy this one tensor
        return raw.clone().view(dtype).reshape(shape)


# --- comparing -------------------------------------------------------------------------------------


def compare(baseline: Path, candidate: Path, *, rtol: float = 0.0, atol: float = 0.0) -> CheckpointDiff:
    """Compare two checkpoint files (torch or safetensors, in any combination)."""
    return compare_state(load(baseline), load(candidate), rtol=rtol, atol=atol)


def compare_state(
    baseline: Mapping[str, Any], candidate: Mapping[str, Any], *, rtol: float = 0.0, atol: float = 0.0
) -> CheckpointDiff:
    """Compare two state dicts (nested ones are flattened first)."""
    torch = _torch()
    a, b = flatten(baseline), flatten(candidate)
    a_tensors = {k for k, v in a.items() if isinstance(v, torch.Tensor)}
    b_tensors = {k for k, v in b.items() if isinstance(v, torch.Tensor)}
    missing, extra = a_tensors - b_tensors, b_tensors - a_tensors
    renames = find_renames(missing, extra)
    pairs = [(k, k) for k in sorted(a_tensors & b_tensors)] + [p for r in renames for p in r.pairs]
    renamed_a = {x for r in renames for x, _ in r.pairs}
    renamed_b = {y for r in renames for _, y in r.pairs}
    return CheckpointDiff(
        missing=tuple(sorted(missing - renamed_a)),
        extra=tuple(sorted(extra - renamed_b)),
        renames=tuple(renames),
        tensors=tuple(compare_tensor(x, a[x], y, b[y], rtol=rtol, atol=atol) for x, y in pairs),
        values=tuple(_value_diffs(a, b, a.keys() - a_tensors, b.keys() - b_tensors, rtol=rtol, atol=atol)),
        rtol=rtol,
        atol=atol,
    )


def compare_tensor(
    name: str, a: torch.Tensor, other: str, b: torch.Tensor, *, rtol: float = 0.0, atol: float = 0.0
) -> TensorDiff:
    """One pair: bit-identical at memory bandwidth, otherwise chunked statistics."""
    a, b = _plain(a), _plain(b)
    shape, other_shape = tuple(a.shape), tuple(b.shape)
    dtype, other_dtype = str(a.dtype).removeprefix("torch."), str(b.dtype).removeprefix("torch.")
    diff = TensorDiff(name, other, shape, other_shape, dtype, other_dtype, numel=a.numel())
    if shape != other_shape or (a.dtype == b.dtype and _bit_equal(a, b)):
        return diff
    differing, beyond, max_abs, max_rel, nonfinite = _stats(a, b, rtol=rtol, atol=atol)
    return TensorDiff(
        name, other, shape, other_shape, dtype, other_dtype, a.numel(), differing, beyond, max_abs, max_rel, nonfinite
    )


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Sparse and quantized tensors as the dense values they stand for (rare in checkpoints)."""
    import torch

    if t.is_quantized:
        return t.dequantize()
    return t.to_dense() if t.layout != torch.strided else t


def _as_bits(t: torch.Tensor) -> torch.Tensor | None:
    """The tensor's bytes as integers of its own width (no NaN semantics, no copy), or None."""
    import torch

    if not t.is_contiguous():
        return None
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32}.get(t.element_size(), torch.int64)
    return t.reshape(-1).view(width)


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    x, y = _as_bits(a), _as_bits(b)
    return bool(torch.equal(x, y)) if x is not None and y is not None else False


def _chunks(a: torch.Tensor, b: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Aligned 1-D pieces of two same-shape tensors, about CHUNK elements each, one at a time:
    views of contiguous tensors, a copy of one piece otherwise (slices along the first dim)."""
    if a.is_contiguous() and b.is_contiguous():
        x, y = a.reshape(-1), b.reshape(-1)
        for i in range(0, x.numel(), CHUNK):
            yield x[i : i + CHUNK], y[i : i + CHUNK]
    elif a.dim() == 0:
        yield a.reshape(1), b.reshape(1)
    else:
        step = max(1, CHUNK // max(1, a[0].numel()))
        for i in range(0, a.shape[0], step):
            yield a[i : i + step].reshape(-1), b[i : i + step].reshape(-1)


def _stats(
    a: torch.Tensor, b: torch.Tensor, *, rtol: float, atol: float
) -> tuple[int, int, float, float, tuple[int, int]]:
    """(differing, beyond tolerance, max abs error, max rel error, non-finite on one side only:
    (baseline, candidate)), one chunk at a time in float64 (complex128 for complex tensors) so
    the tolerance test is exact for float32 inputs."""
    import torch

    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    may_nan = a.is_floating_point() or a.is_complex() or b.is_floating_point() or b.is_complex()
    differing = beyond = nonfinite_a = nonfinite_b = 0
    max_abs = max_rel = 0.0
    for xc, yc in _chunks(a, b):
        if a.dtype == b.dtype and _bit_equal(xc, yc):
            continue
        x, y = xc.to(wide), yc.to(wide)
        same = x == y
        if may_nan:
            same |= x.isnan() & y.isnan()
            finite_x, finite_y = x.isfinite(), y.isfinite()
            nonfinite_a += int((~finite_x & finite_y).sum())
            nonfinite_b += int((finite_x & ~finite_y).sum())
        err = (x - y).abs().masked_fill_(same, 0.0).nan_to_num_(nan=math.inf, posinf=math.inf)
        mag = x.abs()
        # tolerance per element; a NaN or infinite reference tolerates nothing it is not equal to
        tol = (mag * rtol).add_(atol).nan_to_num_(nan=-1.0, posinf=-1.0).masked_fill_(same, math.inf)
        rel = (err / mag).nan_to_num_(nan=math.inf, posinf=math.inf).masked_fill_(same, 0.0)
        differing += same.numel() - int(same.sum())
        beyond += int((err > tol).sum())
        max_abs, max_rel = max(max_abs, float(err.max())), max(max_rel, float(rel.max()))
    return differing, beyond, max_abs, max_rel, (nonfinite_a, nonfinite_b)


def _value_diffs(
    a: Mapping[str, Any], b: Mapping[str, Any], a_keys: set[str], b_keys: set[str], *, rtol: float, atol: float
) -> list[ValueDiff]:
    """Non-tensor leaves: numbers under the tensor tolerance, the rest by equality; a leaf on
    one side only is reported with ``<absent>`` on the other, except safetensors metadata,
    which a torch file never has."""
    out = []
    for key in sorted(a_keys | b_keys):
        x = a[key] if key in a_keys else _ABSENT
        y = b[key] if key in b_keys else _ABSENT
        if key.startswith(f"{_METADATA}.") and (x is _ABSENT or y is _ABSENT):
            continue
        if not _same_value(x, y, rtol=rtol, atol=atol):
            out.append(ValueDiff(key, _short(x), _short(y)))
    return out


def _same_value(x: Any, y: Any, *, rtol: float, atol: float) -> bool:
    if _is_number(x) and _is_number(y):
        return bool(x == y or abs(x - y) <= atol + rtol * abs(x) or (math.isnan(x) and math.isnan(y)))
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001 - objects whose == is not a plain bool (arrays)
        return repr(x) == repr(y)


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


# --- renamed keys ----------------------------------------------------------------------------------


def find_renames(missing: set[str], extra: set[str]) -> list[KeyRename]:
    """Explain missing and extra keys by a segment one side adds: greedily the rule that maps the
    most keys, until none maps any. Numeric segments (list indices, layer numbers) never count:
    a shifted layer index is a different model, not a renamed one."""
    missing, extra = set(missing), set(extra)
    renames: list[KeyRename] = []
    while missing and extra:
        rule = _best_rule(missing, extra)
        if rule is None:
            break
        renames.append(rule)
        missing -= {x for x, _ in rule.pairs}
        extra -= {y for _, y in rule.pairs}
    return renames


def _best_rule(missing: set[str], extra: set[str]) -> KeyRename | None:
    votes: Counter[tuple[str, str, str]] = Counter()
    for side, carriers, others in (("candidate", extra, missing), ("baseline", missing, extra)):
        for key in carriers:
            votes.update((side, scope, seg) for scope, seg, stripped in _strippings(key) if stripped in others)
    if not votes:
        return None
    # most keys first; then a prefix over a scoped or wildcard rule, then the shorter segment
    (side, scope, segment), _ = min(
        votes.items(), key=lambda kv: (-kv[1], kv[0][1] == "*", len(kv[0][1]), len(kv[0][2]), kv[0])
    )
    carriers, others = (extra, missing) if side == "candidate" else (missing, extra)
    pairs = []
    for key in sorted(carriers):
        stripped = _strip(key, scope, segment)
        if stripped is not None and stripped in others:
            pairs.append((key, stripped) if side == "baseline" else (stripped, key))
    return KeyRename(segment, scope, side, tuple(sorted(pairs))) if pairs else None  # type: ignore[arg-type]


def _strippings(key: str) -> list[tuple[str, str, str]]:
    """(scope, segment, key without it) for one or two non-numeric segments at any position
    but the last, and for one segment removed wherever it appears (scope ``*``)."""
    parts = key.split(".")
    out = []
    for i in range(len(parts) - 1):
        for n in (1, 2):
            segment = parts[i : i + n]
            if i + n < len(parts) and not any(p.isdigit() for p in segment):
                out.append((".".join(parts[:i]), ".".join(segment), ".".join(parts[:i] + parts[i + n :])))
    for part in set(parts[:-1]):
        if not part.isdigit():
            out.append(("*", part, ".".join([p for p in parts[:-1] if p != part] + parts[-1:])))
    return out


def _strip(key: str, scope: str, segment: str) -> str | None:
    parts = key.split(".")
    if scope == "*":
        return ".".join([p for p in parts[:-1] if p != segment] + parts[-1:]) if segment in parts[:-1] else None
    head = scope.split(".") if scope else []
    seg = segment.split(".")
    if (
        parts[: len(head)] != head
        or parts[len(head) : len(head) + len(seg)] != seg
        or len(parts) <= len(head) + len(seg)
    ):
        return None
    return ".".join(head + parts[len(head) + len(seg) :])
