"""Stage `report`: with `report.group=<experiment>`, the paper table for the runs of that sweep (from run records on
disk, or W&B when online); otherwise a one-page report of this run (data, training, evaluation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run(ctx) -> dict[str, Any]:
    if ctx.cfg.report.group:
        return group_report(ctx)
    return run_report(ctx)


def group_report(ctx) -> dict[str, Any]:
    from aloevision.report.build import build_group_report

    cfg = ctx.cfg
    runs_dir = Path(cfg.report.runs_dir or Path(cfg.paths.root) / "outputs")
    out_dir = ctx.run_dir / "report"
    result = build_group_report(cfg.report.group, runs_dir, out_dir, source=cfg.report.source,
                                wandb_report=cfg.report.wandb_report, tracker=ctx.tracker)
    ctx.tracker.stage_report("report", {k: str(v) for k, v in result.items()})
    ctx.tracker.add_paths(report=out_dir)
    return result


def run_report(ctx) -> dict[str, Any]:
    rec = ctx.tracker.record
    lines = [f"# Run report: {rec['name']}", "", f"experiment `{rec['group']}`; choices: "
             + ", ".join(f"{k}={v}" for k, v in sorted(rec["choices"].items())), ""]
    ingest = rec["stages"].get("ingest")
    if ingest:
        lines += ["## Data", "", "| source | rows in | kept | dropped by reason |", "|---|---:|---:|---|"]
        for src, r in ingest.items():
            drops = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("drops", {}).items())) or "-"
            lines.append(f"| {src} | {r.get('rows_in', '?')} | {r.get('rows_out', '?')} | {drops} |")
        lines.append("")
    mix = rec["stages"].get("mix")
    if mix:
        lines += ["## Mixture", "", "| source | category | samples |", "|---|---|---:|"]
        lines += [f"| {c['source']} | {c['category']} | {c['samples']} |" for c in mix["composition"]]
        lines.append("")
    metrics = rec["metrics"]
    train = {k: v for k, v in metrics.items() if k.startswith("train/")}
    if train:
        lines += ["## Training", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(train.items())] + [""]
    ev = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    if ev:
        lines += ["## Evaluation (%)", "", "| benchmark | score |", "|---|---:|"]
        lines += [f"| {k[5:]} | {v:.1f} |" for k, v in sorted(ev.items())] + [""]
    path = ctx.run_dir / "report.md"
    path.write_text("\n".join(lines))
    ctx.tracker.add_paths(report=path)
    return {"report": str(path)}
