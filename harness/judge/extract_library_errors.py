"""Extract the messages the distributed libraries raise from their installed sources into
``harness/judge/library_errors.json`` (:mod:`harness.judge.library_errors` reads it). Rerun when a pin
of torch, accelerate or Lightning moves: ``python -m harness.judge.extract_library_errors``."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.judge.library_errors import LIBRARIES, LibraryError

#: Messages whose first line has fewer literal characters than this, or fewer words, say too
#: little to be told apart from a user's own ("Invalid value {x}").
_MIN_CHARS, _MIN_WORDS = 24, 4


def _message_parts(node: ast.expr) -> list[str | None] | None:
    """A message's literal text, with None for each formatted value; None where it is no
    string built in place (a variable, a call)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        parts: list[str | None] = []
        for value in node.values:
            parts += [value.value] if isinstance(value, ast.Constant) and isinstance(value.value, str) else [None]
        return parts
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _message_parts(node.left), _message_parts(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _message_parts(node.left) is not None:
        text = "".join(p if p is not None else "\0" for p in _message_parts(node.left) or [])
        pieces = re.split(r"(%[-#0 +]*\d*(?:\.\d+)?[sdrfi])", text)
        return [None if piece.startswith("%") and len(piece) > 1 else piece for piece in pieces if piece]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        base = _message_parts(node.func.value)
        if base is None:
            return None
        text = "".join(p if p is not None else "\0" for p in base)
        return [p if not p.startswith("{") else None for p in re.split(r"(\{[^{}]*\})", text) if p]
    return None


def _first_line(parts: list[str | None]) -> tuple[str, ...]:
    """Literal parts of the message's first line, merged where no value sits between them."""
    merged: list[str] = [""]
    for part in parts:
        if part is None:
            merged.append("")
            continue
        text = part.replace("\0", "")
        head, newline, _ = text.partition("\n")
        merged[-1] += head
        if newline:
            break
    while len(merged) > 1 and merged[0] == "" and merged[1] == "":
        merged.pop(0)
    return tuple(merged)


def _raise_sites(node: ast.AST, function: str = "<module>") -> Iterator[tuple[ast.Raise, str]]:
    """Every ``raise`` under ``node`` with the function it sits in."""
    for child in ast.iter_child_nodes(node):
        inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
        if isinstance(child, ast.Raise):
            yield child, function
        yield from _raise_sites(child, inner)


def _raises(path: Path, relative: str) -> Iterator[LibraryError]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError):
        return
    for node, function in _raise_sites(tree):
        if not (isinstance(node.exc, ast.Call) and node.exc.args):
            continue
        func = node.exc.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if not re.search(r"(Error|Exception)$", name):
            continue
        parts = _message_parts(node.exc.args[0])
        if parts is None:
            continue
        line = _first_line(parts)
        literal = "".join(line)
        if len(literal.strip()) < _MIN_CHARS or len(literal.split()) < _MIN_WORDS:
            continue
        yield LibraryError(line, name, f"{relative}:{node.lineno}", function)


@dataclass(frozen=True)
class Extracted:
    versions: dict[str, str]
    errors: list[dict[str, object]]

    def to_json(self) -> str:
        """One message per line, so that a pin's move reads as a diff of the lines it changed."""
        lines = ",\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in self.errors)
        return f'{{"versions": {json.dumps(self.versions, sort_keys=True)}, "errors": [\n{lines}\n]}}\n'


def extract() -> Extracted:
    """Every message the installed libraries raise from their distributed code, with their
    versions; the same sources give the same result, byte for byte."""
    errors: dict[tuple[str, ...], LibraryError] = {}
    for name, roots in LIBRARIES.items():
        site = Path(str(importlib.metadata.distribution(name).locate_file("")))
        for root in roots:
            base = site / root
            files = [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))
            for path in files:
                relative = path.relative_to(site).as_posix()
                if "/tests/" in relative or "/testing/" in relative:
                    continue
                for error in _raises(path, relative):
                    errors.setdefault(error.parts, error)  # the first place that raises it
    return Extracted(
        {name: importlib.metadata.version(name) for name in LIBRARIES},
        [
            {"parts": list(e.parts), "exception": e.exception, "source": e.source, "function": e.function}
            for e in sorted(errors.values(), key=lambda e: e.source)
        ],
    )


def main() -> None:
    out = Path(__file__).resolve().with_name("library_errors.json")
    out.write_text(extract().to_json(), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
