"""Pre-flight: before any stage runs (and before W&B starts), check in seconds what the chosen stages will need, and
fail listing EVERY problem at once with the setting to change:

* model weights: `model.checkpoint` (and the scorer / judge models the stages load) present as a local folder or
  in the local Hugging Face cache; a Hub id that is not cached is an error when the Hub is off (HF_HUB_OFFLINE, the
  clusters' setting) and otherwise must answer a 5-second metadata request;
* datasets: every source of the mixture (for stages that read sources) and every benchmark (eval, leakage) present;
  the stages are the job's resolved stage graph (upstream included, since missing upstream artifacts are built in
  the job); with `upstream=require` only the target stages, whose upstream artifacts must already exist;
* GPUs: a GPU cluster config, the vLLM backend, or bf16 / flash-attention on a GPU need CUDA devices that can run
  them (`model.loading.placement` decides, as the loading code will), vLLM / bitsandbytes importable where used.

Without it a `model=qwen2vl_7b` run without weights spent 7 minutes (ingest, leakage, 5 Hub retries per sample)
before failing without naming `model.checkpoint` (issue 14). Paths under the generated demo data are built on
demand and never reported missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from aloevision.config import ConfigError

log = logging.getLogger(__name__)

READS_SOURCES = {"all", "ingest", "hash", "leakage", "score", "filter", "tokens", "images", "mix", "export", "adversarial"}
READS_BENCHMARKS = {"all", "hash", "leakage"}  # (the eval stage checks its own benchmarks: stages/eval.check)
LOADS_MODEL = {"all", "train", "eval"}  # the tokens stage needs only the processor: rebuilt offline for Qwen2-VL ids
SCORES = {"all", "score"}  # the score stage loads the scorer models (filter only reads their scores)
USES_GPU = {"all", "train", "eval", "score"}
HUB_TIMEOUT_S = 5
NOT_MODELS = ("self", "rules")  # judge specs that load nothing (evaluation.judges.judge_backends)


class PreflightError(ConfigError):
    """Everything a run would have failed on, listed at once."""


def _stages(cfg) -> set[str]:
    stage = str(cfg.stage)
    if stage == "plan":
        return {"plan"} if cfg.plan.stats else {"plan", "tokens"}  # without stats it ingests and counts tokens
    if stage == "train":
        return {"train", "mix", "tokens", "ingest"}  # the mixture it trains on (reused when cached)
    if stage != "all":
        return {stage}
    out = {"all"}
    if not cfg.filter.enabled:
        out -= {"score", "filter"}  # (the stage=all fallback without the graph)
    return out


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def model_problem(key: str, value: str | None) -> str | None:
    """Why the model at `value` (config key `key`) cannot be loaded here, or None."""
    if not value:
        return None
    p = Path(str(value))
    if str(value).startswith(("/", ".", "~")) or p.exists():
        if not (p.expanduser() / "config.json").is_file():
            return (f"{key}={value}: no model there (no config.json). Download it on a login node "
                    f"(`huggingface-cli download <hub id> --local-dir {value}`) or point {key} at the right folder")
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(str(value), "config.json"), str):
            return None
    except Exception:  # an invalid repo id
        return f"{key}={value}: neither a local folder nor a valid Hugging Face id"
    fix = (f"download it on a login node (`huggingface-cli download {value}`, into the HF cache this job reads: "
           f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}) or set {key}=<local folder>")
    if _hub_offline():
        return f"{key}={value}: not in the local Hugging Face cache and the Hub is off (HF_HUB_OFFLINE): {fix}"
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(str(value), timeout=HUB_TIMEOUT_S)
        return None  # reachable: from_pretrained downloads it
    except Exception as e:
        return f"{key}={value}: not cached and the Hub does not answer ({type(e).__name__}): {fix}"


def _dataset_problem(key: str, path: str, demo_dir: str) -> str | None:
    p = Path(str(path))
    if str(path).startswith(str(demo_dir)):
        return None  # generated on demand
    if str(path).startswith(("/", ".", "~")) or p.exists():
        if not p.exists():
            return f"{key}: {path} does not exist"
        if p.is_dir() and not any(p.iterdir()):
            return f"{key}: {path} is empty"
        return None
    if _hub_offline():  # a Hub dataset id on a machine without the Hub
        return f"{key}: {path} is a Hub id and the Hub is off (HF_HUB_OFFLINE): download it into a local folder"
    return None


def _models(cfg, stages: set[str]) -> Iterable[tuple[str, str | None]]:
    stage = str(cfg.stage)
    own = not ((stage == "train" and cfg.train.init_from) or (stage == "eval" and cfg.eval.model))
    scorer = stages & SCORES and cfg.filter.enabled
    sc = cfg.filter.scorer
    ppl_off = str(sc.ppl_model or "").strip().lower() == "none"  # scoring.backends.ppl_off: no perplexity model
    run_model_scores = (sc.backend != "rules" and not sc.tag_model) or (not ppl_off and not sc.ppl_model)
    if (stages & LOADS_MODEL and own) or (scorer and run_model_scores):
        yield "model.checkpoint", cfg.model.checkpoint
    if scorer:
        if sc.backend != "rules":
            yield "filter.scorer.tag_model", sc.tag_model
        if not ppl_off:
            yield "filter.scorer.ppl_model", sc.ppl_model
    if stages & {"all", "eval"}:
        for i, judge in enumerate(cfg.eval.judges or []):
            if judge not in NOT_MODELS:
                yield f"eval.judges[{i}]", judge


def _gpu_problems(cfg, stages: set[str], devices) -> list[str]:
    out: list[str] = []
    if not stages & USES_GPU:
        return out
    gpn = int(cfg.cluster.gpus_per_node or 0)
    if gpn and devices.count == 0:
        out.append(f"cluster={cfg.cluster.name} declares {gpn} GPUs per node but this process sees no CUDA device "
                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; is torch a CUDA build? "
                   "see docs/cluster.md, Install)")
    if stages & SCORES and cfg.filter.enabled and cfg.filter.scorer.backend == "vllm":
        if devices.count == 0:
            out.append("filter.scorer.backend=vllm needs CUDA GPUs; this machine has none (use "
                       "filter.scorer.backend=transformers here)")
        elif importlib.util.find_spec("vllm") is None:
            out.append("filter.scorer.backend=vllm: vLLM is not installed (pip install -e '.[vllm]')")
    if devices.count:
        from aloevision.model.loading import placement

        try:
            placement(cfg.model, devices, for_training=bool(stages & {"all", "train"}))
        except ConfigError as e:
            out.append(str(e))
        if stages & {"all", "train"} and "bnb" in str(cfg.model.recipe.optimizer) and \
                importlib.util.find_spec("bitsandbytes") is None:
            out.append(f"model.recipe.optimizer={cfg.model.recipe.optimizer} needs bitsandbytes "
                       "(pip install -e '.[gpu]')")
    return out


def check(cfg, stages: Iterable[str] | None = None, targets: Iterable[str] | None = None, *,
          devices=None, stage_problems: Iterable[str] = ()) -> dict[str, Any]:
    """Raise PreflightError listing every problem; return what was checked (for the log). `stages`: the job's
    resolved stages (pipeline.resolve), `targets` the ones asked for (pipeline.targets_of); without them, from
    cfg.stage alone. `stage_problems`: what the stages' own `check(cfg)` found (listed with the rest, so one run shows
    every problem at once)."""
    start = time.monotonic()
    names = set(stages) if stages is not None else _stages(cfg)
    if targets is not None and str(getattr(cfg, "upstream", "build")) == "require":
        names &= set(targets)  # upstream artifacts must already exist: only the targets will run
    problems: list[str] = list(stage_problems)
    seen = set()
    for key, value in _models(cfg, names):
        if value and value not in seen:
            seen.add(value)
            problem = model_problem(key, value)
            if problem:
                problems.append(problem)
    demo = str(cfg.paths.demo_dir)
    missing_sources = []
    if names & READS_SOURCES:
        for key, src in cfg.mixture.sources.items():
            problem = _dataset_problem(f"mixture.sources.{key}", src.path, demo)
            if problem:
                missing_sources.append(key)
                problems.append(problem)
    if missing_sources:
        problems.append("to run without them: " + " ".join(f"~mixture.sources.{k}" for k in missing_sources)
                        + " (and adjust mixture.targets), or fix paths.data_dir")
    # The images the hash stage reads: the leakage sets. A job that also evaluates leaves every benchmark to the eval
    # stage's own check, whose message names the benchmark, the expected files and the fetch command.
    if names & READS_BENCHMARKS and cfg.leakage.enabled and "eval" not in names:
        for key in cfg.leakage.eval_sets or []:
            bench = cfg.eval.benchmarks.get(key)
            problem = _dataset_problem(f"eval.benchmarks.{key}", bench.path, demo) if bench is not None else None
            if problem:
                problems.append(problem + f" (fetch it: python -m aloevision.evalsets.fetch "
                                          f"--data-dir {cfg.paths.data_dir}; or leave it out of leakage.eval_sets)")
    if devices is None and names & USES_GPU:
        from aloevision.model.loading import Devices

        devices = Devices.detect()
    if devices is not None:
        problems += _gpu_problems(cfg, names, devices)
    took = time.monotonic() - start
    if problems:
        raise PreflightError(f"pre-flight found {len(problems)} problem(s) for stage={cfg.stage} "
                             f"(checked in {took:.1f} s, nothing ran):\n  - " + "\n  - ".join(problems))
    log.info("pre-flight ok in %.1f s (%d stage(s), %d model(s) checked)", took, len(names), len(seen))
    return {"stages": sorted(names), "seconds": took, "models": sorted(seen)}
