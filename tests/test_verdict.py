"""The verdict and the within-run checks on canned records (no processes are started)."""

from __future__ import annotations

from pathlib import Path

from fake_records import make_record

from harness.cli import main
from harness.verdict import judge

CURVE = [1.0, 0.8, 0.6, 0.5, 0.45]


def test_identical_records_are_parity(tmp_path: Path) -> None:
    verdict = judge([make_record(tmp_path, "local", losses=CURVE), make_record(tmp_path, "docker", losses=CURVE)])
    assert verdict.outcome == "parity" and verdict.exit_code == 0 and verdict.first_rung is None


def test_noise_within_tolerance_is_parity_and_beyond_is_divergence(tmp_path: Path) -> None:
    noisy = [v * (1 + 1e-7) for v in CURVE]
    drifted = CURVE[:3] + [0.52, 0.47]
    base = make_record(tmp_path, "local", losses=CURVE)
    assert judge([base, make_record(tmp_path, "local-gpu", losses=noisy)], rtol=1e-5).outcome == "parity"
    verdict = judge([base, make_record(tmp_path, "docker", losses=drifted)], rtol=1e-5)
    assert (verdict.outcome, verdict.first_rung, verdict.first_step) == ("diverged", "docker", 3)
    assert verdict.causes[0] == "metric-divergence"


def test_a_failed_rung_is_the_first_departure(tmp_path: Path) -> None:
    records = [make_record(tmp_path, "local", losses=CURVE), make_record(tmp_path, "docker", losses=CURVE[:2],
                                                                         status="failed")]
    verdict = judge(records)
    assert (verdict.outcome, verdict.first_rung, verdict.baseline_rung) == ("failed", "docker", "local")


def _batches(digests: list[str]) -> list[dict[str, object]]:
    return [{"kind": "batch", "n": i + 1, "digest": d, "size": 16} for i, d in enumerate(digests)]


def test_identical_batches_on_every_rank(tmp_path: Path) -> None:
    same = {rank: _batches(["a", "b", "c"]) for rank in range(3)}
    verdict = judge([make_record(tmp_path, "local", losses=CURVE, rank_events=same)])
    assert verdict.causes[0] == "data-not-sharded" and verdict.first_rung == "local"
    sharded = {rank: _batches([f"{rank}a", f"{rank}b"]) for rank in range(3)}
    assert judge([make_record(tmp_path, "local", losses=CURVE, rank_events=sharded)]).outcome == "parity"


def _call(op: str, shape: list[int], line: int) -> dict[str, object]:
    return {"kind": "collective", "op": op, "shapes": [shape], "caller": f"train.py:{line}"}


def test_collective_mismatch_blames_the_rank_with_its_own_call_site(tmp_path: Path) -> None:
    events = {
        0: [_call("all_reduce", [4], 10), _call("all_reduce", [1], 20), _call("all_reduce", [4], 10)],
        1: [_call("all_reduce", [4], 10), _call("all_reduce", [4], 10)],
        2: [_call("all_reduce", [4], 10), _call("all_reduce", [4], 10)],
    }
    verdict = judge([make_record(tmp_path, "local", rank_events=events, status="failed")])
    top = verdict.findings[0]
    assert (top.cause, top.rank) == ("collective-mismatch", 0)
    assert "train.py:20" in top.title


def test_parameters_drifting_apart(tmp_path: Path) -> None:
    events = {r: [{"kind": "params", "step": 0, "sum": 1.0, "abs_sum": 1.0, "digest": "same"},
                  {"kind": "params", "step": 10, "sum": 1.0 + r, "abs_sum": 1.0, "digest": f"d{r}"}] for r in range(2)}
    verdict = judge([make_record(tmp_path, "local", rank_events=events)])
    assert verdict.causes[0] == "parameter-drift" and verdict.first_step == 10


def test_hyperparameter_parsed_into_another_value(tmp_path: Path) -> None:
    processes = [{"rank": None, "parsed_args": {"lr": 0.1, "flag": True}}]
    verdict = judge([make_record(tmp_path, "local", processes=processes)])
    assert verdict.causes[0] == "hyperparameter-type"
    assert "flag: the job gave False (bool), the script parsed True (bool)" in verdict.findings[0].evidence


def test_success_with_a_crashed_child_is_a_failure(tmp_path: Path) -> None:
    processes = [{"exit_code": 0}, {"exit_code": 1, "exception": "ValueError: boom"}]
    verdict = judge([make_record(tmp_path, "local", processes=processes)])
    assert verdict.outcome == "failed" and verdict.causes[0] == "hidden-child-failure"


def test_cli_diff_and_reports(tmp_path: Path) -> None:
    a = make_record(tmp_path, "local", losses=CURVE)
    b = make_record(tmp_path, "docker", losses=CURVE[:3] + [0.9, 0.9])
    out = tmp_path / "out"
    out.mkdir()
    code = main(["diff", str(a.root), str(b.root), "--json", str(out / "v.json"), "--html", str(out / "v.html"),
                 "--markdown", str(out / "v.md")])
    assert code == 1
    html = (out / "v.html").read_text()
    assert "<svg" in html and "DIVERGED" in html and "<script" not in html
    assert "metric-divergence" in (out / "v.md").read_text()


def test_show_marks_an_incomplete_record(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    record = make_record(tmp_path, "local", losses=CURVE, status="running")
    assert main(["show", str(record.root)]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out
