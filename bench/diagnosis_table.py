"""Run scenarios through their ladders and print the diagnosis table: scenario, expected outcome
and cause, what the verdict said, and where the expected cause ranked.

    python bench/diagnosis_table.py [DIRECTORY | SCENARIO ...]

With no argument: every scenario in ``scenarios/``. A directory holding scenarios (the fault
catalogue, ``tests/data/faults``) runs each one in it; a name is a scenario of ``scenarios/``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from harness.ladder.scenario import all_scenarios, run_scenario

ROOT = Path(__file__).resolve().parent.parent / "scenarios"


def main(names: list[str]) -> int:
    directories: list[Path] = []
    for name in names or [str(ROOT)]:
        path = Path(name)
        if path.is_dir() and not (path / "scenario.yaml").is_file():
            directories += all_scenarios(path)
        else:
            directories.append(path if path.is_dir() else ROOT / name)
    rows = [("scenario", "expected", "got", "cause rank", "ok", "skipped")]
    with tempfile.TemporaryDirectory(prefix="harness-diagnosis-") as records:
        for directory in directories:
            result = run_scenario(directory, Path(records))
            expect = result.spec.expect
            got = (
                "(nothing ran)"
                if result.verdict is None
                else (
                    f"{result.verdict.outcome} {result.verdict.causes[0] if result.verdict.causes else ''}".strip()
                    + (f" @{result.verdict.first_rung}" if result.verdict.first_rung else "")
                )
            )
            rows.append(
                (
                    result.name,
                    f"{expect.outcome} {expect.cause or ''}".strip(),
                    got,
                    str(result.cause_rank or "-"),
                    "yes" if result.as_expected else "NO",
                    "; ".join(result.skipped) or "-",
                )
            )
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0 if all(row[4] == "yes" for row in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
