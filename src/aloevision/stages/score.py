"""Stage `score`: the semi-automatic quality filter's scores (paper section 3; engine: aloevision.scoring).

`score` scores every training sample whose source has a threshold (LVLM tags + 1-5 score, answer perplexity) into
the shared score store `<cache_dir>/scores/<scorer fingerprint>/`, which is append-only and resumable and keyed by
the scorer only (not by thresholds), so every job of a sweep reuses it (`+experiment=ablation_filtering` scores once).

Sharding (SLURM job array): a dedicated `stage=score` job with `cluster.data_shards=n > 1` running as array task `k`
(env SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, checked against SLURM_ARRAY_TASK_COUNT; or config
`cluster.data_shard=k` when the schema has it) scores only the samples with `shard_of(id, n) == k`. Sharding applies
to `stage=score` only: under `stage=all` an array task is a sweep job, not a data shard.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from aloevision.ingestion import iter_samples, sample_folders
from aloevision.schema import Sample

log = logging.getLogger(__name__)
SCORES_DIR = "scores"  # under cfg.paths.cache_dir
OUT_DIR = "filter"  # report folder, under the run folder (beside the filter stage's report)


# ---- sharding ----------------------------------------------------------------------------------------------------
def shard_spec(cfg, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(k, n): which shard of the score work this job does (see aloevision.sharding)."""
    from aloevision.sharding import shard_spec as spec

    return spec(cfg, env, stage="score")


# ---- scoring -----------------------------------------------------------------------------------------------------
def _open(ctx, shard: int, n_shards: int):
    from aloevision import scoring

    from aloevision.scoring.backends import ppl_off

    cfg = ctx.cfg
    sc = cfg.filter.scorer
    default_model = None
    tag_model_used = sc.backend != "rules"  # the rules backend tags without a model
    if (tag_model_used and not sc.tag_model) or (not ppl_off(sc) and not sc.ppl_model):
        # the run's model scores: build/locate it only when it is used (model-free: never)
        from aloevision.model.loading import checkpoint_path

        default_model = checkpoint_path(cfg.model, cfg.paths.cache_dir)
    return scoring.open_store(
        Path(cfg.paths.cache_dir) / SCORES_DIR, sc, shard=shard, n_shards=n_shards, default_model=default_model,
        max_length=int(cfg.model.max_length), min_pixels=int(cfg.model.min_pixels),
        max_pixels=int(cfg.model.max_pixels),
    )


def check(cfg) -> None:
    """Config problems found before any stage of the job runs (pre-flight lists them with the others)."""
    if cfg.filter.enabled:
        check_perplexity_off(cfg.filter)


def check_perplexity_off(filter_cfg) -> None:
    """With perplexity off (`filter.scorer.ppl_model=none`), a threshold on perplexity could only drop every sample
    as missing_perplexity: refuse the config, naming the entries, before anything runs."""
    from aloevision.config import ConfigError
    from aloevision.scoring.backends import ppl_off
    from aloevision.scoring.thresholds import perplexity_thresholds

    if not ppl_off(filter_cfg.scorer):
        return
    bounds = perplexity_thresholds(filter_cfg)
    if bounds:
        raise ConfigError(
            f"filter.scorer.ppl_model=none switches perplexity off, but perplexity thresholds are set: "
            f"{', '.join(bounds)}. Set them to null (e.g. {bounds[0].split('=')[0]}=null), or use filter=model_free "
            "(rules tags, the paper's score thresholds, no perplexity) for a model-free dry run.")


def _training_samples(ctx) -> Iterator[Sample]:
    for _, folder in sorted(sample_folders(ctx.results).items()):
        yield from iter_samples(folder)


def _count_lines(ctx) -> int:
    n = 0
    for folder in sample_folders(ctx.results).values():
        with open(Path(folder) / "samples.jsonl", "rb") as fh:
            n += sum(1 for _ in fh)
    return n


def _score(ctx, shard: int, n_shards: int) -> dict[str, Any]:
    """Score what the store lacks (of this shard); a summary with the model-call counts."""
    from aloevision import scoring
    from aloevision.scoring.backends import PPL_OFF, PPL_OFF_FAILURE, RULES_TAGGER
    from aloevision.utils.locks import file_lock

    cfg = ctx.cfg
    store, backend = _open(ctx, shard, n_shards)
    needs: dict[str, bool] = {}
    skipped: Counter = Counter()
    computed: list[int] = [0]

    def wanted(bar) -> Iterator[Sample]:
        for s in _training_samples(ctx):
            bar.update(1)
            if s.source not in needs:
                needs[s.source] = scoring.needs_scoring(s.source, cfg.filter)
            if needs[s.source]:
                yield s
            else:
                skipped[s.source] += 1

    def on_batch(records) -> None:
        if not ctx.store.can_build:  # upstream=require: the score array should have scored every sample
            from aloevision.artifacts import MissingArtifact

            raise MissingArtifact("score", store.dir)
        computed[0] += len(records)
        ctx.tracker.log({"score/computed": computed[0], "score/model_calls": sum(backend.calls.values())})

    parse_failures: Counter = Counter()
    ppl_failures: Counter = Counter()
    oov: Counter = Counter()
    n_records = 0
    # One scorer per shard at a time: parallel sweep jobs wait here, then find the samples cached (no double work).
    with file_lock(store.dir.parent / f".{store.dir.name}.{shard}-of-{n_shards}.lock"):
        store.reload()  # records another job wrote while we waited
        with tqdm(total=_count_lines(ctx), desc=f"score shard {shard}/{n_shards}", unit=" samples") as bar:
            for _, rec in scoring.score_samples(wanted(bar), cfg.filter.scorer, store, backend=backend,
                                                on_batch=on_batch):
                n_records += 1
                if rec.parse_failure:
                    parse_failures[rec.parse_failure] += 1
                if rec.ppl_failure and rec.ppl_failure != PPL_OFF_FAILURE:  # off by config is no failure
                    ppl_failures[rec.ppl_failure] += 1
                for field, tags in rec.oov.items():
                    oov[field] += len(tags)
    summary = {
        "store": str(store.dir),
        "fingerprint": store.fingerprint,
        "shard": shard,
        "n_shards": n_shards,
        "backend": cfg.filter.scorer.backend,
        "tag_model": backend.tag_model,
        "ppl_model": backend.ppl_model,
        "perplexity": "off" if backend.ppl_model == PPL_OFF else "on",
        "model_free": backend.tag_model == RULES_TAGGER and backend.ppl_model == PPL_OFF,
        "samples": n_records,  # of this shard, in sources with thresholds
        "computed": computed[0],
        "cached": n_records - computed[0],
        "model_calls": dict(backend.calls),
        "model_calls_total": int(sum(backend.calls.values())),
        "parse_failures": dict(parse_failures),
        "ppl_failures": dict(ppl_failures),
        "unknown_tags": dict(oov),
        "torn_lines": store.torn_lines,
        "not_scored_sources": dict(skipped),  # sources without any threshold
    }
    log.info("score: %d samples (%d computed, %d cached), %d model calls, parse failures %s",
             n_records, computed[0], n_records - computed[0], summary["model_calls_total"], dict(parse_failures))
    summary["throughput_file"] = str(scoring.backends.write_throughput(backend, ctx.run_dir))  # plan.measured reads it
    return summary


def _write_score_report(out: Path, s: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "score_report.json").write_text(json.dumps(s, indent=1))
    lines = [
        "# Score report", "",
        f"- scorer: `{s['backend']}` tags `{s['tag_model']}`, perplexity `{s['ppl_model']}`"
        + (" (model-free: no model loaded)" if s.get("model_free") else ""),
        f"- store: `{s['store']}` (shard {s['shard']} of {s['n_shards']})",
        f"- samples: {s['samples']} ({s['computed']} computed, {s['cached']} from the cache); "
        f"model calls: {s['model_calls']}",
        f"- parse failures: {s['parse_failures'] or 'none'}; perplexity failures: {s['ppl_failures'] or 'none'}",
        f"- out-of-vocabulary tags dropped: {s['unknown_tags'] or 'none'}",
        f"- not scored (no threshold applies): {s['not_scored_sources'] or 'none'}",
    ]
    path = out / "score_report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _log_score(ctx, s: dict[str, Any], stage: str) -> None:
    ctx.tracker.summary({
        f"{stage}/samples": s["samples"], f"{stage}/computed": s["computed"], f"{stage}/cached": s["cached"],
        f"{stage}/model_calls": s["model_calls_total"],
        f"{stage}/parse_failures": sum(s["parse_failures"].values()),
        f"{stage}/unknown_tags": sum(s["unknown_tags"].values()),
    })


def run(ctx) -> dict[str, Any]:
    """Stage `score`. Sharded only as a dedicated `stage=score` array job (see the module docstring)."""
    cfg = ctx.cfg
    if not cfg.filter.enabled:
        log.info("score: filter=%s is disabled, nothing to score", cfg.filter.name)
        return {"skipped": True}
    check_perplexity_off(cfg.filter)
    shard, n_shards = shard_spec(cfg) if cfg.stage == "score" else (0, 1)
    s = _score(ctx, shard, n_shards)
    md = _write_score_report(ctx.run_dir / OUT_DIR, s)
    _log_score(ctx, s, "score")
    ctx.tracker.stage_report("score", s)
    ctx.tracker.add_paths(score_report=md, score_store=s["store"])
    return s
