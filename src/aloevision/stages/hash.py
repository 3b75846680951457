"""Stage `hash`: the 64-bit pHash of every training and evaluation image (the leakage stage matches them; engine:
aloevision.leakage).

`hash` computes the pHash (bit-identical to `imagehash.phash`) of every training image of the run's sources
(the ingest / adversarial results the stage graph resolved) and of every image of the evaluation sets named in `cfg.leakage.eval_sets`. Two caches
make sure no image is hashed twice:
- the content cache `<cache_dir>/phash/<library versions>/` (sha1 of the image bytes -> hash; lock-free parts, so
  parallel jobs and SLURM array tasks share it): a re-run, another mixture or another eval set only decodes images
  it has never seen;
- one artifact per training source folder and per evaluation set (`<cache_dir>/hash/<fingerprint>/`: `hashes.npy`,
  `images.jsonl` aligned with it, `errors.jsonl`, `report.json`): every job of a sweep (`+experiment=
  ablation_leakage`, radius sweeps) reuses them without even reading the images.

Sharding (SLURM job array): a dedicated `stage=hash` job with `cluster.data_shards=n > 1` running as array task `k`
(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, checked against SLURM_ARRAY_TASK_COUNT; or `cluster.data_shard=k` when
the schema has it) hashes only the images with `image_shard(ref, n) == k` (by image, not by sample: an image several
samples, sources or evaluation items share is decoded by one task) into the content cache, and builds no artifact. The `stage=leakage` job that
follows (or `stage=all`) then builds the artifacts with every image a cache hit (read + sha1, no decode), e.g.
`sbatch --array=0-63 ... --wrap "python launch.py stage=hash cluster=marenostrum5"`, then
`python launch.py stage=leakage cluster=marenostrum5`. Under `stage=all` or in a sweep an array task is a sweep job,
not a data shard, so it hashes whatever is missing. Without an array, `stage=hash` hashes everything with
`cluster.cpus_per_task` threads (the decoders and resize kernels release the GIL).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from aloevision.ingestion import sample_folders
from aloevision.leakage.items import eval_items, eval_set_names, train_items

log = logging.getLogger(__name__)
HASH_VERSION = "1"  # bump when what a hash artifact holds changes
PHASH_DIR = "phash"  # content cache, under cfg.paths.cache_dir
OUT_DIR = "leakage"  # report folder, under the run folder (beside the leakage stage's report)


# ---- sharding ----------------------------------------------------------------------------------------------------
def shard_spec(cfg, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(k, n): which shard of the hash work this job does (see aloevision.sharding)."""
    from aloevision.sharding import shard_spec as spec

    return spec(cfg, env, stage="hash")


# ---- hashing -----------------------------------------------------------------------------------------------------
def _split_reason(msg: str) -> tuple[str, str]:
    from aloevision.images import REASONS

    reason, _, detail = msg.partition(": ")
    return (reason, detail) if reason in REASONS else ("unreadable_image", msg)


def _hash_refs(ctx, cache, refs: list[Any], desc: str) -> tuple[np.ndarray, dict[int, tuple[str, str]], dict]:
    """Hash refs (a path repeated by several rows is read once). Returns hashes, {index: (reason, detail)} and
    counts: images, unique, computed (decoded + hashed now), from_cache, errors."""
    from aloevision.leakage.phash import hash_many

    uniq: dict[Any, int] = {}
    pos = np.empty(len(refs), np.int64)
    todo: list[Any] = []
    for i, r in enumerate(refs):
        if isinstance(r, str):
            j = uniq.setdefault(r, len(todo))
            if j == len(todo):
                todo.append(r)
        else:  # bytes: content duplicates are cache hits anyway
            j = len(todo)
            todo.append(r)
        pos[i] = j
    hits0 = cache.hits
    if todo:
        log.info("pHash %s: %d images (%d unique references)", desc, len(refs), len(todo))
    h, errs = hash_many(todo, workers=max(1, int(ctx.cfg.cluster.cpus_per_task)), progress=bool(todo), cache=cache,
                        fast=None if ctx.cfg.leakage.fast_hash else False)
    err_u = {j: _split_reason(msg) for j, msg in errs}
    errors = {i: err_u[int(j)] for i, j in enumerate(pos) if int(j) in err_u}
    from_cache = cache.hits - hits0
    counts = {"images": len(refs), "unique": len(todo), "computed": len(todo) - len(err_u) - from_cache,
              "from_cache": from_cache, "errors": len(errors)}
    return h[pos] if len(refs) else np.zeros(0, np.uint64), errors, counts


def _write_part(out: Path, hashes: np.ndarray, errors: dict[int, tuple[str, str]], rows: list[list], refs: list,
                counts: dict) -> None:
    ok = np.asarray([i for i in range(len(rows)) if i not in errors], np.int64)
    np.save(out / "hashes.npy", hashes[ok] if len(ok) else np.zeros(0, np.uint64))
    with open(out / "images.jsonl", "w") as f:  # aligned with hashes.npy
        for i in ok:
            f.write(json.dumps(rows[i]) + "\n")
    with open(out / "errors.jsonl", "w") as f:
        for i, (reason, detail) in sorted(errors.items()):
            ref = refs[i] if isinstance(refs[i], str) else "<bytes>"
            f.write(json.dumps({"row": rows[i], "ref": ref, "reason": reason, "detail": detail}) + "\n")
    by_reason = Counter(r for r, _ in errors.values())
    (out / "report.json").write_text(json.dumps({**counts, "errors_by_reason": dict(by_reason)}, indent=1))


def _build_train(ctx, cache, name: str, folder: str, out: Path) -> None:
    items = list(train_items(folder))
    refs = [r for _, _, r in items]
    h, errors, counts = _hash_refs(ctx, cache, refs, f"train {name}")
    counts["samples"] = len({sid for sid, _, _ in items})
    _write_part(out, h, errors, [[sid, j] for sid, j, _ in items], refs, counts)


def _build_eval(ctx, cache, name: str, out: Path) -> None:
    items = list(eval_items(ctx.cfg, name))
    refs = [r for _, r in items]
    h, errors, counts = _hash_refs(ctx, cache, refs, f"eval {name}")
    # Paths are kept for the gallery; bytes (TSV/parquet cells) are read again from the set for matched items only.
    _write_part(out, h, errors, [[iid, r if isinstance(r, str) else None] for iid, r in items], refs, counts)


def _open_cache(cfg):
    from aloevision.leakage.cache import PHashCache

    return PHashCache(Path(cfg.paths.cache_dir) / PHASH_DIR)


def _hash_all(ctx) -> dict[str, Any]:
    """Build (or reuse) every hash artifact of this run; a summary with per-part counts."""
    from aloevision.leakage.phash import version_tag
    from aloevision.utils.fingerprint import data_stamp

    cfg = ctx.cfg
    tag = version_tag()  # the same image hashes differently under another Pillow: never mix versions
    cache = _open_cache(cfg)
    parts: dict[str, dict[str, dict]] = {"train": {}, "eval": {}}
    for name, folder in sorted(sample_folders(ctx.results).items()):
        key = {"kind": "train", "samples": str(folder), "phash": tag, "version": HASH_VERSION}
        art = ctx.store.get_or_build("hash", key, lambda tmp, n=name, f=folder: _build_train(ctx, cache, n, f, tmp))
        parts["train"][name] = _part_summary(art)
    for name in eval_set_names(cfg):
        bench = OmegaConf.to_container(cfg.eval.benchmarks[name], resolve=True)
        # Only what decides the images: not max_samples (loaders ignore it here), the harness or the scoring kind.
        bench = {k: bench.get(k) for k in ("name", "loader", "path", "split", "options")}
        key = {"kind": "eval", "benchmark": bench, "stamp": data_stamp(bench["path"]), "phash": tag,
               "version": HASH_VERSION}
        art = ctx.store.get_or_build("hash", key, lambda tmp, n=name: _build_eval(ctx, cache, n, tmp))
        parts["eval"][name] = _part_summary(art)
    return {"phash_version": tag, "cache_dir": str(cache.dir), "shard": 0, "n_shards": 1, **parts,
            "totals": _totals(parts)}


def _part_summary(art) -> dict[str, Any]:
    rep = art.read_json("report.json")
    if art.cached:  # built by an earlier job: nothing was read or hashed now
        rep = {**rep, "computed": 0, "from_cache": 0, "from_artifact": rep["images"] - rep["errors"]}
    else:
        rep["from_artifact"] = 0
    return {"dir": str(art.path), "cached": art.cached, **rep}


def _totals(parts: dict[str, dict[str, dict]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, d in parts.items():
        t: Counter = Counter()
        reasons: Counter = Counter()
        for rep in d.values():
            t.update({k: rep.get(k, 0) for k in ("images", "computed", "from_cache", "from_artifact", "errors")})
            reasons.update(rep.get("errors_by_reason", {}))
        out[side] = {**dict(t), "errors_by_reason": dict(reasons)}
    out["computed"] = sum(out[s].get("computed", 0) for s in parts)
    return out


def _hash_shard(ctx, k: int, n: int) -> dict[str, Any]:
    """One array task: hash this shard's images into the content cache (no artifacts)."""
    from aloevision.leakage.phash import version_tag

    cfg = ctx.cfg
    cache = _open_cache(cfg)
    parts: dict[str, dict[str, dict]] = {"train": {}, "eval": {}}
    for name, folder in sorted(sample_folders(ctx.results).items()):
        refs = [r for _, _, r in train_items(folder, (k, n))]
        _, errors, counts = _hash_refs(ctx, cache, refs, f"train {name} shard {k}/{n}")
        parts["train"][name] = {**counts, "errors_by_reason": dict(Counter(r for r, _ in errors.values()))}
    for name in eval_set_names(cfg):
        refs = [r for _, r in eval_items(cfg, name, (k, n))]
        _, errors, counts = _hash_refs(ctx, cache, refs, f"eval {name} shard {k}/{n}")
        parts["eval"][name] = {**counts, "errors_by_reason": dict(Counter(r for r, _ in errors.values()))}
    return {"phash_version": version_tag(), "cache_dir": str(cache.dir), "shard": k, "n_shards": n, **parts,
            "totals": _totals(parts)}


def _write_hash_report(path: Path, s: dict[str, Any]) -> None:
    lines = ["# pHash report", "",
             f"- hasher: `{s['phash_version']}` (bit-identical to imagehash.phash); content cache `{s['cache_dir']}`",
             f"- shard {s['shard']} of {s['n_shards']}", "",
             "| side | part | images | unique refs | hashed now | content-cache hits | from artifact "
             "| unhashable (reason: n) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for side in ("train", "eval"):
        for name, r in s[side].items():
            why = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("errors_by_reason", {}).items())) or "-"
            lines.append(f"| {side} | {name} | {r['images']} | {r['unique']} | {r['computed']} | {r['from_cache']} | "
                         f"{r.get('from_artifact', 0)} | {why} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _log_hash(ctx, s: dict[str, Any]) -> None:
    t = s["totals"]
    ctx.tracker.summary({"hash/train_images": t["train"].get("images", 0),
                         "hash/eval_images": t["eval"].get("images", 0),
                         "hash/computed": t["computed"],
                         "hash/unhashable": t["train"].get("errors", 0) + t["eval"].get("errors", 0)})
    rows = [[side, name, r["images"], r["computed"], r["from_cache"], r.get("from_artifact", 0), r["errors"],
             json.dumps(r.get("errors_by_reason", {}))] for side in ("train", "eval") for name, r in s[side].items()]
    ctx.tracker.table("hash/report", ["side", "part", "images", "computed", "cache_hits", "from_artifact", "errors",
                                      "errors_by_reason"], rows)


def run(ctx) -> dict[str, Any]:
    """Stage `hash`. Sharded only as a dedicated `stage=hash` array job (see the module docstring)."""
    cfg = ctx.cfg
    if not cfg.leakage.enabled:
        log.info("hash: leakage=%s is disabled, nothing to hash", cfg.leakage.name)
        return {"skipped": True}
    k, n = shard_spec(cfg) if cfg.stage == "hash" else (0, 1)
    s = _hash_all(ctx) if n == 1 else _hash_shard(ctx, k, n)
    md = ctx.run_dir / OUT_DIR / ("hash_report.md" if n == 1 else f"hash_report_shard{k}of{n}.md")
    _write_hash_report(md, s)
    _log_hash(ctx, s)
    ctx.tracker.stage_report("hash", s)
    ctx.tracker.add_paths(hash_report=md)
    t = s["totals"]
    log.info("hash: %d training + %d evaluation images, %d hashed now, %d unhashable", t["train"].get("images", 0),
             t["eval"].get("images", 0), t["computed"], t["train"].get("errors", 0) + t["eval"].get("errors", 0))
    return s
