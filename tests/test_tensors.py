"""Checkpoints compared tensor by tensor: real torch and safetensors files in temporary
directories, and one comparison of two run records through ``harness.judge.artifacts.compare``."""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from harness.cli import main  # noqa: E402
from harness.judge import artifacts, tensors  # noqa: E402
from harness.judge.protocol import CheckContext, Tolerance  # noqa: E402
from harness.judge.tensors import CheckpointError, compare, compare_state  # noqa: E402
from harness.judge.verdict import judge  # noqa: E402
from harness.record.archives import collect  # noqa: E402
from harness.record.run_record import RecordWriter, RunRecord  # noqa: E402
from harness.spec.job import JobSpec  # noqa: E402

pytestmark = pytest.mark.unit

RTOL, ATOL = 1e-5, 1e-6
CONTEXT = CheckContext(Tolerance(tensor_rtol=RTOL, tensor_atol=ATOL))


def model_state(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(32, 8, generator=gen),
        "layers.0.attn.weight": torch.randn(8, 8, generator=gen),
        "layers.0.attn.bias": torch.zeros(8),
        "layers.1.attn.weight": torch.randn(8, 8, generator=gen),
        "layers.1.attn.bias": torch.zeros(8),
        "head.weight": torch.randn(4, 8, generator=gen).to(torch.bfloat16),
        "step": torch.tensor(7),
    }


def save(path: Path, obj: Any) -> Path:
    torch.save(obj, path)
    return path


def write_safetensors(path: Path, state: dict[str, Any], *, pad: bool = True) -> Path:
    """A minimal writer of the format, so the reader is tested without the package; ``pad=False``
    leaves the buffer misaligned, as files from some writers are."""
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64", torch.float16: "F16"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, tensor in state.items():
        blob = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    elif len(text) % 2 == 0:
        text += b" "
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


# --- keys --------------------------------------------------------------------------------------


def test_identical_files_with_different_bytes(tmp_path: Path) -> None:
    a, b = save(tmp_path / "a.pt", model_state()), save(tmp_path / "b.pt", model_state())
    assert a.read_bytes() != b.read_bytes()  # the zip's inner folder is named after the file
    diff = compare(a, b, rtol=RTOL, atol=ATOL)
    assert diff.identical and diff.within_tolerance
    assert len(diff.tensors) == 7 and all(t.equal for t in diff.tensors)


def test_ddp_prefix_is_one_rename_and_values_are_still_compared(tmp_path: Path) -> None:
    state = model_state()
    wrapped = {f"module.{k}": v.clone() for k, v in state.items()}
    wrapped["module.embed.weight"][0, 0] += 1.0
    diff = compare(save(tmp_path / "a.pt", state), save(tmp_path / "b.pt", wrapped), rtol=RTOL, atol=ATOL)
    assert diff.missing == () and diff.extra == ()
    [rename] = diff.renames
    assert (rename.segment, rename.scope, rename.side) == ("module", "", "candidate")
    assert ("embed.weight", "module.embed.weight") in rename.pairs and len(rename.pairs) == 7
    [worst] = diff.beyond_tolerance
    assert (worst.name, worst.other, worst.differing, worst.max_abs) == ("embed.weight", "module.embed.weight", 1, 1.0)


def test_prefix_on_the_baseline_side_inside_a_nested_dict() -> None:
    state = model_state()
    baseline = {"model": {f"_orig_mod.{k}": v for k, v in state.items()}, "epoch": 3}
    diff = compare_state(baseline, {"model": state, "epoch": 3})
    [rename] = diff.renames
    assert (rename.segment, rename.scope, rename.side) == ("_orig_mod", "model", "baseline")
    assert ("model._orig_mod.head.weight", "model.head.weight") in rename.pairs
    assert diff.missing == diff.extra == () and all(t.equal for t in diff.tensors)


def test_wrapper_segment_at_several_depths() -> None:
    state = {"embed.weight": torch.ones(2), "layers.0.mlp.weight": torch.ones(2), "layers.1.mlp.weight": torch.ones(2)}
    fsdp = {
        "_fsdp_wrapped_module.embed.weight": torch.ones(2),
        "_fsdp_wrapped_module.layers.0._fsdp_wrapped_module.mlp.weight": torch.ones(2),
        "_fsdp_wrapped_module.layers.1._fsdp_wrapped_module.mlp.weight": torch.ones(2),
    }
    [rename] = compare_state(state, fsdp).renames
    assert (rename.segment, rename.scope, len(rename.pairs)) == ("_fsdp_wrapped_module", "*", 3)


def test_missing_key_and_shifted_layer_index_are_not_renames(tmp_path: Path) -> None:
    state = model_state()
    fewer = {k: v for k, v in state.items() if k != "layers.1.attn.bias"}
    diff = compare(save(tmp_path / "a.pt", state), save(tmp_path / "b.pt", fewer))
    assert diff.missing == ("layers.1.attn.bias",) and diff.extra == () and diff.renames == ()
    shifted = compare_state({"layers.1.w": torch.ones(1)}, {"layers.2.w": torch.ones(1)})
    assert (shifted.missing, shifted.extra, shifted.renames) == (("layers.1.w",), ("layers.2.w",), ())


# --- shapes, dtypes, values ----------------------------------------------------------------------


def test_shape_change(tmp_path: Path) -> None:
    state = model_state()
    bigger = {**state, "embed.weight": torch.zeros(40, 8)}
    diff = compare(save(tmp_path / "a.pt", state), save(tmp_path / "b.pt", bigger), rtol=RTOL, atol=ATOL)
    [changed] = diff.shape_mismatches
    assert (changed.name, changed.shape, changed.other_shape) == ("embed.weight", (32, 8), (40, 8))
    assert diff.beyond_tolerance == [] and not diff.within_tolerance


def test_dtype_change_compares_values_across_dtypes(tmp_path: Path) -> None:
    state = model_state()
    doubled = {**state, "layers.0.attn.weight": state["layers.0.attn.weight"].double()}
    diff = compare(save(tmp_path / "a.pt", state), save(tmp_path / "b.pt", doubled), rtol=RTOL, atol=ATOL)
    [changed] = diff.dtype_mismatches
    assert (changed.dtype, changed.other_dtype, changed.equal) == ("float32", "float64", True)
    assert not diff.identical and not diff.within_tolerance


def test_noise_within_tolerance_and_a_change_beyond_it(tmp_path: Path) -> None:
    state = model_state()
    weight = state["layers.1.attn.weight"]
    noisy = {**state, "layers.1.attn.weight": weight * (1 + 1e-7)}
    changed = {**state, "layers.1.attn.weight": weight.clone()}
    changed["layers.1.attn.weight"][2, 3] += 0.5
    a = save(tmp_path / "a.pt", state)
    within = compare(a, save(tmp_path / "noisy.pt", noisy), rtol=RTOL, atol=ATOL)
    assert within.within_tolerance and not within.identical
    [close] = [t for t in within.tensors if not t.equal]
    assert close.differing > 0 and close.beyond == 0 and 0 < close.max_rel < RTOL
    beyond = compare(a, save(tmp_path / "changed.pt", changed), rtol=RTOL, atol=ATOL)
    [worst] = beyond.beyond_tolerance
    assert (worst.name, worst.differing, worst.beyond) == ("layers.1.attn.weight", 1, 1)
    assert worst.max_abs == pytest.approx(0.5, rel=1e-6)
    assert worst.max_rel == pytest.approx(0.5 / abs(float(weight[2, 3])), rel=1e-5)


def test_nan_equals_nan_but_not_a_number(tmp_path: Path) -> None:
    a = torch.tensor([1.0, float("nan"), float("inf"), 0.0])
    same = compare_state({"w": a}, {"w": a.clone()}).tensors[0]
    assert same.equal
    b = torch.tensor([1.0, 2.0, float("inf"), 1e-3])
    diff = compare_state({"w": a}, {"w": b}, rtol=RTOL, atol=ATOL).tensors[0]
    assert (diff.differing, diff.beyond, diff.max_abs, diff.max_rel) == (2, 2, float("inf"), float("inf"))


@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "non-contiguous"])
def test_large_tensors_are_walked_in_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, transposed: bool) -> None:
    monkeypatch.setattr(tensors, "CHUNK", 100)
    a = torch.randn(64, 50)
    b = a.clone()
    b[5, 7], b[60, 49] = b[5, 7] + 2.0, b[60, 49] - 3.0
    if transposed:  # saved as views of a transposed storage: not contiguous when loaded
        a, b = a.t(), b.t()
    diff = compare(save(tmp_path / "a.pt", {"w": a}), save(tmp_path / "b.pt", {"w": b}), rtol=RTOL, atol=ATOL)
    [t] = diff.tensors
    assert (t.differing, t.beyond) == (2, 2) and t.max_abs == pytest.approx(3.0, rel=1e-6)


def test_nested_state_and_optimizer_values(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(3, 4)).sum().backward()
    optim.step()
    first = {"model": model.state_dict(), "optimizer": optim.state_dict(), "epoch": 1}
    optim.param_groups[0]["lr"] = 0.05
    second = {"model": model.state_dict(), "optimizer": optim.state_dict(), "epoch": 1}
    diff = compare(save(tmp_path / "a.pt", first), save(tmp_path / "b.pt", second), rtol=RTOL, atol=ATOL)
    names = {t.name for t in diff.tensors}
    assert {"model.weight", "model.bias", "optimizer.state.0.momentum_buffer"} <= names
    assert [(v.name, v.value, v.other) for v in diff.values] == [("optimizer.param_groups.0.lr", "0.1", "0.05")]


# --- formats -------------------------------------------------------------------------------------


def test_safetensors_reader_matches_torch_files(tmp_path: Path) -> None:
    state = {k: v for k, v in model_state().items() if k != "step"}
    torch_file = save(tmp_path / "a.pt", state)
    for pad in (True, False):
        path = write_safetensors(tmp_path / f"pad-{pad}.safetensors", state, pad=pad)
        loaded = tensors.load(path)
        assert loaded["head.weight"].dtype == torch.bfloat16 and loaded["__metadata__.format"] == "pt"
        assert compare(torch_file, path).identical


def test_files_written_by_the_safetensors_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    state = {k: v for k, v in model_state().items() if k != "step"} | {"empty": torch.zeros(0, 3)}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    st.save_file(state, str(a), metadata={"format": "pt"})
    st.save_file({**state, "embed.weight": state["embed.weight"] + 1.0}, str(b), metadata={"format": "pt"})
    loaded = tensors.load(a)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    [worst] = compare(a, b, rtol=RTOL, atol=ATOL).beyond_tolerance
    assert worst.name == "embed.weight" and worst.differing == 32 * 8


def test_legacy_torch_format_loads_without_mmap(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save(model_state(), path, _use_new_zipfile_serialization=False)
    assert tensors.sniff(path.read_bytes()[: tensors.SNIFF_BYTES]) == "torch-legacy"
    assert compare(path, save(tmp_path / "new.pt", model_state())).identical


def test_sniff_and_unreadable_files(tmp_path: Path) -> None:
    torch_file = save(tmp_path / "weights.data", model_state())
    assert tensors.sniff(torch_file.read_bytes()[: tensors.SNIFF_BYTES]) == "torch"
    assert tensors.sniff(b"hello world, not a checkpoint") is None
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch or safetensors checkpoint"):
        tensors.load(notes)
    (tmp_path / "random.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot load as a checkpoint"):
        tensors.load(tmp_path / "random.bin")


def test_pickled_objects_are_read_by_value_and_never_run(tmp_path: Path) -> None:
    """Objects beyond torch's allowlist (a Namespace, a Path, anything) are compared by what the
    pickle says about them; a pickle that would call a function only records the call."""
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    path = save(
        tmp_path / "obj.pt", {"w": torch.ones(1), "cfg": Path("x"), "args": argparse.Namespace(lr=0.1), "boom": Boom()}
    )
    flat = tensors.load(path)
    assert not marker.exists()
    assert (flat["args.__class__"], flat["args.lr"]) == ("argparse.Namespace", 0.1)
    assert repr(flat["boom"]).startswith("posix.system(") and torch.equal(flat["w"], torch.ones(1))
    other = save(
        tmp_path / "other.pt",
        {"w": torch.ones(1), "cfg": Path("x"), "args": argparse.Namespace(lr=0.2), "boom": Boom()},
    )
    diff = compare(path, other)
    assert [(v.name, v.value, v.other) for v in diff.values] == [("args.lr", "0.1", "0.2")]


def test_without_torch_the_error_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = save(tmp_path / "a.pt", model_state())
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CheckpointError, match="torch is not installed"):
        compare(path, path)


# --- through the artifacts check -----------------------------------------------------------------


def make_record(root: Path, rung: str, files: dict[str, Any]) -> RunRecord:
    """A minimal succeeded record whose one host wrote ``files`` (state dicts are torch.save'd)."""
    writer = RecordWriter(root / rung, JobSpec(name="demo", image="demo:latest"), rung)
    writer.start()
    model_dir = root / f"{rung}-host" / "model"
    model_dir.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (model_dir / name).write_bytes(content)
        else:
            torch.save(content, model_dir / name)
    collect({"algo-1": root / f"{rung}-host"}, writer.root)
    writer.finish("succeeded")
    return RunRecord.load(writer.root)


def test_artifacts_check_compares_checkpoints_by_value(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    state = model_state()
    noisy = {k: v * (1 + 1e-7) if v.is_floating_point() else v for k, v in state.items()}
    changed = {**state, "layers.0.attn.weight": state["layers.0.attn.weight"] + 0.1}
    base = make_record(
        tmp_path,
        "local",
        {
            "model.pt": state,
            "noisy.pth": state,
            "weights.data": state,
            "ddp.pt": state,
            "notes.txt": b"a",
            "random.bin": b"\x00" * 10,
        },
    )
    reordered = dict(reversed(state.items()))  # other bytes, same tensors
    cand = make_record(
        tmp_path,
        "docker",
        {
            "model.pt": reordered,
            "noisy.pth": noisy,
            "weights.data": changed,
            "ddp.pt": {f"module.{k}": v for k, v in state.items()},
            "notes.txt": b"b",
            "random.bin": b"\x01" * 10,
        },
    )
    findings = {f.title.split(":")[1] if ":" in f.title else "bytes": f for f in artifacts.compare(base, cand, CONTEXT)}
    assert findings["model.pt"].severity == "note" and "tensors identical" in findings["model.pt"].title
    assert findings["noisy.pth"].severity == "note" and "values within tolerance" in findings["noisy.pth"].title

    weights = findings["weights.data"]  # a torch file found by its first bytes, not its name
    assert (weights.severity, weights.kind, weights.cause) == ("divergence", "tensors", "weights-differ")
    assert weights.evidence[0].startswith("layers.0.attn.weight: max abs 0.1")

    ddp = findings["ddp.pt"]
    assert (ddp.severity, ddp.cause) == ("divergence", "checkpoint-key-prefix")
    assert "'module.'" in ddp.title and "model.module.state_dict()" in (ddp.hint or "")
    assert ddp.evidence[0] == "7 keys renamed, for example:"
    assert "7 of 7 tensors agree within tolerance" in ddp.evidence[-1]

    assert "2 files in model.tar.gz differ byte-wise" in findings["bytes"].title  # random.bin: no checkpoint
    assert findings["bytes"].evidence == ["notes.txt: 1 vs 1 bytes", "random.bin: 10 vs 10 bytes"]
    assert list(scratch.iterdir()) == []  # extracted checkpoints are cleaned up


def test_artifacts_check_reports_keys_and_shapes(tmp_path: Path) -> None:
    state = model_state()
    other = {k: v for k, v in state.items() if k != "step"} | {
        "embed.weight": torch.zeros(40, 8),
        "extra.bias": torch.zeros(2),
    }
    base = make_record(tmp_path, "local", {"model.pt": state})
    cand = make_record(tmp_path, "docker", {"model.pt": other})
    causes = {f.cause: f for f in artifacts.compare(base, cand, CONTEXT)}
    assert set(causes) == {"checkpoint-keys", "checkpoint-shapes"}
    assert causes["checkpoint-keys"].evidence == ["missing on docker: step", "extra on docker: extra.bias"]
    assert causes["checkpoint-shapes"].evidence == ["embed.weight: shape [32, 8] float32 vs [40, 8] float32"]


def test_artifacts_check_without_torch_is_a_divergence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Checkpoints whose bytes differ and that cannot be read are never taken for equal."""
    base = make_record(tmp_path, "local", {"model.pt": model_state()})
    cand = make_record(tmp_path, "docker", {"model.pt": model_state(seed=1)})
    monkeypatch.setitem(sys.modules, "torch", None)
    [finding] = artifacts.compare(base, cand, CONTEXT)
    assert (finding.severity, finding.cause) == ("divergence", "checkpoint-not-compared")
    assert "torch is not installed" in finding.evidence[0]


def test_what_cannot_be_read_is_never_parity(tmp_path: Path) -> None:
    """A truncated checkpoint, weights x10 beside a pickled Namespace, a truncated archive."""
    state = model_state()
    full = io.BytesIO()
    torch.save(state, full)
    args = argparse.Namespace(lr=0.05, epochs=3)
    base = make_record(tmp_path, "local", {"model.pt": state, "full.pt": {"model": state, "args": args}})
    cand = make_record(
        tmp_path,
        "docker",
        {
            "model.pt": full.getvalue()[: len(full.getvalue()) // 2],
            "full.pt": {"model": {k: v * 10 for k, v in state.items()}, "args": args},
        },
    )
    verdict = judge([base, cand], tolerance=Tolerance())
    assert verdict.outcome == "diverged"
    causes = {f.title.split(":")[1]: f.cause for f in verdict.findings if f.severity == "divergence"}
    assert causes == {"model.pt": "checkpoint-unreadable", "full.pt": "weights-differ"}
    archive = cand.root / "artifacts" / "model.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-100])
    damaged = judge([base, RunRecord.load(cand.root)], tolerance=Tolerance())
    assert damaged.outcome == "diverged" and damaged.causes[0] == "artifact-unreadable"
    assert f"{archive}: {archive.stat().st_size} bytes" in damaged.findings[0].evidence[0]


def test_checkpoints_are_judged_by_the_tensor_tolerance_alone(tmp_path: Path) -> None:
    """A loose metric tolerance lets no tensor through, an exact one flags none."""
    state = model_state()
    noisy = {k: v * (1 + 1e-7) if v.is_floating_point() else v for k, v in state.items()}
    records = [
        make_record(tmp_path, "local", {"model.pt": state}),
        make_record(tmp_path, "docker", {"model.pt": noisy}),
    ]
    loose_curves = judge(records, tolerance=Tolerance(metric_rtol=1.0, metric_atol=1.0, tensor_rtol=0, tensor_atol=0))
    assert (loose_curves.outcome, loose_curves.causes) == ("diverged", ["weights-differ"])
    assert "tolerance: rtol=0, atol=0 (local is the reference)" in loose_curves.findings[0].evidence
    assert judge(records, tolerance=Tolerance(metric_rtol=0, metric_atol=0)).outcome == "parity"
    paths = [str(record.root) for record in records]
    assert main(["diff", *paths, "--rtol", "0", "--atol", "0"]) == 0
    assert main(["diff", *paths, "--tensor-rtol", "0", "--tensor-atol", "0"]) == 1
