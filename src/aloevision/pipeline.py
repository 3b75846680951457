"""Dispatch `cfg.stage`: one stage, or `all` (every implemented stage in order), inside one tracked run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from aloevision.artifacts import ArtifactStore
from aloevision.config import validate
from aloevision.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a stage gets: the config, its run folder, the tracker and the shared artifact cache."""

    cfg: DictConfig
    run_dir: Path
    tracker: Tracker
    store: ArtifactStore
    results: dict[str, Any] = field(default_factory=dict)  # stage name -> its artifact / result


@dataclass
class Stage:
    name: str
    run: Callable[[RunContext], Any]
    description: str


def _stages() -> dict[str, Stage]:
    # Imported lazily so `launch.py --help` stays fast.
    from aloevision.stages import eval as eval_stage
    from aloevision.stages import ingest, mix, report, train

    found = [
        Stage("ingest", ingest.run, "sources -> unified samples, cleaned; drops counted by reason"),
        Stage("mix", mix.run, "ready-to-train mixture (TRL messages + images) and its composition"),
        Stage("train", train.run, "SFT with TRL, loss on assistant tokens"),
        Stage("eval", eval_stage.run, "benchmarks with greedy decoding"),
        Stage("report", report.run, "tables from this run or from the runs of a sweep"),
    ]
    return {s.name: s for s in found}


# Order of `stage=all`. Stages that are not implemented yet are absent, never faked.
ALL_ORDER = ("ingest", "hash", "leakage", "score", "filter", "tokens", "mix", "train", "eval", "report")


def stages_for(cfg: DictConfig) -> list[Stage]:
    available = _stages()
    if cfg.stage == "all":
        return [available[n] for n in ALL_ORDER if n in available and _enabled(cfg, n)]
    if cfg.stage not in available:
        raise SystemExit(
            f"stage={cfg.stage} is not implemented yet; available: {', '.join(available)} (or stage=all)"
        )
    return [available[cfg.stage]]


def _enabled(cfg: DictConfig, name: str) -> bool:
    if name == "train":
        return cfg.train.enabled
    return True


def hydra_choices() -> tuple[dict[str, str], list[str]]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/") and v is not None}
        choices.pop("base_config", None)
        return choices, list(hc.overrides.task)
    except Exception:  # composed outside a Hydra app (tests)
        return {}, []


def run(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    choices, overrides = hydra_choices()
    tracker = Tracker(
        run_dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        choices=choices,
        overrides=overrides,
        wandb_cfg=OmegaConf.to_container(cfg.wandb, resolve=True),
        group=cfg.wandb.group or cfg.experiment,
        job_type=cfg.stage,
    )
    ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, store=ArtifactStore(cfg.paths.cache_dir))
    status = "failed"
    try:
        for stage in stages_for(cfg):
            log.info("== stage %s: %s", stage.name, stage.description)
            ctx.results[stage.name] = stage.run(ctx)
        status = "finished"
    finally:
        tracker.finish(status)
    return ctx.results


def set_cpu_threads(cfg: DictConfig) -> None:
    """Oversubscribed CPU threads made training steps ~20x slower on 2 cores: match threads to the cores we have."""
    n = str(max(1, int(cfg.cluster.cpus_per_task)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, n)
    try:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    except Exception:  # torch missing is reported by the stage that needs it
        pass
