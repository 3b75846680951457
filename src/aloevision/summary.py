"""The short summary printed at the end of a run: what ran, how it ended and where everything it wrote is.

Plain lines, one path per line and never shortened (piped output and SLURM logs are 80 columns wide: a table would cut
paths); the same lines go to the job's log file and into the run record (`summary`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

SUMMARY_LOGGER = "aloevision.summary"  # file-only (cli keeps it off the console, where print() already shows it)
SHOWN_METRICS = ("train/global_step", "train/first_loss", "train/last_loss", "mix/samples")


def summary_lines(cfg: DictConfig, rec: dict, run_dir: Path, ended: str | None = None) -> list[str]:
    status = ended or rec.get("status", "unknown")
    lines = [f"aloevision · group {rec.get('group', cfg.group)} · stage {cfg.stage} · {status}"]
    if rec.get("error") and not ended:
        lines.append(f"  error: {rec['error']}")
    rows = [("run folder", str(run_dir)), ("run record", str(run_dir / "run_record.json"))]
    log_files = sorted(p for p in run_dir.glob("*.log"))
    rows += [("log file", str(p)) for p in log_files]
    rows += [(k, str(v)) for k, v in (rec.get("paths") or {}).items() if k != "run_dir"]
    w = rec.get("wandb") or {}
    if w.get("dir"):
        rows.append((f"W&B run ({w.get('mode')}, id {w.get('id')})", str(w["dir"])))
        if w.get("mode") == "offline":
            rows.append(("upload with", f"wandb sync {w['dir']}"))
    metrics = rec.get("metrics") or {}
    for k in sorted(metrics):
        if k.startswith("eval/") or k in SHOWN_METRICS:
            v = metrics[k]
            rows.append((k, f"{v:.4g}" if isinstance(v, float) else str(v)))
    # A benchmark that ran but has no score (e.g. the judge could not parse any reply) is shown, not dropped.
    evaluated = ((rec.get("stages") or {}).get("eval") or {}).get("harness_status") or {}
    for key, status in sorted(evaluated.items()):
        if not any(k == f"eval/{key}" or k.startswith(f"eval/{key}/") for k in metrics):
            judges = (rec.get("stages") or {}).get(f"eval_judges_{key}") or {}
            why = (f"judges could not grade {judges['unscored']} of {judges['items']} answers"
                   if judges.get("unscored") is not None and judges.get("items") is not None else "")
            rows.append((f"eval/{key}", f"no score ({status}{'; ' + why if why else ''})"))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k + ':':<{width + 1}} {v}" for k, v in rows]
    return lines


def print_summary(cfg: DictConfig, results: dict, ended: str | None = None) -> None:
    from aloevision.artifacts import write_json_atomic
    from aloevision.tracking import RUN_RECORD

    run_dir = Path(cfg.paths.output_dir)
    try:
        rec = json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, json.JSONDecodeError):  # the job stopped before its record was written (config error, rank > 0)
        rec = {}
    lines = summary_lines(cfg, rec, run_dir, ended)
    print("\n".join(lines), flush=True)
    logging.getLogger(SUMMARY_LOGGER).info("\n".join(lines))
    if rec:
        rec["summary"] = lines
        write_json_atomic(run_dir / RUN_RECORD, rec)
