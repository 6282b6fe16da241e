"""The model types' params as a markdown table, from the registry: `python tools/model_params.py --doc docs/params.md`.

Each model type's module documents its own keys (shipped value, allowed values, what it does); this tool
writes them between markers in a markdown file, and tests/test_model_types.py checks the committed table
is the one the registry gives now. Without `--doc` it prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TABLE_START = "<!-- model params table: python tools/model_params.py --doc docs/params.md -->"
TABLE_END = "<!-- end of the model params table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def params_table() -> str:
    """Markdown: one row per key a model type reads, with the type, its shipped value, allowed values and use."""
    from mnist_pipeline.train.registry import all_types

    rows = ["| model.type | key | shipped value | allowed | what it does |", "| --- | --- | --- | --- | --- |"]
    for name, kind in all_types().items():
        shipped = kind.shipped()
        for key, field in kind.fields().items():
            rows.append(f"| `{name}` | `{key}` | `{json.dumps(shipped[key])}` | {_cell(field.description or '')} | "
                        f"{_cell(field.title or '')} |")
    return "\n".join(rows)


def write_doc(doc: Path) -> None:
    """Replace the table between its markers in `doc` (appended, with its markers, when it has none)."""
    from tools.doc_tables import replace_table

    replace_table(doc, TABLE_START, TABLE_END, params_table())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--doc", type=Path, help="rewrite the table between its markers in this markdown file")
    args = parser.parse_args(argv)
    if args.doc:
        write_doc(args.doc)
    else:
        print(params_table())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
