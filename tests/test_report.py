"""The reports on canned records: HTML charts with axes and one curve per rank, labels that tell
records of one rung apart, record paths relative to the report file, Markdown with the whole
evidence folded and links to the records, and `harness diff` warning about records of other jobs.
The browser test screenshots the HTML page with headless Chromium (where it is installed)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
from fake_records import JOB, make_record

from harness.cli import main
from harness.judge.findings import Finding
from harness.judge.verdict import Verdict, judge
from harness.record.run_record import RunRecord, write_json
from harness.report import comparison_warnings, record_labels, to_html, to_json, to_markdown

SVG = "{http://www.w3.org/2000/svg}"
CURVE = [1.0, 0.8, 0.62, 0.5, 0.45, 0.41, 0.38, 0.36, 0.35, 0.345, 0.34, 0.338]
TWO_BY_TWO = JOB.model_copy(update={"instance_count": 2, "processes_per_host": 2})
CHROMIUM = Path("/usr/bin/chromium")


def _ranked(root: Path, rung: str, *, ranks: int = 4, shift: float = 0.0) -> RunRecord:
    """A record of a 2 x 2 job whose metrics have a curve per rank (and the hosts' merged output)."""
    record = make_record(root, rung, losses=CURVE, job=TWO_BY_TWO)
    curves = {f"rank-{k}": [v + 0.04 * k + shift * (i >= 6) for i, v in enumerate(CURVE)] for k in range(ranks)}
    write_json(record.root / "metrics.json", {"train:loss": {"algo-1": CURVE, "algo-2": CURVE, **curves}})
    return record


def _ladder(root: Path) -> Verdict:
    """local, local again and docker: every rank's curve, the last rung drifting from step 6."""
    return judge([_ranked(root, "local"), _ranked(root, "local"), _ranked(root, "docker", shift=0.05)])


def _charts(page: str) -> list[ET.Element]:
    """Each chart's SVG, parsed as XML: it must be well-formed to be read this way at all."""
    return [ET.fromstring(svg) for svg in re.findall(r'<svg class="chart".*?</svg>', page, re.S)]


@pytest.mark.unit
def test_labels_tell_records_of_one_rung_apart() -> None:
    assert record_labels(["local", "local", "docker"]) == ["local #1", "local #2", "docker"]
    assert record_labels(["local", "docker", "local", "local"]) == ["local #1", "docker", "local #2", "local #3"]


@pytest.mark.unit
def test_html_chart_has_axes_ticks_and_one_curve_per_rank_per_record(tmp_path: Path) -> None:
    page = to_html(_ladder(tmp_path / "runs"))
    (chart,) = _charts(page)
    assert chart.get("data-metric") == "train:loss"
    y_ticks = [t.text for t in chart.iter(f"{SVG}text") if t.get("class") == "tick" and t.get("text-anchor") == "end"]
    x_ticks = [
        t.text for t in chart.iter(f"{SVG}text") if t.get("class") == "tick" and t.get("text-anchor") == "middle"
    ]
    assert y_ticks == ["0.2", "0.4", "0.6", "0.8", "1.0", "1.2"]
    assert x_ticks == ["0", "2", "4", "6", "8", "10"]
    titles = [t.text for t in chart.iter(f"{SVG}text") if t.get("class") == "axis-title"]
    assert "step" in titles and "train:loss" in titles
    curves = [(p.get("data-record"), p.get("data-source")) for p in chart.iter(f"{SVG}path")]
    assert curves == [(record, f"rank-{k}") for record in ("local #1", "local #2", "docker") for k in range(4)]
    assert all(p.get("d", "").count("L") == len(CURVE) - 1 for p in chart.iter(f"{SVG}path"))
    legend = re.search(r'<div class="legend">(.*?)</div></figure>', page, re.S)
    assert legend is not None
    assert re.findall(r"<b>([^<]+)</b>", legend.group(1)) == ["local #1", "local #2", "docker"]
    assert "Ladder: local #1 (succeeded) → local #2 (succeeded) → docker (succeeded)" in page
    assert "<script" not in page


@pytest.mark.unit
def test_html_chart_falls_back_to_every_host_and_breaks_lines_at_nan(tmp_path: Path) -> None:
    records = [make_record(tmp_path, "local", losses=CURVE, job=TWO_BY_TWO) for _ in range(2)]
    write_json(records[1].root / "metrics.json", {"loss": {"algo-1": CURVE, "algo-2": [1.0, float("nan"), 0.5, 0.4]}})
    (chart,) = _charts(to_html(judge(records)))
    paths = {(p.get("data-record"), p.get("data-source")): p.get("d", "") for p in chart.iter(f"{SVG}path")}
    assert list(paths) == [("local #1", "algo-1"), ("local #2", "algo-1"), ("local #2", "algo-2")]
    assert paths[("local #2", "algo-2")].count("M") == 2  # the NaN leaves a gap; the lone first point is a dot
    assert " h0" in paths[("local #2", "algo-2")]


@pytest.mark.unit
def test_reports_written_to_files_name_records_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a = make_record(Path("runs"), "local", losses=CURVE)  # as `harness ladder` leaves them: runs/<id>
    b = make_record(Path("runs"), "docker", losses=CURVE[:3] + [0.9, 0.9])
    out = Path("out")
    out.mkdir()
    files = ["--json", "out/v.json", "--html", "out/v.html", "--markdown", "out/v.md"]
    assert main(["diff", str(a.root), str(b.root), *files]) == 1
    expected = [f"../runs/{a.root.name}", f"../runs/{b.root.name}"]
    assert json.loads((out / "v.json").read_text())["records"] == expected
    page = (out / "v.html").read_text()
    for path in expected:
        assert f'<a href="{path}/"><code>{path}</code></a>' in page
        assert (out / path / "manifest.json").is_file()
    assert f"Records: [local]({expected[0]}) · [docker]({expected[1]})" in (out / "v.md").read_text()
    assert str(tmp_path) not in page + (out / "v.json").read_text() + (out / "v.md").read_text()
    printed = json.loads(to_json(judge([a, b])))["records"]  # no file: absolute paths
    assert printed == [str(tmp_path / "runs" / a.root.name), str(tmp_path / "runs" / b.root.name)]


@pytest.mark.unit
def test_markdown_folds_the_whole_evidence_and_every_note() -> None:
    evidence = [f"line {i}: " + "x" * 80 for i in range(40)] + ["a ``` fence inside"]
    verdict = Verdict(
        "diverged",
        ["local", "docker"],
        first_rung="docker",
        baseline_rung="local",
        findings=[
            Finding(
                kind="metrics",
                severity="divergence",
                title="loss | diverges",
                evidence=evidence,
                hint="look",
                cause="metric-divergence",
            ),
            Finding(
                kind="environment", severity="note", title="torch differs", evidence=["2.2 -> 2.3", "cuda none -> 12.1"]
            ),
        ],
        records=["/data/runs/a", "/data/runs/b"],
    )
    markdown = to_markdown(verdict, at=Path("/data/reports/pr.md"))
    assert "| 1 | `metric-divergence` | loss \\| diverges | line 0: " in markdown
    assert "(+40 lines below)" in markdown
    assert "<details><summary>1. loss | diverges: evidence (41 lines)</summary>" in markdown
    assert all(line in markdown for line in evidence)
    assert "````text\n" in markdown  # a fence longer than the backticks in the evidence
    assert "<details><summary>What else differs (1 note)</summary>" in markdown
    assert "  cuda none -> 12.1" in markdown
    assert markdown.rstrip().endswith("Records: [local](../runs/a) · [docker](../runs/b)")


@pytest.mark.unit
def test_diff_warns_when_the_records_are_of_other_jobs_or_topologies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_record(tmp_path, "local", losses=CURVE)
    b = make_record(tmp_path, "local", losses=CURVE, job=TWO_BY_TWO.model_copy(update={"name": "other"}))
    main(["diff", str(a.root), str(b.root)])
    err = capsys.readouterr().err
    assert (
        f"harness: warning: the records are of different jobs: 'fake' (local #1, {a.root.name}) and 'other' "
        f"(local #2, {b.root.name}); the verdict compares them all the same"
    ) in err
    assert (
        "harness: warning: the topologies differ (local #1 -> local #2): hosts [algo-1] -> [algo-1, algo-2]; "
        "processes per host 1 -> 2; world size 1 -> 4;"
    ) in err
    assert "the records are of different jobs: &#x27;fake&#x27;" in to_html(judge([a, b]))  # on the page too
    assert comparison_warnings([a, make_record(tmp_path, "docker", losses=CURVE)]) == []


# --- the page in a browser ----------------------------------------------------------------------


def _png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit PNG, decoded with the standard library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    chunks: dict[bytes, bytes] = {}
    offset = 8
    idat = b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        idat += body if kind == b"IDAT" else b""
        chunks.setdefault(kind, body)
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour in (2, 6), f"PNG of depth {depth}, colour type {colour}"
    size = 3 if colour == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * size, []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - size] if x >= size else 0
            up, corner = previous[x], previous[x - size] if x >= size else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(b for i in range(0, stride, size) for b in line[i : i + 3]))
        previous = line
    return width, height, rows


def _near(rows: list[bytes], colour: str, distance: int = 40) -> int:
    """Pixels within ``distance`` (per channel) of ``colour``."""
    target = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return sum(
        all(abs(row[x + c] - target[c]) <= distance for c in range(3))
        for row in rows
        for x in range(0, len(row), 3)
        if row[x : x + 3] != b"\xff\xff\xff"
    )


@pytest.mark.browser
def test_html_report_in_headless_chromium_shows_axes_and_every_rank(tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    verdict = _ladder(tmp_path / "runs")
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    page.write_text(to_html(verdict, at=page), encoding="utf-8")
    shot = tmp_path / "report.png"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    width, height, rows = _png(shot)
    assert (width, height) == (1200, 2000)
    chart_rows = rows[150:800]  # the chart sits under the verdict, causes and heading
    assert sum(row != b"\xff" * len(row) for row in chart_rows) > 200, "the chart area is blank"
    # Every record's hue is on the page, from its darkest rank's curve to its lightest one's.
    for base, lightest in (("#1f77b4", "#a5c9e1"), ("#d62728", "#efa9a9"), ("#2ca02c", "#abd9ab")):
        assert _near(chart_rows, base) > 30, f"no curve in {base}"
        assert _near(chart_rows, lightest, 25) > 30, f"no light rank curve near {lightest}"
    # Dark grey tick labels and axes: the SVG's text is drawn, not only the curves.
    assert _near(chart_rows, "#444444", 30) > 300
    shutil.copy(shot, tmp_path / "out" / "report.png")  # left next to the page for a person to look at
