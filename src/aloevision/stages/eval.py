"""Stage `eval`: every configured benchmark scored by the evaluation engine (aloevision.evaluation.runner): the
multimodal sets in-process with VLMEvalKit's Qwen2-VL protocol (aloevision.evaluation.protocol), text MCQ groups
through lm-evaluation-harness, open-ended answers by the LLM judges; then HEART when enabled.

The model evaluated is, in order: the model this run trained, `eval.model` (a run folder, checkpoint or Hub id),
else the configured base model. Missing benchmark files stop the stage before the model is loaded (each named with
its expected path and the fetch command). Each benchmark's result is written as soon as it is done
(`eval/<key>.jsonl`, `eval/<key>.result.json`, `eval/results.json`, the W&B summary and the run record); a failing
benchmark is recorded with its error and the others go on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def model_under_test(ctx) -> str:
    from aloevision.model.checkpoints import resolve_init_from
    from aloevision.model.loading import checkpoint_path

    trained = (ctx.results.get("train") or {}).get("model")
    if trained:
        return trained
    if ctx.cfg.eval.model:
        return resolve_init_from(ctx.cfg.eval.model)
    return checkpoint_path(ctx.cfg.model, ctx.cfg.paths.cache_dir)


def _ensure_demo(cfg, benchmarks: dict) -> None:
    """The demo evaluation sets are generated data: build them when a benchmark reads from the demo folder."""
    demo_dir = str(cfg.paths.demo_dir)
    if any(str(b.get("path", "")).startswith(demo_dir) for b in benchmarks.values()):
        from aloevision.demo.generate import ensure_demo_data

        ensure_demo_data(demo_dir)


def run(ctx) -> dict[str, Any]:
    from aloevision.config import ConfigError
    from aloevision.evaluation.runner import Engine, plain, preflight
    from aloevision.model.loading import load_model
    from aloevision.model.processor import load_processor

    cfg = ctx.cfg
    ev = plain(cfg.eval)  # library code gets plain Python values, never OmegaConf nodes
    benchmarks = ev.get("benchmarks") or {}
    settings = {k: v for k, v in ev.items() if k not in ("benchmarks", "heart")}
    _ensure_demo(cfg, benchmarks)
    errors = preflight(benchmarks, settings)
    if errors:
        raise ConfigError("evaluation cannot start:\n  " + "\n  ".join(errors))

    from aloevision import distributed

    if distributed.detect().distributed:
        # Several ranks (srun / torchrun): shard the items instead of every rank evaluating everything. Ranks wait
        # for each other at every benchmark's gather, and rank 0 alone runs lm-eval, hence the long timeout.
        distributed.setup(init_process_group=True, timeout_s=6 * 3600)
    path = model_under_test(ctx)
    # Evaluation pixel bounds (VLMEvalKit's Qwen2-VL entry in eval=paper); unset: the model's own.
    processor = load_processor(path, min_pixels=int(ev.get("min_pixels") or cfg.model.min_pixels),
                               max_pixels=int(ev.get("max_pixels") or cfg.model.max_pixels),
                               trust_remote_code=bool(cfg.model.trust_remote_code))
    model = load_model(cfg.model, path).eval()
    out_dir = Path(ctx.run_dir) / "eval"

    def on_result(key: str, entry: dict, metrics: dict) -> None:
        ctx.tracker.summary({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        ctx.tracker.stage_report("eval", {"model": path, **engine.report})
        if entry.get("status") == "scored":
            log.info("eval %s: %s", key, {k: round(v, 2) for k, v in entry.get("metrics", {}).items()})

    def judge(key: str, bench: dict, items: list, preds: list) -> list:
        from aloevision.evaluation.judges import score_open

        results, report = score_open(items, preds, list(ev.get("judges") or []),
                                     backend=str(ev.get("judge_backend")), self_model=(model, processor),
                                     out_dir=out_dir, name=f"judges_{key}",
                                     labels_file=(bench.get("options") or {}).get("human_labels")
                                     or ev.get("labels_file"))
        ctx.tracker.stage_report(f"eval_judges_{key}", report)
        return results

    engine = Engine(benchmarks, settings, model=model, processor=processor, out_dir=out_dir, on_result=on_result,
                    judge=judge, seed=int(cfg.seed))
    report = engine.run()
    metrics = dict(report["metrics"])
    if (ev.get("heart") or {}).get("enabled") and engine.main:  # HEART is not sharded: rank 0 runs it
        from aloevision.evaluation.heart_eval import run_heart

        heart = {f"eval/{k}": v for k, v in run_heart(ctx, model, processor).items()}
        metrics.update(heart)
        ctx.tracker.summary(heart)
    if report["failed"]:
        log.error("eval: %d benchmark(s) failed: %s (errors in %s/results.json)", len(report["failed"]),
                  ", ".join(report["failed"]), out_dir)
    report = {"model": path, **report, "metrics": metrics}
    ctx.tracker.stage_report("eval", report)
    ctx.tracker.add_paths(eval=out_dir)
    return report
