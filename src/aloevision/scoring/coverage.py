"""Coverage heatmaps from the taxonomy tags (paper Figure 1): image modality x medical specialty and modality x body
part, over a set of scored samples (the final mixture), as PNG + CSV of counts.

Each sample counts once per heatmap, at its PRIMARY tags (the first, highest-priority tag of each field): the
matrix then sums to the number of tagged samples. Samples without a tag in either field are counted as untagged
(reported, not plotted). Counting reads the records once (a stream) or only their first-tag columns (`ScoreRows`)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from aloevision.scoring.store import ScoreRecord, ScoreRows, tag_column
from aloevision.scoring.taxonomy import FIELD_NAMES, VOCAB

PAIRS = (("MOD", "MED"), ("MOD", "SBP"), ("MOD", "GBP"))


def _primary(record: ScoreRecord, row: str, col: str) -> tuple[str, str] | None:
    a, b = record.tags.get(row) or [], record.tags.get(col) or []
    return (a[0], b[0]) if a and b else None


def coverage_counts(records: Iterable[ScoreRecord], row: str, col: str) -> tuple[Counter, int]:
    counts: Counter = Counter()
    untagged = 0
    for r in records:
        cell = _primary(r, row, col)
        if cell:
            counts[cell] += 1
        else:
            untagged += 1
    return counts, untagged


def coded_counts(rows: ScoreRows, row: str, col: str) -> tuple[Counter, int]:
    """`coverage_counts` from the first-tag columns: no record is read."""
    a, b = rows.column(tag_column(row)).astype(np.int64), rows.column(tag_column(col)).astype(np.int64)
    tagged = (a > 0) & (b > 0)  # code 0: no tag in that field
    cells, n = np.unique((a[tagged] << 16) | b[tagged], return_counts=True)
    names_a, names_b = rows.table.codes.tags[row].names, rows.table.codes.tags[col].names
    counts = Counter({(names_a[c >> 16], names_b[c & 0xFFFF]): m for c, m in zip(cells.tolist(), n.tolist())})
    return counts, len(a) - int(tagged.sum())


def pair_counts(records: Iterable[ScoreRecord] | ScoreRows) -> dict[tuple[str, str], tuple[Counter, int]]:
    """(counts, untagged) of every pair of PAIRS, in one pass over the records (or from the columns)."""
    if isinstance(records, ScoreRows):
        return {(row, col): coded_counts(records, row, col) for row, col in PAIRS}
    counts = {pair: Counter() for pair in PAIRS}
    untagged = dict.fromkeys(PAIRS, 0)
    for r in records:
        for pair in PAIRS:
            cell = _primary(r, *pair)
            if cell:
                counts[pair][cell] += 1
            else:
                untagged[pair] += 1
    return {pair: (counts[pair], untagged[pair]) for pair in PAIRS}


def write_csv(counts: Counter, row: str, col: str, path: Path) -> Path:
    """Full vocabulary matrix (rows = `row` tags, columns = `col` tags)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"{row}\\{col}", *VOCAB[col]])
        for a in VOCAB[row]:
            w.writerow([a, *(counts.get((a, b), 0) for b in VOCAB[col])])
    return path


def plot_heatmap(counts: Counter, row: str, col: str, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    rows = VOCAB[row]
    cols = VOCAB[col]
    m = np.array([[counts.get((a, b), 0) for b in cols] for a in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.5 * len(cols), 1.4 + 0.42 * len(rows)))
    shown = np.where(m > 0, m, np.nan)
    vmax = max(1.0, float(np.nanmax(m)) if m.size else 1.0)
    im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=vmax), aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if m.sum() and len(rows) * len(cols) <= 600:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if m[i, j]:
                    # Dark text on light cells (viridis' yellow end), white on dark ones; readable size.
                    r, g, b, _ = im.cmap(im.norm(m[i, j]))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                            color="black" if dark else "white", fontweight="bold")
    ax.set_xlabel(FIELD_NAMES[col])
    ax.set_ylabel(FIELD_NAMES[row])
    ax.set_title(title or f"{FIELD_NAMES[row]} x {FIELD_NAMES[col]} (n={int(m.sum())})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def coverage(records: Iterable[ScoreRecord] | ScoreRows, out_dir: str | Path) -> dict[str, dict[str, Path | int]]:
    """All heatmaps of PAIRS: `<out>/coverage_MOD_x_MED.{png,csv}` etc., plus coverage_summary.json. `records`: the
    final mixture's records, streamed, or their rows in a store's table."""
    out = Path(out_dir)
    result: dict[str, dict] = {}
    for (row, col), (counts, untagged) in pair_counts(records).items():
        stem = f"coverage_{row}_x_{col}"
        result[f"{row}_x_{col}"] = {
            "png": plot_heatmap(counts, row, col, out / f"{stem}.png"),
            "csv": write_csv(counts, row, col, out / f"{stem}.csv"),
            "tagged": sum(counts.values()),
            "untagged": untagged,
            "cells_covered": len(counts),
        }
    summary = {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()} for k, v in result.items()}
    (out / "coverage_summary.json").write_text(json.dumps(summary, indent=1))
    return result
