"""One writer for a stage's tables: the same rows as a Markdown file (to read, or paste into a paper) and as a
tracker table (W&B), so a stage states its table once instead of hand-writing both."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Numbers right-aligned (a column whose cells are all numbers or empty), text left."""
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
               and any(isinstance(r[i], (int, float)) for r in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return lines


def write_table(tracker, key: str, path: str | Path, title: str, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> Path:
    """`path` gets `# title`, the table and the notes (paragraphs); the tracker gets the table under `key`. The
    folder is created: each stage writes into its own sub-folder of the run folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *markdown_table(columns, rows)]
    for note in notes:
        lines += ["", note]
    path.write_text("\n".join(lines) + "\n")
    tracker.table(key, list(columns), [list(r) for r in rows])
    return path
