"""Generated tables inside hand-written markdown: the table lives between two marker comments, and a tool
rewrites only what is between them, so the prose around it stays the author's."""

from __future__ import annotations

from pathlib import Path


def replace_table(doc: Path, start: str, end: str, table: str) -> None:
    """Put `table` between the markers `start` and `end` in `doc`; markers missing are appended first."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if start not in text:
        text = f"{text.rstrip()}\n\n{start}\n{end}\n".lstrip()
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    doc.write_text(f"{before}{start}\n{table}\n{end}{after}", encoding="utf-8")
