"""The stage graph: every stage declares the upstream stages it needs for a config, and one resolver runs any
`stage=X` with everything X depends on.

An upstream stage runs through its own `run(ctx)`: its artifacts are cached in the store by the fingerprint of their
inputs, so an upstream built by an earlier job (a job array, another sweep job, yesterday's run) is reused and a
missing one is built here. With `upstream=require` (cluster jobs) a missing upstream artifact is an error naming the
command that builds it. `stage=all` is the same resolution for every enabled stage, in one job.

Stages never import one another: a stage reads its inputs from `ctx.results[<upstream name>]`, which the resolver
fills before the stage runs.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from aloevision import preflight
from aloevision.artifacts import ArtifactStore, MissingArtifact
from aloevision.config import ConfigError, validate
from aloevision.tracking import Tracker, close_tracker, start_tracker

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a stage gets: the config, its run folder, the tracker, the artifact store, and the results of the stages
    already resolved in this job (its upstream stages among them)."""

    cfg: DictConfig
    run_dir: Path
    tracker: Tracker
    store: ArtifactStore
    results: dict[str, Any] = field(default_factory=dict)  # stage name -> its result


def _when(flag: Callable[[DictConfig], bool], *stages: str) -> Callable[[DictConfig], tuple[str, ...]]:
    return lambda cfg: stages if flag(cfg) else ()


def _samples(cfg: DictConfig) -> tuple[str, ...]:
    """The stages that produce training samples: the ingested sources, and the AR set when it is built."""
    return ("ingest", "adversarial") if cfg.adversarial.enabled else ("ingest",)


@dataclass(frozen=True)
class StageNode:
    name: str
    module: str
    fn: str
    description: str
    needs: Callable[[DictConfig], tuple[str, ...]]  # upstream stages for this config (ablations remove edges)
    needs_doc: str  # the same rule in words, for docs and --help

    def run(self, ctx: RunContext) -> Any:
        return getattr(importlib.import_module(self.module), self.fn)(ctx)

    def check(self, cfg: DictConfig) -> None:
        """The stage module's `check(cfg)`, if it has one: config problems found before any stage of the job runs."""
        check = getattr(importlib.import_module(self.module), "check", None)
        if check is not None:
            check(cfg)


def _leak(cfg) -> bool:
    return bool(cfg.leakage.enabled)


def _filt(cfg) -> bool:
    return bool(cfg.filter.enabled)


GRAPH: dict[str, StageNode] = {n.name: n for n in (
    StageNode("plan", "aloevision.stages.plan", "run",
              "what a run will cost: samples, loss tokens, steps, GPUs, GPU-hours",
              lambda c: () if c.plan.stats else ("tokens",), "tokens (none with plan.stats=<file>)"),
    StageNode("ingest", "aloevision.stages.ingest", "run",
              "sources -> unified samples, cleaned; drops counted by reason", lambda c: (), "-"),
    StageNode("adversarial", "aloevision.stages.adversarial", "run",
              "the adversarial (AR) training set from FracAtlas", lambda c: (), "- (ingests FracAtlas itself)"),
    StageNode("hash", "aloevision.stages.hash", "run",
              "64-bit pHash of every training and evaluation image",
              lambda c: _samples(c) if _leak(c) else (), "ingest, adversarial (if enabled); none with leakage=off"),
    StageNode("leakage", "aloevision.stages.leakage", "run",
              "training samples whose images match evaluation images -> excluded.jsonl",
              _when(_leak, "hash"), "hash; none with leakage=off"),
    StageNode("score", "aloevision.stages.score", "run",
              "LVLM quality score + tags, answer perplexity",
              lambda c: _samples(c) if _filt(c) else (), "ingest, adversarial (if enabled); none with filter=none"),
    StageNode("filter", "aloevision.stages.filter", "run",
              "per-source thresholds on score and perplexity -> excluded.jsonl",
              lambda c: (("score",) + (("leakage",) if _leak(c) else ())) if _filt(c) else (),
              "score, leakage (if enabled); none with filter=none"),
    StageNode("tokens", "aloevision.stages.tokens", "run",
              "total / loss / text / image tokens per sample", _samples, "ingest, adversarial (if enabled)"),
    StageNode("images", "aloevision.stages.images", "run",
              "every training image once into the content-addressed image store; image keys per sample",
              _samples, "ingest, adversarial (if enabled)"),
    StageNode("mix", "aloevision.stages.mix", "run",
              "ready-to-train mixture (TRL messages + image-store keys) and its composition",
              lambda c: ("tokens", "images") + (("leakage",) if _leak(c) else ()) + (("filter",) if _filt(c) else ()),
              "tokens, images, leakage (if enabled), filter (if enabled)"),
    StageNode("export", "aloevision.stages.export", "run",
              "portable mixture: sharded parquet with the images embedded (plain datasets + TRL read it)",
              lambda c: ("mix",), "mix"),
    StageNode("train", "aloevision.stages.train", "run", "SFT with TRL, loss on assistant tokens",
              _when(lambda c: c.train.enabled, "mix"), "mix; none with train.enabled=false"),
    StageNode("eval", "aloevision.stages.eval", "run", "benchmarks with greedy decoding", lambda c: (),
              "- (evaluates this job's trained model, else eval.model, else the base model)"),
    StageNode("report", "aloevision.stages.report", "run", "tables from this run or from the runs of a sweep",
              lambda c: (), "- (reads run records)"),
)}

# What `stage=all` runs (each with its upstream closure), skipping the stages a config switches off.
ALL_ORDER = ("ingest", "leakage", "filter", "adversarial", "tokens", "mix", "train", "eval", "report")


def _enabled(cfg: DictConfig, name: str) -> bool:
    """Stages a config switches off are skipped by `stage=all` (the leakage / filtering ablations)."""
    if name == "train":
        return cfg.train.enabled
    if name in ("hash", "leakage"):
        return cfg.leakage.enabled
    if name in ("score", "filter"):
        return cfg.filter.enabled
    if name == "adversarial":
        return cfg.adversarial.enabled
    return True


def targets_of(cfg: DictConfig) -> list[str]:
    if cfg.stage == "all":
        return [n for n in ALL_ORDER if _enabled(cfg, n)]
    if cfg.stage not in GRAPH:
        raise ConfigError(f"stage={cfg.stage} is not a stage; available: {', '.join(GRAPH)} (or stage=all)")
    return [cfg.stage]


def resolve(cfg: DictConfig) -> list[str]:
    """Every stage this job runs, upstream first (a topological order of the targets' closure)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ConfigError(f"stage graph cycle: {' -> '.join(path + (name,))}")
        for up in GRAPH[name].needs(cfg):
            visit(up, path + (name,))
        order.append(name)

    for target in targets_of(cfg):
        visit(target, ())
    return order


def graph_markdown() -> str:
    """The graph as a Markdown table (docs/architecture.md is generated from it: `python -m aloevision.pipeline`)."""
    lines = ["| stage | needs (upstream) | what it does | module |", "|---|---|---|---|"]
    for n in GRAPH.values():
        lines.append(f"| `{n.name}` | {n.needs_doc} | {n.description} | `{n.module}.{n.fn}` |")
    return "\n".join(lines)


def hydra_choices() -> tuple[dict[str, str], list[str]]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/") and v is not None}
        choices.pop("base_config", None)
        return choices, list(hc.overrides.task)
    except Exception:  # composed outside a Hydra app (tests)
        return {}, []


def _build_command(stage: str, overrides: list[str]) -> str:
    kept = [o for o in overrides if not o.startswith(("stage=", "upstream=", "cluster.data_shard="))]
    return " ".join(["python launch.py", f"stage={stage}", *kept])


def run(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    order = resolve(cfg)  # a graph problem fails before anything is written
    # weights, datasets, GPUs and every stage's own check: every problem at once, in seconds, before W&B starts
    preflight.check(cfg, order, targets_of(cfg), stage_problems=stage_problems(cfg, order))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from aloevision.distributed import detect

    is_main = detect().is_main  # torchrun / srun / submitit ranks: rank 0 records the job
    if is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker = start_tracker(cfg, run_dir, resolve(cfg), enabled=is_main)  # name / group / job_type / tags
    ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, store=ArtifactStore(cfg.paths.cache_dir))
    error: BaseException | None = None
    try:
        execute(ctx, hydra_choices()[1])
    except BaseException as e:  # recorded as interrupted (Ctrl-C / SIGTERM) or failed, with the error
        error = e
        raise
    finally:
        close_tracker(tracker, error)
    return ctx.results


def stage_problems(cfg: DictConfig, order: list[str]) -> list[str]:
    """What the resolved stages' own `check(cfg)` functions refuse (their ConfigError messages)."""
    problems = []
    for name in order:
        try:
            GRAPH[name].check(cfg)
        except ConfigError as e:
            problems.append(f"stage {name}: {e}")
    return problems


def execute(ctx: RunContext, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run `ctx.cfg.stage` in this process with its upstream closure. Results already in `ctx.results` count as
    resolved (a test hands a stage fake or tiny upstream results this way); the others run in graph order."""
    cfg, store = ctx.cfg, ctx.store
    targets = set(targets_of(cfg))
    upstream_log: dict[str, dict[str, Any]] = {}
    order = resolve(cfg)
    for name in order:  # every stage's own config checks first: a bad batch size fails before ingest starts
        GRAPH[name].check(cfg)
    for name in order:
        if name in ctx.results:
            continue
        node = GRAPH[name]
        upstream = name not in targets
        ctx.store = store.read_only() if upstream and cfg.upstream == "require" else store
        before = len(store.touched)
        log.info("== stage %s%s: %s", name, " (upstream)" if upstream else "", node.description)
        try:
            ctx.results[name] = node.run(ctx)
        except MissingArtifact as e:
            raise ConfigError(
                f"upstream={cfg.upstream}: stage {name} (needed by stage={cfg.stage}) has no {e.stage} artifact "
                f"for this config in {store.root}. Build it first: `{_build_command(name, overrides or [])}` "
                f"(or run this job with upstream=build)") from None
        finally:
            ctx.store = store
        if upstream:
            touched = store.touched[before:]
            upstream_log[name] = {"reused": sum(t[2] for t in touched), "built": sum(not t[2] for t in touched),
                                  "artifacts": [str(t[1]) for t in touched]}
            log.info("upstream %s: %d artifact(s) reused, %d built", name, upstream_log[name]["reused"],
                     upstream_log[name]["built"])
    if upstream_log:
        ctx.tracker.stage_report("upstream", upstream_log)
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


if __name__ == "__main__":
    print(graph_markdown())
