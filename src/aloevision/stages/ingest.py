"""Stage `ingest`: every source of the mixture -> unified samples, cleaned (paper rules), capped.

One artifact per source (`aloevision.ingestion`), keyed by the source config and a stamp of its files, so every
mixture and ablation of a sweep shares them. With `cluster.data_shards=n` and a shard index the job ingests one shard
of every source; a later job without a shard index assembles them (identical to an unsharded ingest).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from aloevision import ingestion
from aloevision.stage_report import write_table
from aloevision.ingestion import assemble, build_part, ensure_demo_data, ingest_source, source_key

log = logging.getLogger(__name__)


def _shard_part(ctx, src, k: int, n: int):
    key = {**source_key(src, ctx.cfg.seed), "shard": [k, n], "block": ingestion.SHARD_BLOCK}
    return ctx.store.get_or_build(
        "ingest_shard", key, lambda tmp: build_part(src, ctx.cfg.seed, tmp, k, n, src.cap))


def _assembled(ctx, src, n: int):
    """The source's artifact. With data_shards=n > 1 it is assembled from the shard artifacts the array built
    (a missing shard is built here, with a warning); with no shard built at all, or n = 1, it is ingested
    directly (same result)."""
    key = source_key(src, ctx.cfg.seed)
    if n > 1:
        have = [(ctx.store.path_for("ingest_shard", {**key, "shard": [k, n], "block": ingestion.SHARD_BLOCK}) / "_SUCCESS")
                .is_file() for k in range(n)]
        if any(have):
            if not all(have):
                log.warning("ingest %s: shards %s of %d missing; building them in this job", src.name,
                            [k for k, h in enumerate(have) if not h], n)

            parts: list[Path] = []

            def build(tmp: Path) -> None:
                parts.extend(_shard_part(ctx, src, k, n).path for k in range(n))
                assemble(parts, src.cap, tmp, src.name)
                # what each shard did, kept: the shard artifacts (as large as the source) go once assembled
                (tmp / "shards.json").write_text(json.dumps(
                    [{"path": str(p), **json.loads((p / "part.json").read_text())} for p in parts]))

            art = ctx.store.get_or_build("ingest", key, build)
            for part in parts:  # built by this job: no later job reads a shard of an assembled source
                shutil.rmtree(part, ignore_errors=True)
            return art
    return ctx.store.get_or_build("ingest", key, lambda tmp: ingest_source(src, ctx.cfg.seed, tmp))


def run(ctx) -> dict[str, Any]:
    """`stage=ingest` with `cluster.data_shards=n` and a shard index (`cluster.data_shard` or the SLURM array task
    id) ingests only shard k of every source (artifact `ingest_shard`); any later job without a shard index
    assembles the shards' outputs (artifact `ingest`, identical to an unsharded ingest)."""
    from aloevision.sharding import shard_spec

    cfg = ctx.cfg
    ensure_demo_data(cfg)
    k, n = shard_spec(cfg, stage="ingest") if cfg.stage == "ingest" else (0, 1)
    if n > 1:
        return _run_shard(ctx, k, n)
    n_cfg = int(cfg.cluster.data_shards or 1)
    artifacts, reports = {}, {}
    for key, src in cfg.mixture.sources.items():
        art = _assembled(ctx, src, n_cfg)
        artifacts[key] = art
        reports[key] = art.read_json("report.json")
        log.info("ingest %s: %s rows in, %s kept%s", key, reports[key].get("rows_in"), reports[key]["rows_out"],
                 " (cached)" if art.cached else "")
    rows = [[k, r.get("rows_in"), r["rows_out"],
             ", ".join(f"{reason}: {n}" for reason, n in sorted(r.get("drops", {}).items())) or None]
            for k, r in reports.items()]
    examples = [f"**{k} / {reason}**: " + "; ".join(f"`{e.get('id')}` {e.get('detail', '')}" for e in ex)
                for k, r in reports.items() for reason, ex in sorted(r.get("examples", {}).items())]
    md = write_table(ctx.tracker, "ingest/report", ctx.run_dir / "ingest" / "report.md", "Ingest report",
                     ["source", "rows in", "rows out", "dropped (reason: count)"], rows, examples)
    ctx.tracker.stage_report("ingest", reports)
    ctx.tracker.add_paths(ingest_report=md)
    return {"artifacts": {k: str(a.path) for k, a in artifacts.items()}, "reports": reports}


def _run_shard(ctx, k: int, n: int) -> dict[str, Any]:
    parts, infos = {}, {}
    for key, src in ctx.cfg.mixture.sources.items():
        if (ctx.store.path_for("ingest", source_key(src, ctx.cfg.seed)) / "_SUCCESS").is_file():
            log.info("ingest %s: already assembled; shard %d/%d has nothing to do", key, k, n)
            continue
        art = _shard_part(ctx, src, k, n)
        parts[key] = str(art.path)
        infos[key] = art.read_json("part.json")
        log.info("ingest %s shard %d/%d: %s rows%s", key, k, n, infos[key]["rows"], " (cached)" if art.cached else "")
    ctx.tracker.stage_report("ingest", {"shard": [k, n], "parts": infos})
    return {"shard": [k, n], "parts": parts, "artifacts": {}}
