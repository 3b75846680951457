"""One W&B run per job, and a plain run record beside it.

W&B: project/entity from config, group = the experiment, job_type = the stage, the resolved config (secrets
scrubbed) with the choices people filter by (mixture, model, leakage, filter, ...) at the top level. With no
credentials it runs offline without asking; any W&B failure is logged and the job goes on.

The run record (`run_record.json` in the run folder) holds the resolved config, the choices, final metrics and the
stage reports: the report stage reads it without W&B.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from aloevision.artifacts import write_json_atomic

log = logging.getLogger(__name__)
SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.I)
RUN_RECORD = "run_record.json"


def scrub(obj: Any) -> Any:
    """Config without secrets (values of keys that look like credentials are replaced)."""
    if isinstance(obj, dict):
        return {k: ("***" if SECRET_KEY.search(str(k)) and v not in (None, "") else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if wandb_has_credentials() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"wandb.mode={mode!r}: use auto, online, offline or disabled")
    return mode


class Tracker:
    """W&B run + run record for one job. Use as a context manager; `finish()` closes the W&B run."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict,
        choices: dict[str, str],
        overrides: list[str],
        wandb_cfg: dict,
        group: str,
        job_type: str,
        name: str | None = None,
        enabled: bool = True,
    ):
        """`enabled=False` (non-main ranks of a multi-process job): no W&B run, no run record; rank 0 owns both."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record: dict[str, Any] = {
            "run_id": None,
            "name": name or self.run_dir.name,
            "group": group,
            "job_type": job_type,
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "choices": choices,
            "overrides": overrides,
            "config": scrub(config),
            "metrics": {},
            "stages": {},
            "paths": {"run_dir": str(self.run_dir)},
            # Where the job ran: SLURM ids trace a run back to its job (and array task) in sacct / submitit logs.
            "slurm": {k.lower(): os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                                          "SLURM_JOB_NODELIST") if k in os.environ},
            "wandb": {},
        }
        self.run = None
        if enabled:
            self._start_wandb(wandb_cfg, group, job_type, name)
        self._save()

    # ---- W&B -------------------------------------------------------------------------------------------------
    def _start_wandb(self, wcfg: dict, group: str, job_type: str, name: str | None) -> None:
        try:
            mode = resolve_mode(wcfg.get("mode", "auto"))
        except ValueError as e:
            log.warning("%s; W&B disabled for this job", e)
            mode = "disabled"
        self.record["wandb"]["mode"] = mode
        if mode == "disabled":
            return
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            wdir = Path(wcfg.get("dir") or self.run_dir)
            wdir.mkdir(parents=True, exist_ok=True)
            top = {k: v for k, v in self.record["choices"].items()}
            self.run = wandb.init(
                project=wcfg.get("project"),
                entity=wcfg.get("entity"),
                group=group,
                job_type=job_type,
                name=name or self.run_dir.name,
                tags=list(wcfg.get("tags") or []) + [f"{k}={v}" for k, v in sorted(top.items())],
                config={**top, "stage": job_type, "experiment": group, "cfg": self.record["config"]},
                dir=str(wdir),
                mode=mode,
                reinit="finish_previous",  # one W&B run per job, also inside one multirun process
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
            self.record["run_id"] = self.run.id
            self.record["wandb"].update({"id": self.run.id, "dir": str(Path(self.run.dir).parent)})
        except Exception as e:  # W&B must never block or fail the job
            log.warning("W&B could not start (%s); continuing with the run record only", e)
            self.run = None

    def _wandb(self, fn: str, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            getattr(self.run, fn)(*args, **kwargs)
        except Exception as e:
            log.warning("W&B %s failed (%s); continuing", fn, e)

    # ---- logging API -------------------------------------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._wandb("log", metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        """Final metrics: W&B summary and the run record."""
        self.record["metrics"].update(metrics)
        if self.run is not None:
            try:
                self.run.summary.update(metrics)
            except Exception as e:
                log.warning("W&B summary failed (%s)", e)
        self._save()

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})
        except Exception as e:
            log.warning("W&B table %s failed (%s)", key, e)

    def image(self, key: str, path: str | Path, caption: str | None = None) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)})
        except Exception as e:
            log.warning("W&B image %s failed (%s)", key, e)

    def stage_report(self, stage: str, report: dict[str, Any]) -> None:
        self.record["stages"][stage] = report
        self._save()

    def add_paths(self, **paths: str) -> None:
        self.record["paths"].update({k: str(v) for k, v in paths.items()})
        self._save()

    def finish(self, status: str = "finished") -> None:
        self.record["status"] = status
        self.record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._save()
        if self.run is not None:
            try:
                self.run.finish(exit_code=0 if status == "finished" else 1)
            except Exception as e:
                log.warning("W&B finish failed (%s)", e)
            self.run = None

    def _save(self) -> None:
        if not self.enabled:
            return
        write_json_atomic(self.run_dir / RUN_RECORD, self.record)
