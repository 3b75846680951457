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


# Every stage: (module, function, what it does). A module that does not exist yet is simply not offered (never
# faked); `stage=all` runs the available ones in ALL_ORDER.
STAGE_TABLE = {
    "plan": ("aloevision.stages.plan", "run", "what a run will cost: samples, loss tokens, steps, GPUs, GPU-hours"),
    "ingest": ("aloevision.stages.ingest", "run", "sources -> unified samples, cleaned; drops counted by reason"),
    "hash": ("aloevision.stages.leakage", "run_hash", "64-bit pHash of every training and evaluation image"),
    "leakage": ("aloevision.stages.leakage", "run", "training samples whose images match evaluation images"),
    "score": ("aloevision.stages.filtering", "run_score", "LVLM quality score + tags, answer perplexity"),
    "filter": ("aloevision.stages.filtering", "run", "per-source thresholds on score and perplexity"),
    "tokens": ("aloevision.stages.tokens", "run", "total / loss / text / image tokens per sample"),
    "mix": ("aloevision.stages.mix", "run", "ready-to-train mixture (TRL messages + images) and its composition"),
    "adversarial": ("aloevision.stages.adversarial", "run", "the adversarial (AR) training set from FracAtlas"),
    "train": ("aloevision.stages.train", "run", "SFT with TRL, loss on assistant tokens"),
    "eval": ("aloevision.stages.eval", "run", "benchmarks with greedy decoding"),
    "report": ("aloevision.stages.report", "run", "tables from this run or from the runs of a sweep"),
}


def _stages() -> dict[str, Stage]:
    import importlib

    found = {}
    for name, (module, fn, description) in STAGE_TABLE.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a real import error inside an existing stage must surface
                raise
            continue
        if hasattr(mod, fn):
            found[name] = Stage(name, getattr(mod, fn), description)
    return found


# Order of `stage=all`. `hash` runs inside `leakage`, `score` inside `filter`, `plan` inside `mix`.
ALL_ORDER = ("ingest", "leakage", "filter", "adversarial", "tokens", "mix", "train", "eval", "report")


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
    """Stages a config switches off are skipped by `stage=all` (the leakage / filtering ablations)."""
    if name == "train":
        return cfg.train.enabled
    if name == "leakage":
        return cfg.leakage.enabled
    if name in ("score", "filter"):
        return cfg.filter.enabled
    if name == "adversarial":
        return cfg.adversarial.enabled
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
    from aloevision.distributed import detect

    is_main = detect().is_main  # torchrun / srun / submitit ranks: rank 0 records the job
    if is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    choices, overrides = hydra_choices()
    tracker = Tracker(
        run_dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        choices=choices,
        overrides=overrides,
        wandb_cfg=OmegaConf.to_container(cfg.wandb, resolve=True),
        # A report run files itself under the group it reports on (its table sits beside the runs in W&B).
        group=cfg.report.group if cfg.stage == "report" and cfg.report.group else cfg.group,
        job_type=cfg.stage,
        enabled=is_main,
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
