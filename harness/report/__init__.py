"""Reports of a verdict: terminal text, JSON (stable schema, docs/report.md), a self-contained
HTML page to attach to a ticket (loss curves of every rank with axes, causes with evidence,
environment and artifact differences, per-host timeline), and a Markdown summary for a pull
request (full evidence, folded, and links to the records).

A report written to a file refers to the records relative to that file's directory (``at=``), so
that the report and the records can be moved or uploaded together; a report without a file
(printed) refers to them by absolute path."""

from harness.report.html_page import to_html
from harness.report.markdown import to_markdown
from harness.report.verdict_text import comparison_warnings, record_labels, record_paths, to_json, to_text

__all__ = ["comparison_warnings", "record_labels", "record_paths", "to_html", "to_json", "to_markdown", "to_text"]
