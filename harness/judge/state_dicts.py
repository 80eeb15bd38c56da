"""A state dict that does not load because a wrapper renamed its keys.

``load_state_dict`` refuses a dict whose keys are the module's own under a wrapper's prefix
(``module.`` of DDP and DataParallel, ``_orig_mod.`` of torch.compile, FSDP's and activation
checkpointing's segments), a dict saved on one rung and read on another, or saved from the
wrapper and read into the bare model. torch lists the missing and the unexpected keys; the same
rename search that compares checkpoints across rungs (:func:`harness.judge.tensors.find_renames`)
names the segment that maps one list onto the other, so the finding says which wrapper the keys
came through rather than "Python exception".
"""

from __future__ import annotations

import re
from typing import Any

from harness.judge.artifacts import rename_hint
from harness.judge.findings import ECHOES, Finding
from harness.judge.protocol import CheckContext
from harness.judge.tensors import find_renames
from harness.record.run_record import RunRecord

_REFUSED = re.compile(r"Error\(s\) in loading state_dict for (\S+?):")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    for process in record.processes():
        finding = _refusal(process)
        if finding is not None:
            return [finding]
    return []


def _refusal(process: dict[str, Any]) -> Finding | None:
    text = str(process.get("exception") or "")
    module = _REFUSED.search(text)
    if module is None:
        return None
    keys: dict[str, set[str]] = {"Missing": set(), "Unexpected": set()}
    for kind, listed in _KEYS.findall(text):
        keys[kind] |= set(re.findall(r"\"([^\"]*)\"", listed))
    renames = find_renames(keys["Missing"], keys["Unexpected"])
    if not renames:
        return None
    rename = max(renames, key=lambda r: len(r.pairs))
    rank = process.get("rank")
    who = f"rank {rank}" if rank is not None else f"{process.get('host')} pid {process.get('pid')}"
    carries = "the loaded keys carry" if rename.side == "candidate" else "the module's keys carry"
    lacks = f"{module.group(1)}'s keys do not" if rename.side == "candidate" else "the loaded keys do not"
    return Finding(
        kind="artifacts",
        severity="failure",
        title=f"{who} could not load a state dict into {module.group(1)}: {carries} '{rename.segment}.' and {lacks}",
        evidence=[f"{len(rename.pairs)} of {len(keys['Missing'])} missing keys are unexpected ones renamed, e.g.:"]
        + [f"the module's {a!r} is {b!r} in the state dict" for a, b in rename.pairs[:3]],
        hint=rename_hint(rename.segment),
        cause="checkpoint-key-prefix",
        rank=rank,
        confidence=0.9,
        explains=ECHOES,
    )
