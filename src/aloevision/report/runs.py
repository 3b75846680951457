"""Collect the runs of a sweep: from `run_record.json` files on disk (works offline) or from the W&B API (online).

A run record (written by `aloevision.tracking.Tracker`) looks like
`{"run_id", "name", "group", "job_type", "status", "choices": {"mixture": ..., ...}, "overrides", "config",
"metrics": {"eval/pathmmu": 61.8, ...}, "stages", "paths"}`. Unreadable records are skipped with a reason, never
silently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

RUN_RECORD = "run_record.json"
STATUS_RANK = {"finished": 0, "running": 1, "interrupted": 2, "failed": 3}  # which record of a configuration to prefer
NON_ROW_JOB_TYPES = {"report", "plan"}  # these jobs carry no results of their own


@dataclass
class RunRecord:
    name: str
    group: str
    job_type: str
    status: str
    choices: dict[str, Any]
    metrics: dict[str, Any]
    run_id: str | None = None
    overrides: list[str] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    path: str = ""  # the record file or the W&B run path
    trained: bool = False  # this job trained the model it evaluated (else: eval-only of eval.model / the base model)
    model: str = ""  # which model the metrics are of, e.g. "tiny, trained here" / "qwen2vl_7b base (untrained)"
    error: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "") -> "RunRecord":
        missing = [k for k in ("group", "choices", "metrics") if k not in d]
        if missing:
            raise ValueError(f"run record lacks {missing}")
        if not isinstance(d["choices"], dict) or not isinstance(d["metrics"], dict):
            raise ValueError("run record 'choices' and 'metrics' must be objects")
        return cls(
            name=str(d.get("name") or Path(path).parent.name),
            group=str(d["group"]),
            job_type=str(d.get("job_type") or ""),
            status=str(d.get("status") or "unknown"),
            choices={k: v for k, v in d["choices"].items()},
            metrics=dict(d["metrics"]),
            run_id=d.get("run_id"),
            overrides=list(d.get("overrides") or []),
            started=str(d.get("started") or ""),
            finished=str(d.get("finished") or ""),
            path=str(path),
            trained=_trained(d),
            model=_model_of(d),
            error=str(d.get("error") or ""),
        )

    @property
    def folder(self) -> str:
        """The run folder (for a record on disk) or the W&B run path."""
        return str(Path(self.path).parent) if self.path.endswith(RUN_RECORD) else self.path

    @property
    def complete(self) -> bool:
        return self.status == "finished"


def _trained(d: dict[str, Any]) -> bool:
    metrics, stages = d.get("metrics") or {}, d.get("stages") or {}
    return "train" in stages or any(k.startswith("train/") for k in metrics)


def _model_of(d: dict[str, Any]) -> str:
    """What the run's eval metrics measure: the model trained in this run, the model `eval.model` named, or the
    untrained base model."""
    cfg = d.get("config") or {}
    model = (d.get("choices") or {}).get("model") or (cfg.get("model") or {}).get("name") or "?"
    if _trained(d):
        return f"{model}, trained here"
    named = (cfg.get("eval") or {}).get("model")
    if named:
        return f"{model} from {named}"
    return f"{model} base (untrained)"


@dataclass
class Collected:
    runs: list[RunRecord]
    skipped: list[str]  # "path: reason" for records that could not be read
    source: str  # "disk" | "wandb"
    message: str = ""


def groups_on_disk(runs_dir: str | Path) -> dict[str, int]:
    """group -> number of result runs (not report / plan jobs) recorded under `runs_dir`."""
    got = load_runs_from_disk(runs_dir)
    out: dict[str, int] = {}
    for r in result_runs(got.runs):
        out[r.group] = out.get(r.group, 0) + 1
    return dict(sorted(out.items()))


def load_runs_from_disk(runs_dir: str | Path, group: str | None = None) -> Collected:
    """Every `run_record.json` under `runs_dir` (recursively), optionally only those of `group`."""
    root = Path(runs_dir)
    if not root.is_dir():
        return Collected([], [], "disk", f"runs folder {root} does not exist")
    runs, skipped = [], []
    for f in sorted(root.rglob(RUN_RECORD)):
        try:
            rec = RunRecord.from_dict(json.loads(f.read_text()), str(f))
        except (OSError, json.JSONDecodeError, ValueError) as e:
            skipped.append(f"{f}: {e}")
            continue
        if group is None or rec.group == group:
            runs.append(rec)
    for s in skipped:
        log.warning("skipped run record %s", s)
    n = len(result_runs(runs))
    return Collected(runs, skipped, "disk", f"{n} result run record(s) under {root}"
                     + (f" (+{len(runs) - n} report/plan jobs)" if len(runs) > n else ""))


def load_runs_from_wandb(group: str, *, project: str, entity: str | None = None, mode: str = "auto") -> Collected:
    """Runs of `group` from the W&B API. Offline (mode offline/disabled, or no credentials): nothing, with a reason."""
    from aloevision.tracking import resolve_mode

    if resolve_mode(mode) != "online":
        return Collected([], [], "wandb", "W&B API skipped (offline): no credentials or wandb.mode is not online")
    try:
        import wandb

        api = wandb.Api(timeout=30)
        path = f"{entity}/{project}" if entity else project
        wruns = api.runs(path, filters={"group": group})
        runs, skipped = [], []
        for r in wruns:
            try:
                runs.append(_from_wandb_run(r, group))
            except Exception as e:  # one odd run must not lose the others
                skipped.append(f"{r.path}: {e}")
        return Collected(runs, skipped, "wandb", f"{len(runs)} W&B run(s) in {path} group {group}")
    except Exception as e:
        return Collected([], [], "wandb", f"W&B API failed ({e})")


def _from_wandb_run(r, group: str) -> RunRecord:
    cfg = dict(r.config)
    choices = {k: v for k, v in cfg.items() if k not in ("cfg", "stage", "experiment") and not isinstance(v, dict)}
    summary = {k: v for k, v in dict(r.summary).items() if isinstance(v, (int, float)) and not k.startswith("_")}
    status = {"finished": "finished", "running": "running", "killed": "interrupted"}.get(r.state, "failed")
    d = {"choices": choices, "metrics": summary, "config": cfg.get("cfg") or {}}
    return RunRecord(name=r.name, group=group, job_type=r.job_type or cfg.get("stage", ""), status=status,
                     choices=choices, metrics=summary, run_id=r.id, started=str(getattr(r, "created_at", "")),
                     path="/".join(r.path), trained=_trained(d), model=_model_of(d))


def collect_runs(group: str, runs_dir: str | Path | None, *, source: str = "auto", wandb_cfg: dict | None = None
                 ) -> Collected:
    """`source`: disk | wandb | auto (W&B when online and it has runs, else disk)."""
    if source not in ("auto", "disk", "wandb"):
        raise ValueError(f"report.source={source!r}: use auto, disk or wandb")
    wcfg = wandb_cfg or {}
    if source in ("wandb", "auto"):
        got = load_runs_from_wandb(group, project=wcfg.get("project", "aloe-vision"), entity=wcfg.get("entity"),
                                   mode=wcfg.get("mode", "auto"))
        if got.runs or source == "wandb":
            return got
        log.info("%s; reading run records from disk", got.message)
        disk = load_runs_from_disk(runs_dir, group) if runs_dir else Collected([], [], "disk", "no runs_dir")
        disk.message = f"{got.message}; {disk.message}"
        return disk
    return load_runs_from_disk(runs_dir, group) if runs_dir else Collected([], [], "disk", "no runs_dir given")


def result_runs(runs: Iterable[RunRecord]) -> list[RunRecord]:
    """Runs that can hold results (not report/plan jobs)."""
    return [r for r in runs if r.job_type not in NON_ROW_JOB_TYPES]


def varied_choices(runs: Iterable[RunRecord]) -> list[str]:
    """The choice keys whose values differ between runs: what the sweep varied (row labels)."""
    runs = list(runs)
    # Nested defaults ("source@mixture.sources.x") and Hydra's own groups follow from the top-level choices.
    keys = sorted({k for r in runs for k in r.choices if "@" not in k and not k.startswith("hydra")})
    return [k for k in keys if len({str(r.choices.get(k)) for r in runs}) > 1]


def pick_best(runs: Iterable[RunRecord]) -> RunRecord | None:
    """Of several records for one configuration: a run that trained the model before an eval-only run (of the base
    model or another checkpoint); then finished before running / interrupted / failed; then the one with most eval
    metrics; then the latest."""
    runs = list(runs)
    if not runs:
        return None

    def rank(r: RunRecord) -> tuple[int, int, int]:
        return (0 if r.trained else 1, STATUS_RANK.get(r.status, 4),
                -sum(1 for k in r.metrics if k.startswith("eval/")))

    best = min(rank(r) for r in runs)
    return max((r for r in runs if rank(r) == best), key=lambda r: (r.finished, r.started, r.path))
