"""The verdict and the within-run checks on canned records (no processes are started)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_records import make_record

from harness.cli import main
from harness.errors import RecordError, UsageError
from harness.judge.protocol import Tolerance
from harness.judge.verdict import judge
from harness.record.run_record import RunRecord

pytestmark = pytest.mark.unit

CURVE = [1.0, 0.8, 0.6, 0.5, 0.45]


def test_identical_records_are_parity(tmp_path: Path) -> None:
    verdict = judge([make_record(tmp_path, "local", losses=CURVE), make_record(tmp_path, "docker", losses=CURVE)])
    assert verdict.outcome == "parity" and verdict.exit_code == 0 and verdict.first_rung is None


def test_noise_within_tolerance_is_parity_and_beyond_is_divergence(tmp_path: Path) -> None:
    noisy = [v * (1 + 1e-7) for v in CURVE]
    drifted = CURVE[:3] + [0.52, 0.47]
    base = make_record(tmp_path, "local", losses=CURVE)
    assert judge([base, make_record(tmp_path, "local-gpu", losses=noisy)]).outcome == "parity"
    verdict = judge([base, make_record(tmp_path, "docker", losses=drifted)])
    assert (verdict.outcome, verdict.first_rung, verdict.first_step) == ("diverged", "docker", 3)
    assert verdict.causes[0] == "metric-divergence"


def test_curves_are_judged_by_the_metric_tolerance_alone(tmp_path: Path) -> None:
    base = make_record(tmp_path, "local", losses=CURVE)
    noisy = make_record(tmp_path, "docker", losses=[v * (1 + 1e-7) for v in CURVE])
    assert judge([base, noisy], tolerance=Tolerance(tensor_rtol=0, tensor_atol=0)).outcome == "parity"
    verdict = judge([base, noisy], tolerance=Tolerance(metric_rtol=0, metric_atol=0, tensor_rtol=1, tensor_atol=1))
    assert verdict.causes == ["metric-divergence"] and verdict.first_step == 0
    assert verdict.findings[0].evidence[0].endswith("(tolerance rtol=0, atol=0)")
    assert main(["diff", str(base.root), str(noisy.root), "--tensor-rtol", "0", "--tensor-atol", "0"]) == 0
    assert main(["diff", str(base.root), str(noisy.root), "--rtol", "0", "--atol", "0"]) == 1


def test_a_failed_rung_is_the_first_departure(tmp_path: Path) -> None:
    records = [
        make_record(tmp_path, "local", losses=CURVE),
        make_record(tmp_path, "docker", losses=CURVE[:2], status="failed"),
    ]
    verdict = judge(records)
    assert (verdict.outcome, verdict.first_rung, verdict.baseline_rung) == ("failed", "docker", "local")


def _batches(digests: list[str]) -> list[dict[str, object]]:
    return [{"kind": "batch", "n": i + 1, "digest": d, "size": 16} for i, d in enumerate(digests)]


def test_identical_batches_on_every_rank(tmp_path: Path) -> None:
    same = {rank: _batches(["a", "b", "c"]) for rank in range(3)}
    verdict = judge([make_record(tmp_path, "local", losses=CURVE, rank_events=same)])
    assert verdict.causes[0] == "data-not-sharded" and verdict.first_rung == "local"
    sharded = {rank: _batches([f"{rank}a", f"{rank}b"]) for rank in range(3)}
    assert judge([make_record(tmp_path, "local", losses=CURVE, rank_events=sharded)]).outcome == "nothing-compared"


@pytest.mark.parametrize("orders", [["o0", "o1", "o2"], ["o", "o", "o"]])
def test_identical_batches_from_other_indices_come_from_a_random_stream_seeded_alike(
    tmp_path: Path, orders: list[str]
) -> None:
    # A Dataset whose samples are random windows from its worker's generator, seeded alike on
    # every rank: the sampler hands each rank other indices, and the batches are the same.
    def drawn(rank: int) -> list[dict[str, object]]:
        return [*_batches(["a", "b", "c"]), {"kind": "data_epoch", "bitmap": "x", "order": orders[rank]}]

    verdict = judge([make_record(tmp_path, "local", losses=CURVE, rank_events={r: drawn(r) for r in range(3)})])
    alike = len(set(orders)) == 1
    assert verdict.causes[0] == ("data-not-sharded" if alike else "random-stream-same-on-every-rank")


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
    events = {
        r: [
            {"kind": "params", "step": 0, "sum": 1.0, "abs_sum": 1.0, "digest": "same"},
            {"kind": "params", "step": 10, "sum": 1.0 + r, "abs_sum": 1.0, "digest": f"d{r}"},
        ]
        for r in range(2)
    }
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
    code = main(
        [
            "diff",
            str(a.root),
            str(b.root),
            "--json",
            str(out / "v.json"),
            "--html",
            str(out / "v.html"),
            "--markdown",
            str(out / "v.md"),
        ]
    )
    assert code == 1
    html = (out / "v.html").read_text()
    assert "<svg" in html and "DIVERGED" in html and "<script" not in html
    assert "metric-divergence" in (out / "v.md").read_text()


def test_show_marks_an_incomplete_record(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    record = make_record(tmp_path, "local", losses=CURVE, status="running")
    assert main(["show", str(record.root)]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out


TOY_CHECKS = """
from harness.judge import Finding, PairCheck, RunCheck


def compare(baseline, candidate, context):
    title = f"toy: {candidate.rung} vs {baseline.rung} at rtol {context.tolerance.metric_rtol}"
    return [Finding(kind="metrics", severity="divergence", title=title, cause="toy-pair")]


PAIR = PairCheck("toy-pair", compare)
RUN = RunCheck(
    "toy-run",
    lambda record, context: [Finding(kind="toy", severity="note", title=f"toy saw {record.rung}", cause="toy-run")],
)
NOT_A_CHECK = print
"""


def _install_toy(root: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str) -> None:
    """A distribution on ``sys.path`` as pip would leave it: the package and its ``.dist-info``."""
    (root / "toy_checks").mkdir(parents=True)
    (root / "toy_checks" / "__init__.py").write_text(TOY_CHECKS)
    (root / "toy-0.1.dist-info").mkdir()
    (root / "toy-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy\nVersion: 0.1\n")
    (root / "toy-0.1.dist-info" / "entry_points.txt").write_text(f"[harness.checks]\n{entry_points}")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "toy_checks", raising=False)  # another test's copy


def test_checks_installed_through_the_entry_point_group_are_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_toy(tmp_path / "site", monkeypatch, "toy-pair = toy_checks:PAIR\ntoy-run = toy_checks:RUN\n")
    records = [make_record(tmp_path, "local", losses=CURVE), make_record(tmp_path, "docker", losses=CURVE)]
    verdict = judge(records, tolerance=Tolerance(metric_rtol=0.5))
    assert (verdict.outcome, verdict.first_rung, verdict.causes) == ("diverged", "docker", ["toy-pair"])
    assert verdict.findings[0].title == "toy: docker vs local at rtol 0.5"
    assert [f.title for f in verdict.findings if f.cause == "toy-run"] == ["toy saw docker"]


def test_an_entry_point_that_is_not_a_check_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_toy(tmp_path / "site", monkeypatch, "broken = toy_checks:NOT_A_CHECK\n")
    with pytest.raises(UsageError, match="entry point broken = toy_checks:NOT_A_CHECK .* not a check"):
        judge([make_record(tmp_path, "local", losses=CURVE)])


def test_rank_events_survive_a_line_cut_short(tmp_path: Path) -> None:
    """A rank killed while writing leaves half a line; any other broken line is an error."""
    record = make_record(tmp_path, "local", rank_events={0: _batches(["a", "b"])})
    path = record.root / "ranks" / "rank-0.jsonl"
    with path.open("a") as handle:
        handle.write('{"kind": "batch", "n": 3, "dig')
    assert [e["digest"] for e in record.rank_events()[0]] == ["a", "b"]
    path.write_text(path.read_text().replace('{"kind": "batch", "n": 3, "dig', "") + "not json\n" + json.dumps({}))
    with pytest.raises(RecordError, match="rank-0.jsonl:3: not a JSON event"):
        RunRecord.load(record.root).rank_events()  # read anew: a record read back keeps what it read


def test_one_record_is_never_parity_it_compared_nothing(tmp_path: Path) -> None:
    from harness.report import to_html, to_json, to_markdown, to_text

    verdict = judge([make_record(tmp_path, "local", losses=CURVE)], skipped={"docker": "no Docker engine answers"})
    assert verdict.outcome == "nothing-compared" and verdict.exit_code == 0
    text = to_text(verdict)
    assert text.splitlines()[:3] == [
        "verdict: NOTHING COMPARED  (rungs: local)",
        "skipped docker: no Docker engine answers",
        "only local ran: its own checks found nothing, but no other rung ran to compare it with "
        "(--require names the rungs that must run)",
    ]
    assert "PARITY" not in text and "PARITY" not in to_html(verdict)
    assert json.loads(to_json(verdict))["outcome"] == "nothing-compared"
    markdown = to_markdown(verdict)
    assert markdown.startswith("### ⚪ Parity harness: **nothing compared**") and "✅" not in markdown
    assert ">NOTHING COMPARED<" in to_html(verdict)


def test_a_required_rung_that_cannot_run_fails_the_ladder_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.backends import local

    monkeypatch.setattr(local, "cuda_device_count", lambda: 0)
    job = Path(__file__).resolve().parents[1] / "scenarios" / "ddp_csv" / "job.yaml"
    records = tmp_path / "records"
    code = main(["ladder", str(job), "--rungs", "local,local-gpu", "--require", "local-gpu", "--records", str(records)])
    err = capsys.readouterr().err
    assert code == 1
    assert "required rung 'local-gpu' cannot run here: no CUDA device visible to torch" in err
    assert not records.exists()
    assert main(["ladder", str(job), "--rungs", "local", "--require", "docker"]) == 2
    assert "--require names docker, which the ladder does not climb" in capsys.readouterr().err


def test_every_rank_curve_is_compared_not_only_the_first_hosts(tmp_path: Path) -> None:
    base = make_record(tmp_path, "local", losses=CURVE)
    cand = make_record(tmp_path, "docker", losses=CURVE)
    for record, drift in ((base, 0.0), (cand, 0.1)):
        metrics = json.loads((record.root / "metrics.json").read_text())
        metrics["loss"]["rank-3"] = [v + (drift if i >= 2 else 0.0) for i, v in enumerate(CURVE)]
        (record.root / "metrics.json").write_text(json.dumps(metrics))
    verdict = judge([base, cand])
    assert (verdict.outcome, verdict.first_step, verdict.causes) == ("diverged", 2, ["metric-divergence"])
    assert verdict.findings[0].evidence[0].startswith("step 2: local=0.6 docker=0.7")
    assert "on rank-3" in verdict.findings[0].evidence[0]
