"""The paper's tables rebuilt from runs: Table 7 (mixtures), 8 (leakage), 9 (filtering), a Table 3-style full table
for a recipe, Table 10 (CareQA-Vision splits) and Table 4 (HEART robustness).

Rows are labelled by the choice the sweep varied (`mixture=final`), with the paper's row beside each and the
difference (measured - paper). A run or metric that does not exist is shown as missing ("—" / empty CSV cell with
status), never as zero; an unfinished run is shown with its status. Output: Markdown, LaTeX, CSV (long format) and a
grouped bar chart PNG.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from aloevision.report.runs import RunRecord, pick_best, result_runs, varied_choices

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")

BENCH_LABELS = {
    "pathmmu": "PathMMU",
    "omnimedvqa": "OmniMed",
    "gmai_mmbench": "GMAI",
    "probmed": "ProbMed",
    "slake": "SLAKE",
    "mmmu": "MMMU",
    "multimedqa": "MultimedQA",
    "mmlu": "MMLU",
    "careqa_vision/mcq": "CareQA-V MCQ",
    "careqa_vision/open": "CareQA-V VQA",
    "careqa_vision/nursing_mcq": "MCQ Nursing",
    "careqa_vision/medicine_mcq": "MCQ Medicine",
    "careqa_vision/nursing_open": "VQA Nursing",
    "careqa_vision/medicine_open": "VQA Medicine",
    # eval/leaked_items (eval.leaked_items): the mean score of the evaluation items known to be planted in the
    # training data; an extra column of any table whose runs have it (Table 8 on the demo: with vs without leakage)
    "leaked_items": "Leaked items",
}
ABLATION_COLUMNS = ["pathmmu", "omnimedvqa", "gmai_mmbench", "probmed", "slake", "mmmu", "multimedqa", "mmlu"]
TABLE3_COLUMNS = ["careqa_vision/mcq", "careqa_vision/open", "omnimedvqa", "gmai_mmbench", "pathmmu", "probmed",
                  "slake", "mmmu", "multimedqa", "mmlu"]
TABLE10_COLUMNS = ["careqa_vision/mcq", "careqa_vision/nursing_mcq", "careqa_vision/medicine_mcq",
                   "careqa_vision/open", "careqa_vision/nursing_open", "careqa_vision/medicine_open"]
HEART_COLUMNS = [f"heart/classification/{c}" for c in ("base", "cap", "pmt", "syc")] + [
    f"heart/detection/{c}" for c in ("base", "cap", "pmt", "syc", "leg")]
for _c in HEART_COLUMNS:
    _task, _col = _c.split("/")[1:]
    BENCH_LABELS[_c] = f"{'Cls' if _task == 'classification' else 'Det'} {_col.capitalize()}"


@dataclass(frozen=True)
class TableSpec:
    key: str
    title: str
    columns: tuple[str, ...]
    vary: str | None = None  # the choice whose values are the rows (ablations); None: one row per configuration
    rows: tuple[tuple[str, str], ...] = ()  # expected (choice value, paper row) for ablations
    # Also show the runs' other top-level eval/<benchmark> metrics (no paper value), e.g. the demo sets.
    extra_columns: bool = False


SPECS = {
    "table7": TableSpec("table7", "Table 7: data mixtures", tuple(ABLATION_COLUMNS), "mixture",
                        (("final", "Final"), ("multimodal_only", "Multimodal-only"), ("medical_only", "Medical-only")),
                        extra_columns=True),
    "table8": TableSpec("table8", "Table 8: evaluation-image leakage", tuple(ABLATION_COLUMNS), "leakage",
                        (("phash", "Without Leakage"), ("off", "With Leakage")), extra_columns=True),
    "table9": TableSpec("table9", "Table 9: quality filtering", tuple(ABLATION_COLUMNS), "filter",
                        (("paper", "With Filtering"), ("none", "Without Filtering")),
                        extra_columns=True),
    "table3": TableSpec("table3", "Table 3: full evaluation", tuple(TABLE3_COLUMNS), extra_columns=True),
    "table10": TableSpec("table10", "Table 10: CareQA-Vision by field and format", tuple(TABLE10_COLUMNS)),
    "table4": TableSpec("table4", "Table 4: HEART adversarial robustness", tuple(HEART_COLUMNS)),
}
GROUP_TABLES = {"ablation_mixture": ["table7"], "ablation_leakage": ["table8"], "ablation_filtering": ["table9"]}
VARY_TABLES = {"mixture": "table7", "leakage": "table8", "filter": "table9"}


@lru_cache(maxsize=1)
def paper_results() -> dict[str, Any]:
    return json.loads(PAPER_RESULTS.read_text())


def paper_row(table: str, name: str | None) -> dict[str, float]:
    if name is None:
        return {}
    return {k: v for k, v in paper_results()["tables"][table]["rows"].get(name, {}).items() if not k.startswith("_")}


def paper_model_for(run: RunRecord | None, table: str) -> str | None:
    """The paper's row for a recipe run: Aloe-Vision-7B/72B from the model choice; -AR (Table 4: S2) when the run is
    the adversarial second stage (an `ar` / `adversarial` choice or group name), else S1."""
    if run is None:
        return None
    model = str(run.choices.get("model", ""))
    size = "72B" if "72b" in model.lower() else "7B" if "7b" in model.lower() else None
    if size is None:
        return None
    tokens = set(re.split(r"[^a-z0-9]+", " ".join([run.group, *map(str, run.choices.values())]).lower()))
    ar = bool(tokens & {"ar", "adversarial"})
    if table == "table4":
        return f"Aloe-Vision-{size}-{'S2' if ar else 'S1'}"
    return f"Aloe-Vision-{size}{'-AR' if ar else ''}"


# ----------------------------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        return None
    return float(v)


@dataclass
class Row:
    label: str
    status: str  # finished | running | failed | missing (no run)
    run: str | None
    measured: dict[str, float | None]
    paper_name: str | None
    paper: dict[str, float]

    def diff(self, col: str) -> float | None:
        m, p = self.measured.get(col), self.paper.get(col)
        return None if m is None or p is None else m - p


@dataclass
class Table:
    spec: TableSpec
    rows: list[Row]
    varied: list[str]
    notes: list[str] = field(default_factory=list)
    extra: tuple[str, ...] = ()  # benchmark columns the runs have and the paper table does not

    @property
    def columns(self) -> tuple[str, ...]:
        return self.spec.columns + self.extra


def _row(label: str, run: RunRecord | None, columns: Sequence[str], paper_name: str | None, table: str) -> Row:
    measured = {c: (_num(run.metrics.get(f"eval/{c}")) if run else None) for c in columns}
    # The row names the run it came from and which model its metrics measure (trained here / eval-only base).
    name = (f"{run.name} ({run.model})" if run.model else run.name) if run else None
    return Row(label, run.status if run else "missing", name, measured, paper_name, paper_row(table, paper_name))


def build_table(key: str, runs: Iterable[RunRecord], *, paper: str | None = None) -> Table:
    """One table from runs. `paper`: for recipe tables (3, 4, 10), the paper row to compare with (default: from the
    model choice, see `paper_model_for`)."""
    spec = SPECS[key]
    rruns = result_runs(runs)
    varied = varied_choices(rruns)
    extra: tuple[str, ...] = ()
    if spec.extra_columns:
        have = {k[5:] for r in rruns for k in r.metrics if k.startswith("eval/") and "/" not in k[5:]}
        extra = tuple(sorted(have - set(spec.columns)))
    columns = spec.columns + extra
    notes: list[str] = []
    rows: list[Row] = []
    if spec.vary:
        by_value: dict[str, list[RunRecord]] = {}
        for r in rruns:
            by_value.setdefault(str(r.choices.get(spec.vary)), []).append(r)
        others = [k for k in varied if k != spec.vary]
        if others:
            notes.append(f"runs also differ in {', '.join(others)}; per row the finished run with most metrics is used")
        expected = list(spec.rows) + [(v, None) for v in sorted(by_value) if v not in {e for e, _ in spec.rows}]
        for value, pname in expected:
            best = pick_best(by_value.get(value, []))
            rows.append(_row(f"{spec.vary}={value}", best, columns, pname, key))
            if best is None:
                notes.append(f"no run with {spec.vary}={value}")
    else:
        configs: dict[tuple, list[RunRecord]] = {}
        for r in rruns:
            configs.setdefault(tuple(str(r.choices.get(k)) for k in varied), []).append(r)
        for sig, group in sorted(configs.items()):
            best = pick_best(group)
            label = ", ".join(f"{k}={v}" for k, v in zip(varied, sig)) or (best.group if best else "run")
            rows.append(_row(label, best, columns, paper or paper_model_for(best, key), key))
        if not rows:
            notes.append("no runs")
    for row in rows:
        if row.run:
            notes.append(f"{row.label}: run {row.run}")
        if row.status not in ("finished", "missing"):
            notes.append(f"{row.label}: run {row.run} is {row.status}; its metrics may be incomplete")
        gaps = [c for c in spec.columns if row.measured[c] is None]  # extra columns are optional
        if row.status != "missing" and gaps:
            notes.append(f"{row.label}: missing {', '.join(gaps)}")
    return Table(spec, rows, varied, notes, extra)


def tables_for(group: str, runs: Sequence[RunRecord]) -> list[str]:
    """Which tables a group's runs make: by the experiment name, else by what the sweep varied, else the recipe
    tables (3, plus 10 / 4 when such metrics exist)."""
    if group in GROUP_TABLES:
        return list(GROUP_TABLES[group])
    varied = varied_choices(result_runs(runs))
    keys = [VARY_TABLES[v] for v in varied if v in VARY_TABLES]
    if keys:
        return keys
    metrics = {k for r in runs for k in r.metrics}
    keys = ["table3"]
    if any(k.startswith("eval/careqa_vision/") for k in metrics):
        keys.append("table10")
    if any(k.startswith("eval/heart/") for k in metrics):
        keys.append("table4")
    return keys


# ----------------------------------------------------------------------------------------------------------------
# rendering

MISSING = "—"


def _f(v: float | None, signed: bool = False) -> str:
    if v is None:
        return MISSING
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def _status(row: Row) -> str:
    return "" if row.status == "finished" else f" [{row.status}]"


def to_markdown(t: Table) -> str:
    cols = [BENCH_LABELS.get(c, c) for c in t.columns]
    lines = [f"### {t.spec.title}", "", "| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in t.rows:
        lines.append(f"| **{r.label}**{_status(r)} | " + " | ".join(_f(r.measured[c]) for c in t.columns) + " |")
        if r.paper:
            lines.append(f"| paper: {r.paper_name} | " + " | ".join(_f(r.paper.get(c)) for c in t.columns) + " |")
            lines.append("| Δ (ours − paper) | " + " | ".join(_f(r.diff(c), True) for c in t.columns) + " |")
    lines.append("")
    lines.append(f"Rows vary: {', '.join(t.varied) or 'nothing (single configuration)'}. {MISSING} = missing "
                 "(no run or no metric), never zero.")
    lines += [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("−", "-"), ("Δ", r"$\Delta$"), ("—", "--")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    cols = [BENCH_LABELS.get(c, c) for c in t.columns]
    out = [r"\begin{table}[t]", r"\centering", r"\small", r"\caption{" + _tex(t.spec.title) + " (ours vs. paper)}",
           r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
           "Row & " + " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
    for i, r in enumerate(t.rows):
        out.append(_tex(r.label + _status(r)) + " & " + " & ".join(_tex(_f(r.measured[c])) for c in t.columns) + r" \\")
        if r.paper:
            out.append(r"\quad paper & " + " & ".join(_tex(_f(r.paper.get(c))) for c in t.columns) + r" \\")
            out.append(r"\quad $\Delta$ & " + " & ".join(_tex(_f(r.diff(c), True)) for c in t.columns) + r" \\")
        if i < len(t.rows) - 1:
            out.append(r"\midrule")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


CSV_FIELDS = ["table", "row", "status", "run", "benchmark", "measured", "paper_row", "paper", "diff"]


def csv_rows(t: Table) -> list[dict[str, Any]]:
    out = []
    for r in t.rows:
        for c in t.columns:
            m, p, d = r.measured[c], r.paper.get(c), r.diff(c)
            out.append({"table": t.spec.key, "row": r.label, "status": r.status if m is not None else
                        (r.status if r.status == "missing" else f"{r.status}; metric missing"),
                        "run": r.run or "", "benchmark": c, "measured": "" if m is None else round(m, 4),
                        "paper_row": r.paper_name or "", "paper": "" if p is None else p,
                        "diff": "" if d is None else round(d, 4)})
    return out


def to_csv(t: Table, path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_rows(t))
    return path


def to_png(t: Table, path: str | Path) -> Path:
    """Grouped bars: one group per benchmark, one bar per row (measured); the paper's value as a black tick on
    each bar; a missing measurement is marked 'n/a' instead of a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(t.columns)
    n = max(len(t.rows), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) + 2), 4.2))
    for i, r in enumerate(t.rows):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(cols))]
        vals = [r.measured[c] for c in cols]
        bars = ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None],
                      width=width * 0.95, label=r.label + _status(r))
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)  # a measured 0 reads "0.0", unlike a missing value
        for x, v in zip(xs, vals):
            if v is None:
                ax.text(x, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
        paper = [(x, r.paper.get(c)) for x, c in zip(xs, cols) if r.paper.get(c) is not None]
        if paper:
            ax.scatter([x for x, _ in paper], [p for _, p in paper], marker="_", s=220 * width, color="black",
                       zorder=3, label="paper" if i == 0 else None)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([BENCH_LABELS.get(c, c) for c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(t.spec.title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_table(t: Table, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{t.spec.key}.md"
    md.write_text(to_markdown(t))
    tex = out / f"{t.spec.key}.tex"
    tex.write_text(to_latex(t))
    csv_path, png = to_csv(t, out / f"{t.spec.key}.csv"), to_png(t, out / f"{t.spec.key}.png")
    return {"md": md, "tex": tex, "csv": csv_path, "png": png}
