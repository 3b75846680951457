"""Stages `hash` and `leakage`: evaluation-leakage control (paper: training samples whose image has the same 64-bit
pHash as an evaluation image are removed; engine: aloevision.leakage).

`hash` computes the pHash (bit-identical to `imagehash.phash`) of every training image of the run's sources
(`ingest.training_artifacts`) and of every image of the evaluation sets named in `cfg.leakage.eval_sets`. Two caches
make sure no image is hashed twice:
- the content cache `<cache_dir>/phash/<library versions>/` (sha1 of the image bytes -> hash; lock-free parts, so
  parallel jobs and SLURM array tasks share it): a re-run, another mixture or another eval set only decodes images
  it has never seen;
- one artifact per training source folder and per evaluation set (`<cache_dir>/hash/<fingerprint>/`: `hashes.npy`,
  `images.jsonl` aligned with it, `errors.jsonl`, `report.json`): every job of a sweep (`+experiment=
  ablation_leakage`, radius sweeps) reuses them without even reading the images.

Sharding (SLURM job array): a dedicated `stage=hash` job with `cluster.data_shards=n > 1` running as array task `k`
(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, checked against SLURM_ARRAY_TASK_COUNT; or `cluster.data_shard=k` when
the schema has it) hashes only the training samples with `shard_of(sample_id, n) == k` and the eval images with
`shard_of("<set>/<item id>", n) == k` into the content cache, and builds no artifact. The `stage=leakage` job that
follows (or `stage=all`) then builds the artifacts with every image a cache hit (read + sha1, no decode), e.g.
`sbatch --array=0-63 ... --wrap "python launch.py stage=hash cluster=marenostrum5"`, then
`python launch.py stage=leakage cluster=marenostrum5`. Under `stage=all` or in a sweep an array task is a sweep job,
not a data shard, so it hashes whatever is missing. Without an array, `stage=hash` hashes everything with
`cluster.cpus_per_task` threads (the decoders and resize kernels release the GIL).

`leakage` hashes (unless `hash` ran unsharded in this job), matches training against evaluation hashes within
`cfg.leakage.radius` bits (0 = the paper's exact match), and removes every sample with ANY matching image. A
training sample whose image cannot be hashed (corrupt, missing) cannot be cleared, so it is removed too and counted
by reason (ingest normally drops such samples first). It writes `<run_dir>/leakage/`: `leakage_report.md`,
`leakage_report.json` (every pair), `leakage_gallery.png`/`.html` (side-by-side pairs), and logs them to W&B.
`leakage=off` (enabled false) keeps every sample: `stage=all` skips the stage and `stage=leakage` returns no ids.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from omegaconf import OmegaConf

from aloevision.config import ConfigError
from aloevision.ingestion import iter_samples, sample_folders

log = logging.getLogger(__name__)
HASH_VERSION = "1"  # bump when what a hash artifact holds changes
LEAKAGE_VERSION = "1"  # bump when what a leakage decision artifact holds changes
PHASH_DIR = "phash"  # content cache, under cfg.paths.cache_dir
OUT_DIR = "leakage"  # report folder, under the run folder
GALLERY_PAIRS = 64
WANDB_ROWS = 5000


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


def _train_items(folder: str, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, int, Any]]:
    from aloevision.scoring.store import shard_of

    k, n = shard
    for s in iter_samples(folder):
        if n > 1 and shard_of(s.id, n) != k:
            continue
        for j, ref in enumerate(s.images):
            yield s.id, j, ref


def _eval_items(cfg, name: str, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, Any]]:
    from aloevision.evalsets import iter_eval_images
    from aloevision.scoring.store import shard_of

    k, n = shard
    bench = cfg.eval.benchmarks[name]
    try:
        for item_id, ref in iter_eval_images(bench):
            if n > 1 and shard_of(f"{name}/{item_id}", n) != k:
                continue
            yield str(item_id), ref
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ConfigError(f"leakage: evaluation set {name!r} cannot be read at {bench.path} ({e})") from e


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
    items = list(_train_items(folder))
    refs = [r for _, _, r in items]
    h, errors, counts = _hash_refs(ctx, cache, refs, f"train {name}")
    counts["samples"] = len({sid for sid, _, _ in items})
    _write_part(out, h, errors, [[sid, j] for sid, j, _ in items], refs, counts)


def _build_eval(ctx, cache, name: str, out: Path) -> None:
    items = list(_eval_items(ctx.cfg, name))
    refs = [r for _, r in items]
    h, errors, counts = _hash_refs(ctx, cache, refs, f"eval {name}")
    # Paths are kept for the gallery; bytes (TSV/parquet cells) are read again from the set for matched items only.
    _write_part(out, h, errors, [[iid, r if isinstance(r, str) else None] for iid, r in items], refs, counts)


def _open_cache(cfg):
    from aloevision.leakage.cache import PHashCache

    return PHashCache(Path(cfg.paths.cache_dir) / PHASH_DIR)


def _eval_set_names(cfg) -> list[str]:
    names = list(cfg.leakage.eval_sets or [])
    unknown = [n for n in names if n not in cfg.eval.benchmarks]
    if unknown:
        raise ConfigError(f"leakage.eval_sets names {unknown}, not benchmarks of eval={cfg.eval.name} "
                          f"(known: {list(cfg.eval.benchmarks)})")
    return names


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
    for name in _eval_set_names(cfg):
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
        refs = [r for _, _, r in _train_items(folder, (k, n))]
        _, errors, counts = _hash_refs(ctx, cache, refs, f"train {name} shard {k}/{n}")
        parts["train"][name] = {**counts, "errors_by_reason": dict(Counter(r for r, _ in errors.values()))}
    for name in _eval_set_names(cfg):
        refs = [r for _, r in _eval_items(cfg, name, (k, n))]
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


def run_hash(ctx) -> dict[str, Any]:
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


# ---- matching ----------------------------------------------------------------------------------------------------
def _load_part(d: str) -> tuple[np.ndarray, list[list], list[dict]]:
    p = Path(d)
    hashes = np.load(p / "hashes.npy")
    with open(p / "images.jsonl") as f:
        rows = [json.loads(line) for line in f]
    with open(p / "errors.jsonl") as f:
        errors = [json.loads(line) for line in f]
    if len(rows) != len(hashes):
        raise RuntimeError(f"hash artifact {p} is inconsistent ({len(rows)} rows, {len(hashes)} hashes)")
    return hashes, rows, errors


def _concat(parts: dict[str, dict]) -> tuple[np.ndarray, np.ndarray, list[str], list[list], dict[str, list[dict]]]:
    names = sorted(parts)
    hs, owner, rows, errors = [], [], [], {}
    for i, name in enumerate(names):
        h, r, e = _load_part(parts[name]["dir"])
        hs.append(h)
        owner.append(np.full(len(h), i, np.int32))
        rows += r
        errors[name] = e
    cat = np.concatenate(hs) if hs else np.zeros(0, np.uint64)
    return cat, (np.concatenate(owner) if owner else np.zeros(0, np.int32)), names, rows, errors


def _train_refs(folder: str, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    return {(sid, j): ref for sid, j, ref in _train_items(folder) if (sid, j) in wanted}


def _eval_refs(cfg, name: str, wanted: set[str]) -> dict[str, Any]:
    out = {}
    for iid, ref in _eval_items(cfg, name):
        if iid in wanted:
            out.setdefault(iid, ref)
            if len(out) == len(wanted):
                break
    return out


def run(ctx) -> dict[str, Any]:
    """Stage `leakage`: the ids of training samples with an image within `leakage.radius` of an evaluation image."""
    cfg = ctx.cfg
    if not cfg.leakage.enabled:
        log.info("leakage: leakage=%s keeps every sample (ablation)", cfg.leakage.name)
        return {"skipped": True, "excluded_ids": []}
    radius = int(cfg.leakage.radius)
    hashed = ctx.results["hash"]  # resolved upstream by the stage graph: unsharded, every part built
    # The decisions are an artifact of the hash artifacts and the radius: any later job (mix, train) reuses them.
    key = {side: {n: Path(p["dir"]).name for n, p in sorted(hashed[side].items())} for side in ("train", "eval")}
    key.update(radius=radius, phash=hashed["phash_version"], version=LEAKAGE_VERSION)
    art = ctx.store.get_or_build("leakage", key, lambda tmp: _decide(ctx, hashed, radius, Path(tmp)))
    out_dir = ctx.run_dir / OUT_DIR
    shutil.copytree(art.path, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("_SUCCESS", "key.json"))
    report = json.loads((out_dir / "leakage_report.json").read_text())
    pairs = report["all_pairs"]
    gallery = {k: out_dir / v for k, v in report["gallery"].items()}
    report["gallery"] = {k: str(v) for k, v in gallery.items()}
    md = out_dir / "leakage_report.md"
    _log(ctx, report, pairs, gallery)
    stage_report = {k: v for k, v in report.items() if k not in ("all_pairs", "leaked_ids", "unhashable_ids")}
    stage_report.update(artifact=str(art.path), cached=art.cached)
    ctx.tracker.stage_report("leakage", stage_report)
    ctx.tracker.add_paths(leakage_report=md, leakage_gallery=gallery["png"])
    leaked, unhashable_ids = report["leaked_ids"], report["unhashable_ids"]
    log.info("leakage: radius %d, %d pairs, %d of %d training samples leaked, %d unhashable removed%s", radius,
             len(pairs), len(leaked), report["train_samples"], len(unhashable_ids), " (cached)" if art.cached else "")
    return {**stage_report, "excluded_ids": leaked + unhashable_ids, "leaked_ids": leaked,
            "unhashable_ids": unhashable_ids, "excluded": str(art.path / "excluded.jsonl"), "report": str(md)}


def _decide(ctx, hashed: dict, radius: int, out_dir: Path) -> None:
    """Match the training hashes against the evaluation hashes; write the report, the gallery and `excluded.jsonl`
    (one `{"id", "reason"}` per removed training sample: `leaked` or `unhashable`) into ``out_dir``."""
    from aloevision.leakage.match import match
    from aloevision.leakage.phash import to_hex

    cfg = ctx.cfg
    th, t_owner, t_names, t_rows, t_errors = _concat(hashed["train"])
    eh, e_owner, e_names, e_rows, e_errors = _concat(hashed["eval"])
    m, mstats = match(th, eh, radius, workers=max(1, int(cfg.cluster.cpus_per_task)), return_stats=True)

    # A sample is leaked if ANY of its images matches; aggregate per (training source, evaluation set).
    pairs = []
    groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"samples": set(), "train_images": set(), "eval_images": set(), "eval_items": set(), "pairs": 0,
                 "distances": Counter()})
    for ti, ei, d in zip(m["train_idx"].tolist(), m["eval_idx"].tolist(), m["distance"].tolist()):
        src, ev = t_names[t_owner[ti]], e_names[e_owner[ei]]
        sid, j = t_rows[ti]
        iid, eref = e_rows[ei]
        eimg = eref if eref is not None else f"{ev}/{iid}"  # rows of one set often share an image file
        g = groups[(src, ev)]
        g["samples"].add(sid)
        g["train_images"].add((sid, j))
        g["eval_images"].add(eimg)
        g["eval_items"].add(iid)
        g["pairs"] += 1
        g["distances"][int(d)] += 1
        pairs.append({"train_source": src, "train_id": sid, "image": j, "eval_set": ev, "eval_id": iid,
                      "eval_image": eimg, "distance": int(d), "train_hash": to_hex(th[ti]),
                      "eval_hash": to_hex(eh[ei])})
    pairs.sort(key=lambda p: (p["distance"], p["train_source"], p["train_id"], p["eval_set"], p["eval_id"]))
    leaked = sorted({p["train_id"] for p in pairs})
    unhashable: dict[str, list[dict]] = {src: e for src, e in t_errors.items() if e}
    unhashable_ids = sorted({e["row"][0] for errs in unhashable.values() for e in errs} - set(leaked))
    n_train_samples = sum(int(r.get("samples", 0)) for r in hashed["train"].values())

    gallery = _gallery(ctx, hashed, pairs, out_dir)
    by_group = [{"train_source": s, "eval_set": e, "samples": len(g["samples"]), "train_images": len(g["train_images"]),
                 "eval_images": len(g["eval_images"]), "eval_items": len(g["eval_items"]), "pairs": g["pairs"],
                 "distances": {str(k): v for k, v in sorted(g["distances"].items())}}
                for (s, e), g in sorted(groups.items())]
    report = {
        "radius": radius, "phash_version": hashed["phash_version"], "match": _stats_dict(mstats),
        "train_images": int(len(th)), "train_samples": n_train_samples, "eval_images": int(len(eh)),
        "leaked_samples": len(leaked), "leaked_fraction": len(leaked) / n_train_samples if n_train_samples else 0.0,
        "pairs": len(pairs), "by_source_and_set": by_group,
        "unhashable_train": {s: _reasons(e) for s, e in unhashable.items()},
        "unhashable_eval": {s: _reasons(e) for s, e in e_errors.items() if e},
        "unhashable_train_samples_removed": len(unhashable_ids),
        "hashing": hashed["totals"], "gallery": {k: Path(v).name for k, v in gallery.items()},
        "leaked_ids": leaked, "unhashable_ids": unhashable_ids, "all_pairs": pairs,
    }
    (out_dir / "leakage_report.json").write_text(json.dumps(report, indent=1))
    _write_md(out_dir / "leakage_report.md", report, unhashable, e_errors)
    with open(out_dir / "excluded.jsonl", "w") as f:
        for sid in leaked:
            f.write(json.dumps({"id": sid, "reason": "leaked"}) + "\n")
        for sid in unhashable_ids:
            f.write(json.dumps({"id": sid, "reason": "unhashable"}) + "\n")


def _reasons(errors: list[dict]) -> dict[str, int]:
    return dict(Counter(e["reason"] for e in errors))


def _stats_dict(s) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(s)


def _gallery(ctx, hashed: dict, pairs: list[dict], out_dir: Path) -> dict[str, Path]:
    """Side-by-side PNG/HTML of the closest pairs; image refs are looked up again only for the pairs shown."""
    from aloevision.leakage.gallery import LeakPair, write_gallery

    seen: set = set()
    shown = []
    for p in pairs:  # one tile per distinct image pair (several eval rows often ask about one image)
        k = (p["train_id"], p["image"], p["eval_image"])
        if k not in seen and len(shown) < GALLERY_PAIRS:
            seen.add(k)
            shown.append(p)
    t_want: dict[str, set] = defaultdict(set)
    e_want: dict[str, set] = defaultdict(set)
    for p in shown:
        t_want[p["train_source"]].add((p["train_id"], p["image"]))
        e_want[p["eval_set"]].add(p["eval_id"])
    folders = sample_folders(ctx.results)
    t_refs = {s: _train_refs(folders[s], w) for s, w in t_want.items()}
    e_refs = {s: _eval_refs(ctx.cfg, s, w) for s, w in e_want.items()}
    leak_pairs = [LeakPair(train_ref=t_refs[p["train_source"]].get((p["train_id"], p["image"]), "<not found>"),
                           eval_ref=e_refs[p["eval_set"]].get(p["eval_id"], "<not found>"),
                           train_source=p["train_source"], eval_set=p["eval_set"], distance=p["distance"],
                           train_hash=int(p["train_hash"], 16), eval_hash=int(p["eval_hash"], 16),
                           train_id=p["train_id"], eval_id=p["eval_id"]) for p in shown]
    title = f"Train/eval pHash matches, radius {ctx.cfg.leakage.radius} ({len(pairs)} pairs)"
    return write_gallery(leak_pairs, out_dir, max_pairs=GALLERY_PAIRS, title=title)


def _write_md(path: Path, r: dict, t_err: dict[str, list[dict]], e_err: dict[str, list[dict]]) -> None:
    h = r["hashing"]
    ms = r["match"]
    lines = [
        "# Evaluation-leakage report", "",
        f"- method: 64-bit pHash (bit-identical to `imagehash.phash`, `{r['phash_version']}`), Hamming radius "
        f"**{r['radius']}** ({'exact match, the paper' if r['radius'] == 0 else 'near-duplicates included'}); "
        f"matching scheme `{ms['scheme']}`",
        f"- training: {r['train_images']} images of {r['train_samples']} samples hashed; evaluation: "
        f"{r['eval_images']} images; hashed now {h['computed']}, content-cache hits "
        f"{h['train'].get('from_cache', 0) + h['eval'].get('from_cache', 0)}, reused artifacts "
        f"{h['train'].get('from_artifact', 0) + h['eval'].get('from_artifact', 0)}",
        f"- **{r['leaked_samples']} training samples leaked** ({100 * r['leaked_fraction']:.2f}%), {r['pairs']} "
        f"image pairs; {r['unhashable_train_samples_removed']} more removed because an image could not be hashed", "",
        "| training source | evaluation set | samples | training images | evaluation images | evaluation items "
        "| pairs | distances |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for g in r["by_source_and_set"]:
        dist = ", ".join(f"{d}: {n}" for d, n in g["distances"].items())
        lines.append(f"| {g['train_source']} | {g['eval_set']} | {g['samples']} | {g['train_images']} | "
                     f"{g['eval_images']} | {g['eval_items']} | {g['pairs']} | {dist} |")
    if not r["by_source_and_set"]:
        lines.append("| - | - | 0 | 0 | 0 | 0 | 0 | - |")
    lines += ["", "## Side-by-side pairs", "", "![gallery](leakage_gallery.png)", "",
              "[HTML gallery with ids and hashes](leakage_gallery.html)", ""]
    if r["all_pairs"]:
        lines += ["| training sample | image | evaluation set | item | distance | training hash | evaluation hash |",
                  "|---|---:|---|---|---:|---|---|"]
        for p in r["all_pairs"][:200]:
            lines.append(f"| `{p['train_id']}` | {p['image']} | {p['eval_set']} | `{p['eval_id']}` | {p['distance']} "
                         f"| `{p['train_hash']}` | `{p['eval_hash']}` |")
        if len(r["all_pairs"]) > 200:
            lines.append(f"\n{len(r['all_pairs']) - 200} more pairs in leakage_report.json")
    for title, errs in (("training", t_err), ("evaluation", e_err)):
        errs = {k: v for k, v in errs.items() if v}
        if errs:
            lines += ["", f"## Unhashable {title} images", ""]
            for part, es in errs.items():
                ex = "; ".join(f"`{e['row'][0]}` {e['reason']}" for e in es[:5])
                lines.append(f"- {part}: {json.dumps(_reasons(es))} — e.g. {ex}")
    path.write_text("\n".join(lines) + "\n")


def _log(ctx, r: dict, pairs: list[dict], gallery: dict[str, Path]) -> None:
    t = ctx.tracker
    t.summary({"leakage/radius": r["radius"], "leakage/pairs": r["pairs"],
               "leakage/leaked_samples": r["leaked_samples"],
               "leakage/leaked_fraction": r["leaked_fraction"],
               "leakage/unhashable_removed": r["unhashable_train_samples_removed"],
               "leakage/hashed_now": r["hashing"]["computed"]})
    gcols = ["train_source", "eval_set", "samples", "train_images", "eval_images", "eval_items", "pairs"]
    t.table("leakage/by_source_and_set", gcols + ["distances"],
            [[g[c] for c in gcols] + [json.dumps(g["distances"])] for g in r["by_source_and_set"]])
    cols = ["train_source", "train_id", "image", "eval_set", "eval_id", "distance", "train_hash", "eval_hash"]
    t.table("leakage/pairs", cols, [[p[c] for c in cols] for p in pairs[:WANDB_ROWS]])
    t.image("leakage/gallery", gallery["png"], caption=f"radius {r['radius']}: {r['pairs']} pairs")
    if t.run is not None:
        try:
            import wandb

            t.log({"leakage/gallery_html": wandb.Html(gallery["html"].read_text(encoding="utf-8"))})
        except Exception as e:  # W&B must never fail the job
            log.warning("W&B html leakage/gallery_html failed (%s)", e)
