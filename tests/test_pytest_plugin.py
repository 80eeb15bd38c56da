"""The pytest plugin, run in-process with pytester on a small user repo: a parity check passes for
a correct job, fails with a readable verdict for a faulty one, skips rungs that cannot run here
with their reason, and keeps records where ``--harness-record-dir`` says."""

from __future__ import annotations

import importlib.metadata
import json
import re
import textwrap

import pytest

pytest_plugins = ["pytester"]

PLUGIN = "harness.pytest_plugin"

# Each job runs on the `local` rung in about a second: one host, no distribution, no torch.
STEADY = "for i in range(5):\n    print(f'step={i} loss={1.0 / (i + 1):.6f}', flush=True)\n"
NOISY = "import random\nfor i in range(5):\n    print(f'step={i} loss={random.random():.6f}', flush=True)\n"
JOB = """\
name: {name}
source_dir: src
entry_point: train.py
metric_definitions:
  - {{name: "train:loss", regex: "step=\\\\d+ loss=([0-9.eE+-]+)"}}
max_run: 60
"""


def _entry_point() -> str | None:
    """The name the installed ``pytest11`` entry point gives the plugin, if one is installed."""
    names = [ep.name for ep in importlib.metadata.entry_points(group="pytest11") if ep.value == PLUGIN]
    return names[0] if names else None


@pytest.fixture
def repo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A team's repo: two jobs and a conftest.py that registers the plugin. Autoload is off, so
    the conftest is the one way the plugin comes in, whether or not the entry point is installed."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")
    for name, script in (("steady", STEADY), ("noisy", NOISY)):
        (pytester.path / name / "src").mkdir(parents=True)
        (pytester.path / name / "src" / "train.py").write_text(script)
        (pytester.path / name / "job.yaml").write_text(JOB.format(name=name))
    return pytester


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """`local-gpu` cannot run, as on a machine without a GPU, whatever this machine has."""
    from harness.backends import local

    monkeypatch.setattr(local, "cuda_device_count", lambda: 0)


def _tests(repo: pytest.Pytester, source: str) -> None:
    repo.makepyfile(
        test_parity="import pytest\nfrom harness.pytest_plugin import assert_parity\n\n" + textwrap.dedent(source)
    )


def _run(repo: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in this process, which imported the plugin already: pytest would warn that it
    cannot rewrite its asserts, but the plugin opts out of rewriting (PYTEST_DONT_REWRITE)."""
    result = repo.runpytest(*args)
    result.stdout.no_fnmatch_line("*PytestAssertRewriteWarning*")
    return result


@pytest.mark.unit
def test_options_in_their_own_group_with_help(repo: pytest.Pytester) -> None:
    result = _run(repo, "--help")
    result.stdout.fnmatch_lines(
        [
            "parity checks of training jobs (harness):",
            "  --harness-rungs=RUNGS",
            "*comma-separated rungs for parity checks*",
            "  --harness-record-dir=DIR",
            "*keep run records here*",
        ]
    )


@pytest.mark.unit
def test_marker_is_registered(repo: pytest.Pytester) -> None:
    _run(repo, "--markers").stdout.fnmatch_lines(["@pytest.mark.harness_parity(job, rungs=None, *"])


@pytest.mark.unit
def test_unknown_rung_is_a_usage_error(repo: pytest.Pytester) -> None:
    result = _run(repo, "--harness-rungs", "local,lokal")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--harness-rungs: unknown rung 'lokal'; choose from single, local, local-gpu*"])


@pytest.mark.unit
def test_bad_job_or_marker_errors_without_traceback(repo: pytest.Pytester) -> None:
    _tests(
        repo,
        """
        @pytest.mark.harness_parity("missing/job.yaml")
        def test_missing_job(): pass

        @pytest.mark.harness_parity(rungs=["local"])
        def test_no_job(): pass

        def test_result_without_marker(harness_result): pass
    """,
    )
    result = _run(repo, "--strict-markers", "--harness-record-dir", "out")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines_random(
        [
            "*harness: *missing/job.yaml: no such job file",
            "*@pytest.mark.harness_parity: *missing 1 required positional argument: 'job'*",
            "*harness_result needs the test marked @pytest.mark.harness_parity*",
        ]
    )
    result.stdout.no_fnmatch_line("*pytest_plugin.py:*")
    summary = (repo.path / "out" / "summary.md").read_text()
    assert "| `test_parity.py::test_missing_job` | **ERROR** | none | none | | | harness: " in summary


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.unit
def test_no_runnable_rung_skips_with_the_reasons(repo: pytest.Pytester) -> None:
    _tests(
        repo,
        """
        @pytest.mark.harness_parity("steady/job.yaml", rungs=["local-gpu"])
        def test_gpu_parity(): raise AssertionError("the body ran")
    """,
    )
    result = _run(repo, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED * no rung of the ladder can run here: local-gpu: no CUDA device visible to torch on this machine"]
    )


@pytest.mark.slow
def test_correct_job_passes_by_marker_and_by_fixture(repo: pytest.Pytester) -> None:
    _tests(
        repo,
        """
        @pytest.mark.harness_parity("steady/job.yaml", rungs=["local", "local"], rtol=0, atol=0,
                                    tensor_rtol=0, tensor_atol=0)
        def test_marked(harness_result):
            assert [r.rung for r in harness_result.records] == ["local", "local"]
            assert harness_result.records[0].metrics()["train:loss"]["algo-1"][-1] == 0.2

        def test_fixture(harness_ladder):
            result = harness_ladder("steady/job.yaml", rungs="local,local", tensor_rtol=1e-3)
            assert_parity(result)
            assert result.verdict.outcome == "parity" and result.skipped == {}
    """,
    )
    _run(repo, "--strict-markers").assert_outcomes(passed=2)


@pytest.mark.slow
@pytest.mark.usefixtures("no_gpu")
def test_one_rung_compares_nothing_and_require_fails_it(repo: pytest.Pytester) -> None:
    """A parity check where only one rung could run neither passes nor fails: it is skipped as
    'nothing compared'; naming the missing rung in ``require`` fails it before anything runs."""
    _tests(
        repo,
        """
        @pytest.mark.harness_parity("steady/job.yaml", rungs=["local", "local-gpu"])
        def test_alone(): raise AssertionError("the body ran")

        @pytest.mark.harness_parity("steady/job.yaml", rungs=["local", "local-gpu"], require=["local-gpu"])
        def test_required(): raise AssertionError("the body ran")
    """,
    )
    result = _run(repo, "-rs")
    result.assert_outcomes(skipped=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*harness: required rung 'local-gpu' cannot run here: no CUDA device*",
            "SKIPPED * nothing compared: only local ran (local-gpu: no CUDA device*",
        ]
    )
    for noise in ("*the body ran*", "*During handling*", "Hint: *"):
        result.stdout.no_fnmatch_line(noise)


@pytest.mark.slow
def test_divergence_fails_with_the_verdict_and_its_evidence(repo: pytest.Pytester) -> None:
    _tests(
        repo,
        """
        @pytest.mark.harness_parity("noisy/job.yaml", rungs=["local", "local"])
        def test_noisy(): raise AssertionError("the body ran")
    """,
    )
    result = _run(repo, "--harness-record-dir", "out")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_noisy _*",
            "verdict: DIVERGED  (rungs: local -> local)",
            "first departs on local (compared with local) at step 0",
            "1. [[]divergence] train:loss diverges at step 0 on local*",  # [[] is a literal [
            "     step 0: local #1=* local #2=* on algo-1 (tolerance rtol=1e-05, atol=1e-06)",
            "records: *",
            "FAILED test_parity.py::test_noisy - Failed: verdict: DIVERGED*",
        ]
    )
    for noise in ("*the body ran*", "*Traceback*", "*pytest_plugin.py*", "*def test_noisy*"):
        result.stdout.no_fnmatch_line(noise)
    summary = (repo.path / "out" / "summary.md").read_text()
    links = "[records](test_parity.py-test_noisy/) · [verdict.json](test_parity.py-test_noisy/verdict.json)"
    row = f"| `test_parity.py::test_noisy` | **FAILED** | **DIVERGED** | local → local | local at step 0 | {links} |  |"
    assert row in summary
    assert "<details><summary><code>test_parity.py::test_noisy</code>: diverged (test failed)</summary>" in summary
    assert "train:loss diverges at step 0 on local" in summary


@pytest.mark.slow
@pytest.mark.usefixtures("no_gpu")
def test_rung_that_cannot_run_is_skipped_and_the_others_compared(repo: pytest.Pytester) -> None:
    _tests(
        repo,
        """
        @pytest.mark.harness_parity("steady/job.yaml", rungs=["local", "local-gpu", "local"])
        def test_parity(harness_result):
            assert harness_result.skipped == {"local-gpu": "no CUDA device visible to torch on this machine"}
    """,
    )
    result = _run(repo)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*RungSkippedWarning: rung local-gpu skipped: no CUDA device visible to torch*"])
    strict = _run(repo, "-W", "error::harness.pytest_plugin.RungSkippedWarning")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(
        [
            "rung local-gpu skipped: no CUDA device visible to torch on this machine "
            "(RungSkippedWarning is an error in this run: every rung must run)"
        ]
    )
    strict.stdout.no_fnmatch_line("*pytest_plugin.py*")
    strict.stdout.no_fnmatch_line("*During handling*")


@pytest.mark.slow
@pytest.mark.usefixtures("no_gpu")
def test_record_dir_keeps_each_ladder_and_a_summary(repo: pytest.Pytester) -> None:
    _tests(
        repo,
        """
        @pytest.mark.harness_parity("steady/job.yaml")
        def test_default_rungs(): pass

        @pytest.mark.harness_parity("steady/job.yaml", rungs=["local-gpu"])
        def test_gpu_only(): pass
    """,
    )
    result = _run(repo, "--harness-rungs", "local,local", "--harness-record-dir", "out/records")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "harness: rungs local,local (where a test names none); records in out/records",
            "*- harness -*",
            f"2 ladders of 2 tests (1 passed, 1 skipped; verdicts: 1 not climbed, 1 parity): "
            f"records and summary.md in {repo.path}/out/records",
        ]
    )
    ladder_dir = repo.path / "out" / "records" / "test_parity.py-test_default_rungs"
    ladder = json.loads((ladder_dir / "ladder.json").read_text())
    assert ladder["test"] == "test_parity.py::test_default_rungs" and ladder["requested_rungs"] == ["local", "local"]
    record, _ = ladder["records"]
    assert ladder["compare"] == ladder["records"] and (ladder["rtol"], ladder["atol"]) == (1e-5, 1e-6)
    assert (ladder["tensor_rtol"], ladder["tensor_atol"]) == (1e-5, 1e-6)
    assert json.loads((ladder_dir / record / "manifest.json").read_text())["rung"] == "local"
    assert json.loads((ladder_dir / "verdict.json").read_text())["outcome"] == "parity"
    summary = (repo.path / "out" / "records" / "summary.md").read_text()
    assert "| `test_parity.py::test_default_rungs` | passed | parity | local → local |" in summary
    assert "| `test_parity.py::test_gpu_only` | skipped | none | none | | | no rung of the ladder can run" in summary
    assert not (repo.path / "out" / "records" / "test_parity.py-test_gpu_only").exists()
    _run(repo, "--harness-rungs", "local,local", "--harness-record-dir", "out/records", "-k", "default")
    assert (ladder_dir.parent / f"{ladder_dir.name}-2" / "ladder.json").is_file()  # a rerun never mixes records


@pytest.mark.slow
def test_summary_counts_tests_as_pytest_saw_them_next_to_the_verdicts(repo: pytest.Pytester) -> None:
    """A test that expects a divergence and gets it passed: the summary says so, and says the
    verdict was expected; the test whose verdict failed it is the one counted as failed."""
    _tests(
        repo,
        """
        def test_expects_divergence(harness_ladder):
            result = harness_ladder("noisy/job.yaml", rungs="local,local")
            assert result.verdict.outcome == "diverged"

        @pytest.mark.harness_parity("noisy/job.yaml", rungs=["local", "local"])
        def test_wants_parity(): pass

        @pytest.mark.harness_parity("steady/job.yaml", rungs=["local", "local"])
        def test_parity(): pass
    """,
    )
    result = _run(repo, "--harness-record-dir", "out")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "3 ladders of 3 tests (2 passed, 1 failed; verdicts: 1 diverged, 1 diverged (expected by the test), "
            f"1 parity): records and summary.md in {repo.path}/out",
        ]
    )
    summary = (repo.path / "out" / "summary.md").read_text()
    assert "| test | result | verdict | rungs | departs | records | notes |" in summary
    assert (
        "| `test_parity.py::test_expects_divergence` | passed | diverged, expected by the test | local → local |"
        in summary
    )
    assert "| `test_parity.py::test_wants_parity` | **FAILED** | **DIVERGED** | local → local |" in summary
    assert "| `test_parity.py::test_parity` | passed | parity | local → local |" in summary
    assert (
        "<details><summary><code>test_parity.py::test_expects_divergence</code>: diverged, expected by the test "
        "(test passed)</summary>"
    ) in summary
    assert "DIVERGED (" not in summary.split("test_expects_divergence", 2)[1].split("\n")[0]
    links = re.findall(r"\]\(([^)]+)\)", summary)
    assert links, summary  # the records are linked: a summary without links would pass the loop below
    for link in links:  # relative to summary.md, and there
        assert (repo.path / "out" / link).exists(), link


@pytest.mark.unit
def test_installed_entry_point_loads_the_plugin(pytester: pytest.Pytester) -> None:
    name = _entry_point()
    if name is None:
        pytest.skip(f"no pytest11 entry point for {PLUGIN} installed (pyproject.toml, then pip install -e .)")
    _run(pytester, "--help").stdout.fnmatch_lines(["  --harness-record-dir=DIR"])
    pytester.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")  # a team that lists it in conftest.py as well
    listed_too = _run(pytester, "--help")
    assert listed_too.ret == 0, (
        f"entry point {name!r} and conftest.py's {PLUGIN!r} register the plugin twice "
        f"(pytest refuses); name the entry point {PLUGIN!r}:\n{listed_too.stderr.str()}"
    )
