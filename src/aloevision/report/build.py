"""The report stage's group report: collect a sweep's runs, render its paper table(s), write the files, log them
to the report run in W&B, and optionally save a W&B Report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aloevision.config import ConfigError
from aloevision.report.runs import collect_runs, groups_on_disk, result_runs
from aloevision.report.tables import BENCH_LABELS, build_table, csv_rows, tables_for, write_table
from aloevision.report.wandb_report import save_report

log = logging.getLogger(__name__)


def build_group_report(group: str, runs_dir: str | Path | None, out_dir: str | Path, *, source: str = "auto",
                       wandb_report: bool = False, tracker=None, wandb_cfg: dict | None = None,
                       tables: list[str] | None = None, paper: str | None = None) -> dict[str, Any]:
    """Write `<table>.md/.tex/.csv/.png` for the group's table(s) into `out_dir`; return what was written.

    `tracker` (an `aloevision.tracking.Tracker`, optional): gets each table as a W&B table and its chart as an image.
    `tables`: override which tables (default: from the group name / what the sweep varied).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if wandb_cfg is None and tracker is not None:
        wandb_cfg = (tracker.record.get("config") or {}).get("wandb")
    got = collect_runs(group, runs_dir, source=source, wandb_cfg=wandb_cfg)
    # The report job of this very group writes a record too; it is not a result row.
    runs = [r for r in result_runs(got.runs) if not (tracker is not None and r.path and
                                                     Path(r.path).parent == Path(tracker.run_dir))]
    if not runs:
        # A typo must not pass as an empty table: say which groups exist.
        known = groups_on_disk(runs_dir) if runs_dir else {}
        listing = ", ".join(f"{g} ({n} run{'s' if n != 1 else ''})" for g, n in known.items()) or "none"
        raise ConfigError(f"report.group={group}: no runs of that group ({got.message}). Groups with runs under "
                          f"{runs_dir}: {listing}")
    result: dict[str, Any] = {"group": group, "source": got.source, "runs": len(runs), "collect": got.message,
                              "runs_found": "; ".join(f"{r.name} [{r.status}, {r.model}] {r.folder}" for r in runs)}
    if got.skipped:
        result["skipped_records"] = len(got.skipped)
    keys = tables or tables_for(group, runs)
    metric_keys: list[str] = []
    for key in keys:
        table = build_table(key, runs, paper=paper)
        files = write_table(table, out)
        for kind, path in files.items():
            result[f"{key}_{kind}"] = path
        if table.notes:
            result[f"{key}_notes"] = "; ".join(table.notes)
        metric_keys += [f"eval/{c}" for c in table.columns if f"eval/{c}" not in metric_keys]
        log.info("report %s:\n%s", key, files["md"].read_text())
        if tracker is not None:
            rows = csv_rows(table)
            cols = list(rows[0]) if rows else []
            # W&B tables need one type per column: a missing number is None there (an empty cell in the CSV).
            tracker.table(f"report/{key}", cols, [[None if r[c] == "" and c in ("measured", "paper", "diff") else r[c]
                                                   for c in cols] for r in rows])
            tracker.image(f"report/{key}_chart", files["png"], caption=table.spec.title)
    result["tables"] = ",".join(keys)
    if wandb_report:
        wcfg = wandb_cfg or {}
        vary = [c for c in ("mixture", "leakage", "filter", "model") if any(c in r.choices for r in runs)]
        result["wandb_report"] = save_report(group, metric_keys, project=wcfg.get("project", "aloe-vision"),
                                             entity=wcfg.get("entity"), mode=wcfg.get("mode", "auto"),
                                             group_by=[f"config.{v}" for v in vary][:1])
    else:
        result["wandb_report"] = "not requested (report.wandb_report=false)"
    return result


__all__ = ["build_group_report", "BENCH_LABELS"]
