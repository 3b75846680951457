"""Stage `tokens`: per-sample token statistics (total / loss / text / image) for the configured model's processor.

One cached artifact per source, keyed by that source's ingest artifact and the processor's identity, so every
mixture of a sweep (and a later `stage=plan`) shares them. Each artifact holds, streamed:

* `stats.jsonl`: one line per ingested sample, in ingest order: `{"id", "source", "total", "loss", "text", "image",
  "images"}` or `{"id", "source", "drop": reason, "detail"}` for samples that cannot be trained on (`too_many_tokens`:
  longer than `model.max_length`, the paper's 4096 rule; unreadable images, ...);
* `drops.jsonl` and `report.json` (counts per reason);
* `source_stats.json`: the per-source summary `aloevision.planning.load_stats` reads.

The run folder gets `source_stats.json` (all sources of this run, the file to point `plan.stats=` at later) and
`tokens/report.md`.

Sharding (SLURM job array, like ingest / hash / score): a dedicated `stage=tokens` job with `cluster.data_shards=n > 1`
running as array task `k` (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, or `cluster.data_shard=k`) counts only its
blocks of each source's samples (artifact `tokens_shard`); any later job without a shard index (e.g. `stage=mix`)
assembles them into the `tokens` artifact, byte-identical to an unsharded count, and removes the shards
(`aloevision.token_stats`). Under `stage=all` or in a sweep an array task is a sweep job, not a data shard.
"""

from __future__ import annotations

from typing import Any

from aloevision.ingestion import sample_folders
from aloevision.stage_report import write_table
from aloevision.token_stats import (STATS_FILE, ingest_sources, merged_stats, processor_identity, reference_sources,
                                    token_artifacts)


def _run_shard(ctx, folders: dict[str, str], k: int, n: int) -> dict[str, Any]:
    counted: list[str] = []
    arts = token_artifacts(ctx.store, ctx.cfg, folders, shard=(k, n), counted=counted)
    parts = {key: a.read_json("part.json") for key, a in arts.items()}
    ctx.tracker.stage_report("tokens", {"shard": [k, n], "parts": parts, "counted": sorted(set(counted))})
    return {"shard": [k, n], "parts": {key: str(a.path) for key, a in arts.items()}, "artifacts": {},
            "counted": sorted(set(counted))}


def run(ctx) -> dict[str, Any]:
    from aloevision.planning import write_stats
    from aloevision.sharding import shard_spec

    folders = sample_folders(ctx.results)
    # The reference mixture's other sources are measured too, so a later plan can compute the reference's steps.
    reference = {k: v for k, v in ingest_sources(ctx.store, ctx.cfg, reference_sources(ctx.cfg)).items()
                 if k not in folders}
    k, n = shard_spec(ctx.cfg, stage="tokens") if ctx.cfg.stage == "tokens" else (0, 1)
    if n > 1:
        return _run_shard(ctx, folders | reference, k, n)
    counted: list[str] = []  # sources tokenized in this job (not cached, not assembled from an array's shards)
    arts = token_artifacts(ctx.store, ctx.cfg, folders | reference, counted=counted)
    rows = merged_stats(arts)
    reports = {k: a.read_json("report.json") for k, a in arts.items()}
    stats_path = write_stats(ctx.run_dir / STATS_FILE, rows, model=ctx.cfg.model.name,
                             processor=processor_identity(ctx.cfg))
    drops = {k: ", ".join(f"{r}: {n}" for r, n in sorted(rep["drops"].items())) or None for k, rep in reports.items()}
    cols = ["source", "domain", "modality", "samples", "loss_tokens", "total_tokens", "text_tokens", "image_tokens",
            "dropped"]
    table = [[r["name"], r["domain"], r["modality"], r["samples"], r["loss_tokens"], r["total_tokens"],
              r["text_tokens"], r["image_tokens"], drops.get(r["name"])] for r in rows]
    md = write_table(ctx.tracker, "tokens/stats", ctx.run_dir / "tokens" / "report.md",
                     f"Token statistics (model={ctx.cfg.model.name}, max_length={ctx.cfg.model.max_length})", cols,
                     table, [f"Plan from these statistics later: `python launch.py stage=plan plan.stats={stats_path}`"])
    # counted: the sources tokenized in this job (empty when the cache or an array's shards had them all)
    ctx.tracker.stage_report("tokens", {"stats": str(stats_path), "reports": reports, "counted": sorted(set(counted))})
    ctx.tracker.add_paths(source_stats=stats_path, tokens_report=md)
    # "artifacts": the mixture's own folders (what mix trains on); "reference_artifacts": the reference mixture's
    # other sources (measured only for its step count).
    return {"stats": str(stats_path), "artifacts": {k: str(a.path) for k, a in arts.items() if k in folders},
            "reference_artifacts": {k: str(a.path) for k, a in arts.items() if k in reference}, "sources": rows,
            "reports": reports, "counted": sorted(set(counted))}
