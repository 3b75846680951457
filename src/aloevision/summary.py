"""The short summary printed at the end of a run: what ran and where everything it wrote is."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def print_summary(cfg: DictConfig, results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from aloevision.tracking import RUN_RECORD

    run_dir = Path(cfg.paths.output_dir)
    import json

    rec = json.loads((run_dir / RUN_RECORD).read_text())
    table = Table(title=f"aloevision · {cfg.group} · stage={cfg.stage}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("where / value")
    table.add_row("run folder", str(run_dir))
    table.add_row("run record", str(run_dir / RUN_RECORD))
    for k, v in rec["paths"].items():
        if k != "run_dir":
            table.add_row(k, str(v))
    w = rec.get("wandb", {})
    if w.get("dir"):
        table.add_row(f"W&B run ({w.get('mode')})", f"{w['dir']}" + ("  → `wandb sync` to upload" if w.get("mode") == "offline" else ""))
    for k, v in sorted(rec["metrics"].items()):
        if k.startswith("eval/") or k in ("train/last_loss", "train/first_loss", "mix/samples"):
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
