"""Artifacts compared file by file (names, sizes, sha256) in the merged ``model.tar.gz`` and
``output.tar.gz``, and checkpoints tensor by tensor.

A missing or extra file is a divergence. Different bytes alone decide nothing: float noise
changes them, and so do the order of keys and pickled metadata. So a checkpoint whose bytes
differ is streamed out of both archives into a temporary directory and compared by value
(:mod:`harness.judge.tensors`) under the tensor tolerance: renamed keys (a DDP ``module.``
prefix), missing keys, shapes, dtypes and values beyond tolerance are divergences, values within
tolerance a note. Other files that differ are a note. A clash (a file written by several hosts)
is a finding of its own. What cannot be read is never taken for equal: a damaged archive (its size
is not the one recorded when it was packed, or it does not open) and a checkpoint that one side or
neither can load are divergences, so a verdict is parity only for what was compared.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from harness.judge import tensors
from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.judge.tensors import CheckpointDiff, CheckpointError, KeyRename, TensorDiff
from harness.judge.topology import numbers_not_comparable, world_size
from harness.record.archives import ArchiveRefused, capped_members
from harness.record.run_record import RunRecord

_SHOWN = 20  # evidence lines per finding
_RENAME_HINTS = {
    "module": "save model.module.state_dict() instead of the DDP wrapper's state_dict()",
    "_orig_mod": "save the state_dict of the module before torch.compile (model._orig_mod.state_dict())",
    "_fsdp_wrapped_module": "save a full state dict (torch.distributed.checkpoint.state_dict.get_model_state_dict) "
    "so FSDP's wrapper names are not in the keys",
    "_checkpoint_wrapped_module": "save the state_dict of the unwrapped module: activation checkpointing "
    "wrappers add '_checkpoint_wrapped_module.' to every key they wrap",
}
_RENAME_HINT = (
    "save the same module on both rungs, or strip the prefix before saving "
    "(torch.nn.modules.utils.consume_prefix_in_state_dict_if_present)"
)


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    """Checkpoint tensors are compared element-wise under ``context.tolerance.tensor_*``."""
    if candidate.status != "succeeded" or baseline.status != "succeeded":
        return []
    ours = baseline.read_json("artifacts/summary.json") or {}
    theirs = candidate.read_json("artifacts/summary.json") or {}
    findings = [f for record in (baseline, candidate) for f in _damaged_archives(record)]
    for archive in sorted(set(ours) | set(theirs)):
        a, b = ours.get(archive, {}).get("files", {}), theirs.get(archive, {}).get("files", {})
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        changed = sorted(n for n in set(a) & set(b) if a[n]["sha256"] != b[n]["sha256"])
        new_writers = _written_by_new_workers(archive, extra, b, baseline, candidate)
        extra = [n for n in extra if n not in new_writers]
        evidence = [f"missing on {candidate.rung}: {n}" for n in missing] + [
            f"extra on {candidate.rung}: {n}" for n in extra
        ]
        if evidence:
            findings.append(
                Finding(
                    kind="artifacts",
                    severity="divergence",
                    title=f"{archive} differs on {candidate.rung}",
                    evidence=evidence,
                )
            )
        if new_writers:
            findings.append(
                Finding(
                    kind="artifacts",
                    severity="note",
                    title=f"{len(new_writers)} files in {archive} written by hosts or ranks "
                    f"{baseline.rung} does not have",
                    evidence=_capped([f"{n}: {who}" for n, who in new_writers.items()]),
                    cause="topology-changes-artifacts",
                    confidence=0.2,
                )
            )
        compared, tensor_findings = _checkpoints(archive, changed, baseline, candidate, context)
        findings += tensor_findings
        rest = [n for n in changed if n not in compared]
        if rest:  # bytes differ whenever floats do (GPU vs CPU); only values can tell divergence
            findings.append(
                Finding(
                    kind="artifacts",
                    severity="note",
                    title=f"{len(rest)} files in {archive} differ byte-wise on {candidate.rung}",
                    evidence=[f"{n}: {a[n]['size']} vs {b[n]['size']} bytes" for n in rest[:_SHOWN]],
                )
            )
        for name, hosts in theirs.get(archive, {}).get("clashes", {}).items():
            findings.append(
                Finding(
                    kind="artifacts",
                    severity="note",
                    title=f"{archive}: {name} written by several hosts on {candidate.rung}",
                    evidence=[f"{name}: {', '.join(hosts)}"],
                    hint="write model files from one rank, or give each host its own name",
                )
            )
    return findings


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    """Within one run: checkpoint keys several hosts uploaded to the one S3 prefix (SageMaker syncs
    every instance's LocalPath to the same prefix, so the last upload wins). Where the hosts'
    files differed, a host resuming from the prefix gets another host's state."""
    checkpoints = record.manifest.checkpoints
    if checkpoints is None or not checkpoints.clashes:
        return []
    clashes, lost = checkpoints.clashes, set(checkpoints.clashes_with_different_content)
    hint = (
        "give each host its own checkpoint file names (include the host or the global rank), "
        "or save checkpoints from global rank 0 only"
    )
    if lost:
        return [
            Finding(
                kind="artifacts",
                severity="divergence",
                title=f"{len(lost)} checkpoint files differ between hosts and overwrite each other in one S3 prefix",
                evidence=[
                    f"{key}: {', '.join(clashes[key])} wrote different content; the last upload wins"
                    for key in sorted(lost)[:10]
                ],
                hint=hint,
                cause="checkpoint-clash-across-hosts",
                confidence=0.7,
            )
        ]
    return [
        Finding(
            kind="artifacts",
            severity="note",
            title=f"{len(clashes)} checkpoint files written by several hosts to one S3 prefix",
            evidence=[f"{key}: {', '.join(hosts)} (identical content)" for key, hosts in sorted(clashes.items())[:10]],
            hint=hint,
            cause="checkpoint-clash-across-hosts",
            confidence=0.3,
        )
    ]


_ARCHIVE_ROOTS = {"model.tar.gz": "/opt/ml/model/", "output.tar.gz": "/opt/ml/output/data/"}


def _written_by_new_workers(
    archive: str, extra: list[str], files: dict[str, Any], baseline: RunRecord, candidate: RunRecord
) -> dict[str, str]:
    """Extra files that only hosts or ranks the baseline does not have wrote (``algo-2.txt`` on
    two hosts against one, ``shard-3.pt`` from rank 3 of four against one process): a topology
    change legitimately adds them, so they are not a divergence."""
    if world_size(baseline) == world_size(candidate) and baseline.hosts == candidate.hosts:
        return {}
    root, world, hosts = _ARCHIVE_ROOTS.get(archive, ""), world_size(baseline), set(baseline.hosts)
    ranks: dict[str, set[int]] = {}
    for rank, events in candidate.iter_rank_events().items():
        for event in events:
            path = str(event.get("path", ""))
            if event["kind"] == "write" and root and path.startswith(root):
                ranks.setdefault(path.removeprefix(root), set()).add(rank)
    found = {}
    for name in extra:
        writers = files[name].get("hosts") or []
        if writers and not hosts & set(writers):
            found[name] = f"written by {', '.join(writers)} only"
        elif ranks.get(name) and min(ranks[name]) >= world:
            found[name] = f"written by rank {', '.join(map(str, sorted(ranks[name])))} only"
    return found


def _damaged_archives(record: RunRecord) -> list[Finding]:
    """Archives whose size is not the one recorded when they were packed: truncated or replaced
    since, so nothing read from them can be trusted (and nothing unread may pass for equal)."""
    findings = []
    for archive, info in (record.read_json("artifacts/summary.json") or {}).items():
        path, recorded = record.root / "artifacts" / archive, info.get("bytes")
        size = path.stat().st_size if path.is_file() else None
        if recorded is not None and size != recorded:
            findings.append(
                Finding(
                    kind="artifacts",
                    severity="divergence",
                    title=f"{archive} of the {record.rung} record is damaged: its files were not compared",
                    evidence=[
                        f"{path}: {'missing' if size is None else f'{size} bytes'}, {recorded} bytes when packed"
                    ],
                    hint="run the rung again: the record was changed or cut short after the run",
                    cause="artifact-unreadable",
                    confidence=0.6,
                )
            )
    return findings


def _checkpoints(
    archive: str, changed: list[str], baseline: RunRecord, candidate: RunRecord, context: CheckContext
) -> tuple[set[str], list[Finding]]:
    """The changed files of ``archive`` that are checkpoints on either side, and their findings.
    A checkpoint that cannot be read is a divergence: its bytes differ, and unread is not equal."""
    if not changed:
        return set(), []
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="harness-tensors-") as tmp:
        extracted = {}
        for record, dest in ((baseline, "a"), (candidate, "b")):
            try:
                extracted[record.root] = _extract(record.root / "artifacts" / archive, set(changed), Path(tmp) / dest)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                # an archive over the caps is not damaged: the refusal's own message and hint
                said, hint = (exc.message, exc.hint) if isinstance(exc, ArchiveRefused) else (f"{exc}", None)
                return set(changed), [
                    Finding(
                        kind="artifacts",
                        severity="divergence",
                        title=f"{archive} cannot be read on {record.rung}: "
                        f"{len(changed)} files whose bytes differ were not compared",
                        evidence=[said],
                        hint=hint or "run the rung again: the archive is damaged",
                        cause="artifact-unreadable",
                        confidence=0.6,
                    )
                ]
        ours, theirs = extracted[baseline.root], extracted[candidate.root]
        names = sorted(name for name in ours.keys() | theirs.keys() if _sniffed(ours.get(name), theirs.get(name)))
        for name in names:
            where = f"{archive}:{name}"
            a, b = _load(ours.get(name)), _load(theirs.get(name))
            if isinstance(a, dict) and isinstance(b, dict):
                diff = tensors.compare_state(
                    a, b, rtol=context.tolerance.tensor_rtol, atol=context.tolerance.tensor_atol
                )
                findings += _findings(
                    where, diff, baseline.rung, candidate.rung, numbers_not_comparable(baseline, candidate)
                )
            else:
                findings.append(_unread(where, a, b, baseline.rung, candidate.rung))
    return set(names), findings


def _sniffed(*paths: Path | None) -> bool:
    """Whether either file starts like a torch or safetensors checkpoint: a file only named like
    one (a ``.bin`` of raw bytes on both sides) is an ordinary file that differs."""
    for path in paths:
        if path is not None:
            with path.open("rb") as handle:
                if tensors.sniff(handle.read(tensors.SNIFF_BYTES)):
                    return True
    return False


def _load(path: Path | None) -> dict[str, object] | CheckpointError:
    if path is None:
        return CheckpointError("not a checkpoint on this side (its first bytes are not a torch or safetensors file)")
    try:
        return tensors.load(path)
    except CheckpointError as exc:
        return exc


def _unread(where: str, a: object, b: object, base: str, cand: str) -> Finding:
    """A checkpoint one side (or neither) could read: never equal, since nothing was compared."""
    errors = [
        f"{rung}: {value.message.split(': ', 1)[-1]}"
        for rung, value in ((base, a), (cand, b))
        if isinstance(value, CheckpointError)
    ]
    unreadable = [rung for rung, value in ((base, a), (cand, b)) if isinstance(value, CheckpointError)]
    title = (
        f"{where}: cannot be read on {unreadable[0]}, only on the other rung: not compared"
        if len(unreadable) == 1
        else f"{where}: cannot be read on either rung and the bytes differ: not compared"
    )
    hint = next((value.hint for value in (a, b) if isinstance(value, CheckpointError) and value.hint), None)
    return Finding(
        kind="tensors",
        severity="divergence",
        title=title,
        evidence=errors,
        hint=hint,
        cause="checkpoint-unreadable" if len(unreadable) == 1 else "checkpoint-not-compared",
        confidence=0.6 if len(unreadable) == 1 else 0.3,
    )


def _extract(archive: Path, names: set[str], dest: Path) -> dict[str, Path]:
    """Stream ``archive`` once and write out the named members that look like checkpoints (by
    suffix or by their first bytes); never trusts member paths, so nothing lands outside ``dest``."""
    found: dict[str, Path] = {}
    if not archive.is_file():
        return found
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r|*") as tar:
        for member in capped_members(tar, archive):  # a bomb is refused as an unreadable archive
            name = member.name.removeprefix("./")
            source = tar.extractfile(member) if member.isfile() and name in names else None
            if source is None:
                continue
            head = source.read(tensors.SNIFF_BYTES)
            if not (tensors.is_checkpoint_name(name) or tensors.sniff(head)):
                continue
            path = dest / f"{len(found)}-{Path(name).name}"
            with path.open("wb") as out:
                out.write(head)
                shutil.copyfileobj(source, out, 1 << 20)
            found[name] = path
    return found


def _findings(where: str, diff: CheckpointDiff, base: str, cand: str, values_may_differ: str | None) -> list[Finding]:
    """One finding per kind of difference in one checkpoint; a note when values agree, or when
    ``values_may_differ`` says why they legitimately differ (a topology change)."""
    findings = [_rename_finding(where, rename, diff, base, cand) for rename in diff.renames]
    if diff.missing or diff.extra:
        evidence = [f"missing on {cand}: {k}" for k in diff.missing] + [f"extra on {cand}: {k}" for k in diff.extra]
        title = f"{where}: {len(diff.missing)} tensors missing and {len(diff.extra)} extra on {cand}"
        findings.append(
            Finding(
                kind="tensors",
                severity="divergence",
                title=title,
                evidence=_capped(evidence),
                cause="checkpoint-keys",
                confidence=0.7,
                hint="the two rungs saved different modules or different parts of one",
            )
        )
    reshaped = diff.shape_mismatches + diff.dtype_mismatches
    if reshaped:
        findings.append(
            Finding(
                kind="tensors",
                severity="divergence",
                title=f"{where}: {len(reshaped)} tensors change shape or dtype on {cand}",
                evidence=_capped([_reshaped(t) for t in reshaped]),
                cause="checkpoint-shapes",
                confidence=0.7,
                hint="a different model configuration, a sharded save (FSDP/ZeRO shards instead of a full state "
                "dict), or a cast (.half(), autocast, bf16) before saving on one rung",
            )
        )
    findings += _nonfinite(where, diff, base, cand)
    worst = diff.beyond_tolerance
    if worst:
        compared = [t for t in diff.tensors if not t.shape_differs]
        title = f"{where}: {len(worst)} of {len(compared)} tensors differ beyond tolerance on {cand}"
        tolerance = f"tolerance: rtol={diff.rtol}, atol={diff.atol} ({base} is the reference)"
        findings.append(
            Finding(
                kind="tensors",
                severity="divergence",
                title=title,
                evidence=[*_capped([_error(t) for t in worst]), tolerance],
                hint="the weights were trained differently: the first divergent metric step says when",
                cause="weights-differ",
                confidence=0.4,
            )
            if values_may_differ is None
            else Finding(
                kind="tensors",
                severity="note",
                title=f"{title} (not compared: {values_may_differ})",
                evidence=_capped([_error(t) for t in worst]),
                cause="topology-changes-numbers",
                confidence=0.2,
            )
        )
    if diff.values:
        findings.append(
            Finding(
                kind="tensors",
                severity="note",
                title=f"{where}: {len(diff.values)} non-tensor entries differ on {cand}",
                evidence=_capped([f"{v.name}: {v.value} on {base}, {v.other} on {cand}" for v in diff.values]),
                cause="checkpoint-values",
            )
        )
    if not findings:
        findings.append(_agreement(where, diff, cand))
    return findings


def _nonfinite(where: str, diff: CheckpointDiff, base: str, cand: str) -> list[Finding]:
    """Weights that are NaN or infinite on one rung only: a departure whatever the topology,
    which changes the numbers but never makes a finite model non-finite."""
    found = []
    for side, other, index in ((cand, base, 1), (base, cand, 0)):
        broken = [t for t in diff.tensors if t.nonfinite[index]]
        if not broken:
            continue
        count = sum(t.nonfinite[index] for t in broken)
        found.append(
            Finding(
                kind="tensors",
                severity="divergence",
                title=f"{where}: {len(broken)} tensors hold NaN or infinite values on {side}, finite on {other}",
                evidence=_capped([f"{t.name}: {t.nonfinite[index]} of {t.numel} elements not finite" for t in broken])
                + [f"{count} elements in all"],
                hint="an update applied a non-finite gradient on that rung: look for the first step whose loss or "
                "gradient norm is not finite there (a NaN or inf skip decided per rank while gradients are averaged, "
                "fp16 without a gradient scaler, a division by a count that can be zero)",
                cause="weights-non-finite",
                confidence=0.85,
                explains=("weights-differ",),
            )
        )
    return found


def rename_hint(segment: str) -> str:
    """How to save keys without the wrapper's ``segment`` (its first part names the wrapper)."""
    return _RENAME_HINTS.get(segment.split(".")[0], _RENAME_HINT)


def _rename_finding(where: str, rename: KeyRename, diff: CheckpointDiff, base: str, cand: str) -> Finding:
    rung = cand if rename.side == "candidate" else base
    place = {"": "a prefix", "*": "a segment"}.get(rename.scope, f"a segment under '{rename.scope}.'")
    renamed = {pair[0] for pair in rename.pairs}
    values = [t for t in diff.tensors if t.name in renamed]
    agree = sum(t.within_tolerance for t in values)
    return Finding(
        kind="tensors",
        severity="divergence",
        title=f"{where}: keys carry '{rename.segment}.' ({place}) on {rung} only",
        evidence=[f"{len(rename.pairs)} keys renamed, for example:"]
        + [f"{a!r} on {base} is {b!r} on {cand}" for a, b in rename.pairs[:3]]
        + [f"under the renamed keys, {agree} of {len(values)} tensors agree within tolerance"],
        hint=rename_hint(rename.segment),
        cause="checkpoint-key-prefix",
        confidence=0.8,
    )


def _agreement(where: str, diff: CheckpointDiff, cand: str) -> Finding:
    equal = sum(t.equal for t in diff.tensors)
    if diff.identical:
        return Finding(
            kind="tensors",
            severity="note",
            title=f"{where}: bytes differ, tensors identical on {cand}",
            evidence=[f"{equal} tensors bit-identical; the bytes differ only in layout or metadata"],
        )
    close = [t for t in diff.tensors if not t.equal]
    return Finding(
        kind="tensors",
        severity="note",
        title=f"{where}: bytes differ, values within tolerance on {cand}",
        evidence=[
            f"{equal} of {len(diff.tensors)} tensors identical, {len(close)} within rtol={diff.rtol}, atol={diff.atol}",
            f"largest errors: max abs {max(t.max_abs for t in close):.3g}, max rel {max(t.max_rel for t in close):.3g}",
        ],
    )


def _error(t: TensorDiff) -> str:
    name = t.name if t.name == t.other else f"{t.name} ({t.other})"
    return (
        f"{name}: max abs {t.max_abs:.3g}, max rel {t.max_rel:.3g}, {t.differing} of {t.numel} elements "
        f"differ, {t.beyond} beyond tolerance"
    )


def _reshaped(t: TensorDiff) -> str:
    if t.shape_differs:
        return f"{t.name}: shape {list(t.shape)} {t.dtype} vs {list(t.other_shape)} {t.other_dtype}"
    verdict = "values equal" if t.equal else f"max abs {t.max_abs:.3g}, max rel {t.max_rel:.3g}"
    return f"{t.name}: dtype {t.dtype} vs {t.other_dtype} ({verdict})"


def _capped(lines: list[str]) -> list[str]:
    return lines[:_SHOWN] + ([f"... and {len(lines) - _SHOWN} more"] if len(lines) > _SHOWN else [])
