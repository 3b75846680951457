"""Stage `plan`: what a run will cost (samples, loss tokens per category, steps, epochs, GPUs, GPU-hours) from
per-source token statistics alone.

`plan.stats=<csv|json>` plans without touching any data: the paper's Table 1
(`src/aloevision/data/paper_table1.csv`) or the `source_stats.json` a previous run's tokens stage wrote (in its run
folder). Without `plan.stats` the stats are measured on this run's data (ingest + tokens, both cached).
"""

from __future__ import annotations

from typing import Any

from aloevision.planning import plan_training


def check_batch(cfg) -> None:
    """The global-batch arithmetic, before anything runs (names the three factors when they disagree)."""
    t = cfg.train
    plan_training(cfg.model.recipe.global_batch_size, cfg.model.recipe, cfg.cluster,
                  micro_batch_size=t.micro_batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
                  world_size=t.world_size)


check = check_batch  # run by the stage graph before any stage of the job


def run(ctx) -> dict[str, Any]:
    from aloevision.planning import run_plan

    cfg = ctx.cfg
    check_batch(cfg)
    stats_path = None
    if not cfg.plan.stats:  # measured on this run's data: the graph resolved the tokens stage before this one
        stats_path = ctx.results["tokens"]["stats"]
    from aloevision.mixture import mixture_with_built_sources

    plan = run_plan(cfg, ctx.run_dir, stats_path=stats_path, mixture=mixture_with_built_sources(cfg, ctx.results))
    d = plan.to_dict()
    cols = ["source", "category", "fraction", "samples", "loss_tokens", "share", "requested_share"]
    ctx.tracker.table("plan/sources", cols, [[s["label"], s["category"], s["fraction"], s["samples"],
                                              s["loss_tokens"], s["share"], s["requested_share"]] for s in d["sources"]])
    tr = d.get("training") or {}
    ctx.tracker.summary({f"plan/{k}": tr[k] for k in ("total_steps", "epochs", "steps_per_epoch", "gpus", "nodes",
                                                      "gpu_hours") if tr.get(k) is not None}
                        | {"plan/samples": d["samples"], "plan/loss_tokens": d["loss_tokens"]})
    # What every GPU stage costs (GPU-hours, wall time, the throughput assumed and its source) and whether the
    # training recipe fits a GPU (planning.price_stages / recipe_memory).
    ctx.tracker.summary({f"plan/gpu_hours/{c['stage']}": c["gpu_hours"] for c in d.get("costs", [])
                         if c.get("gpu_hours") is not None}
                        | {f"plan/memory_gib/{m['basis'].split(':')[0]}": m["total_gib"] for m in d.get("memory", [])})
    ctx.tracker.stage_report("plan", {"plan": str(ctx.run_dir / "plan.json"), "stats": d["stats"].get("path"),
                                      "training": tr, "costs": d.get("costs", []), "memory": d.get("memory", [])})
    ctx.tracker.add_paths(plan=ctx.run_dir / "plan.json")
    return d
