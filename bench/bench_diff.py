"""Diff throughput: two ~1 GiB checkpoints compared tensor by tensor, loading included.

    python bench/bench_diff.py [--layers 16] [--runs 5] [--cold]

Writes a transformer-shaped state dict (embedding, attention and MLP blocks, norms, head) as a
torch zip file and as ``.safetensors``, a byte-identical-valued copy of each and a copy with a
few tensors changed, then times ``harness.judge.tensors.compare`` on each pair.

Throughput = (bytes of file A + bytes of file B) / wall seconds of one ``compare`` call, which
memory-maps both files, reads every tensor and returns the typed result; 1 GB = 1e9 bytes.
"warm": the files are in the page cache (a warm-up call first), the median of ``--runs``.
"cold" (``--cold``): the page cache of both files is dropped before each call
(``posix_fadvise(DONTNEED)``), so it measures the disk as much as the diff. For scale, two
in-memory references over one tensor of the same total size: ``torch.equal`` (memory
bandwidth) and the naive ``(a - b).abs().max()``. Temporary files are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.judge.tensors import compare  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def transformer_state(layers: int, dim: int = 1024, vocab: int = 32000) -> dict[str, torch.Tensor]:
    """float32 weights shaped like a small decoder: ~1 GiB at 16 layers of width 1024."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.empty(*shape).uniform_(-0.05, 0.05, generator=gen)

    state = {"embed.weight": rand(vocab, dim)}
    for i in range(layers):
        p = f"layers.{i}"
        for name in ("q", "k", "v", "o"):
            state[f"{p}.attn.{name}.weight"], state[f"{p}.attn.{name}.bias"] = rand(dim, dim), rand(dim)
        state[f"{p}.mlp.up.weight"], state[f"{p}.mlp.up.bias"] = rand(4 * dim, dim), rand(4 * dim)
        state[f"{p}.mlp.down.weight"], state[f"{p}.mlp.down.bias"] = rand(dim, 4 * dim), rand(dim)
        for norm in ("norm1", "norm2"):
            state[f"{p}.{norm}.weight"], state[f"{p}.{norm}.bias"] = torch.ones(dim), torch.zeros(dim)
    state["norm.weight"], state["head.weight"] = torch.ones(dim), rand(vocab, dim)
    return state


def changed_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same state with four tensors changed (the rest shared, not copied)."""
    out = dict(state)
    out["layers.0.attn.q.weight"] = state["layers.0.attn.q.weight"] * (1 + 1e-7)  # float noise
    out["layers.1.mlp.up.weight"] = state["layers.1.mlp.up.weight"] + 1e-3  # a real change
    out["layers.1.attn.o.bias"] = state["layers.1.attn.o.bias"].clone().index_fill_(0, torch.tensor([3]), 1.0)
    out["norm.weight"] = state["norm.weight"] * 0.5
    return out


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """The format without the package: JSON header padded to 8 bytes, then the raw buffers."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in state.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for t in state.values():
            out.write(t.contiguous().numpy().data)


def drop_cache(*paths: Path) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn: Callable[[], object], runs: int, before: Callable[[], None] = lambda: None) -> float:
    """Median wall seconds of ``runs`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16, help="decoder layers, at least 2 (16: ~1 GiB per file)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also time with the page cache dropped")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: $TMPDIR)")
    args = parser.parse_args()

    state = transformer_state(args.layers)
    changed = changed_copy(state)
    size = sum(t.nbytes for t in state.values())
    print(
        f"{len(state)} tensors, {size / 2**30:.2f} GiB per checkpoint; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; GB/s = (bytes of both files) / seconds, 1 GB = 1e9 bytes"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-diff-", dir=args.dir) as tmp:
        root = Path(tmp)
        for fmt, write in (("torch", lambda s, p: torch.save(s, p)), ("safetensors", save_safetensors)):
            ext = "pt" if fmt == "torch" else "safetensors"
            a, same, other = (root / f"{n}.{ext}" for n in ("a", "same", "changed"))
            write(state, a), write(state, same), write(changed, other)
            for case, b in (("identical", same), ("4 tensors differ", other)):
                diff = compare(a, b, rtol=RTOL, atol=ATOL)
                total = a.stat().st_size + b.stat().st_size

                def run(a: Path = a, b: Path = b) -> object:
                    return compare(a, b, rtol=RTOL, atol=ATOL)

                warm = timed(run, args.runs)
                cold = timed(run, args.runs, lambda a=a, b=b: drop_cache(a, b)) if args.cold else None
                rows.append(
                    (fmt, case, total, warm, cold, sum(not t.equal for t in diff.tensors), len(diff.beyond_tolerance))
                )
            for path in (a, same, other):
                path.unlink()
    print(
        f"\n{'format':<12} {'case':<17} {'bytes':>8} {'warm s':>7} {'warm GB/s':>9} {'cold GB/s':>9} "
        f"{'not equal':>9} {'beyond tol':>10}"
    )
    for fmt, case, total, warm, cold, unequal, beyond in rows:
        cold_text = f"{total / cold / 1e9:9.2f}" if cold else f"{'-':>9}"
        print(
            f"{fmt:<12} {case:<17} {total / 1e9:7.2f}G {warm:7.3f} {total / warm / 1e9:9.2f} {cold_text} "
            f"{unequal:>9} {beyond:>10}"
        )
    references(size, args.runs)


def references(size: int, runs: int) -> None:
    """The in-memory bounds the brief quotes, on this machine."""
    x = torch.empty(size // 4).uniform_()
    y = x.clone()
    for label, fn in (
        ("torch.equal(a, b)", lambda: torch.equal(x, y)),
        ("(a - b).abs().max()", lambda: (x - y).abs().max()),
    ):
        seconds = timed(fn, runs)
        print(f"reference, in memory: {label:<20} {2 * size / seconds / 1e9:6.2f} GB/s")


if __name__ == "__main__":
    main()
