"""Ingestion, as a library: one source's adapter + cleaning into an artifact folder, sharded or not.

An ingest artifact holds `samples.jsonl` (kept, streamed), `drops.jsonl` (every removed sample with its reason) and
`report.json` / `report.md` (rows in/out, counts per reason, a few examples of each). The `ingest` stage, the
adversarial stage (FracAtlas) and the planner's reference sources all build them through `source_key` +
`ingest_source`, so one source config gives one artifact whoever asks.
"""

from __future__ import annotations

import heapq
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from aloevision.config import ConfigError
from aloevision.schema import Drop, Sample
from aloevision.utils.fingerprint import data_stamp

log = logging.getLogger(__name__)
INGEST_VERSION = "3"  # bump when adapters or cleaning change what they produce
SHARD_BLOCK = 1024  # rows per block; blocks are dealt round-robin to the shards


def ensure_demo_data(cfg) -> None:
    """The demo's sources live in generated demo data: make sure it exists before reading it."""
    demo_dir = Path(cfg.paths.demo_dir)
    if any(str(s.path).startswith(str(demo_dir)) for s in cfg.mixture.sources.values()) or any(
        str(b.path).startswith(str(demo_dir)) for b in cfg.eval.benchmarks.values()
    ):
        from aloevision.demo.generate import ensure_demo_data as build

        build(demo_dir)


def row_block_shard(ordinal: int, n: int) -> int:
    """The ingest shard of a source row: blocks of SHARD_BLOCK consecutive rows dealt round-robin, so each shard
    reads whole parquet batches and every shard gets a share of every file. (Later stages shard by sample id instead:
    `aloevision.scoring.store.shard_of`, stable whatever the row order.)"""
    return (ordinal // SHARD_BLOCK) % n


def _jsonl(path: Path) -> Iterator[Any]:
    with open(path) as f:
        for line in f:
            yield json.loads(line)


def build_part(src_cfg, seed: int, out: Path, k: int = 0, n: int = 1, cap: int | None = None) -> dict[str, Any]:
    """Adapter + cleaning over the rows of shard k/n, in row order, into ``out``:

    - ``samples.jsonl`` kept samples, ``samples.idx`` one ``[ordinal, cap key, id, source]`` per sample;
    - ``drops.jsonl`` adapter/cleaning drops, ``drops.idx`` one ``[ordinal, reason, source]`` per drop;
    - ``capped.idx`` ``[ordinal, id, source, cap key]`` of the samples over ``cap`` (the part keeps its ``cap``
      samples with
      the smallest (key, ordinal): bottom-k of a union = bottom-k of the parts' bottom-k, so the assembly's global
      cap keeps exactly the unsharded set).

    Memory: one record at a time, plus O(cap) integers when capped (two passes over the part's own output, never
    the source)."""
    from aloevision.cleaning import clean, default_rules, sample_key
    from aloevision.sources import allowed_roots, read_source
    from aloevision.sources.base import ROW_SCOPE, RowScope

    scope = RowScope(want=None if n == 1 else (lambda o: row_block_shard(o, n) == k))
    rules = default_rules(roots=allowed_roots(src_cfg))
    stem = "samples.all" if cap is not None else "samples"
    heap: list[tuple[int, int]] = []  # max-heap of (-key, -ordinal): the part's `cap` smallest so far
    in_heap: set[int] = set()  # their keys: a repeated id (same key) never takes a second place
    rows = 0
    token = ROW_SCOPE.set(scope)
    try:
        with open(out / f"{stem}.jsonl", "w") as fs, open(out / f"{stem}.idx", "w") as fsi, \
                open(out / "drops.jsonl", "w") as fd, open(out / "drops.idx", "w") as fdi:
            desc = f"ingest {src_cfg.name}" + (f" shard {k}/{n}" if n > 1 else "")
            for item in tqdm(clean(read_source(src_cfg), rules), desc=desc, unit=" rows", leave=False,
                             mininterval=2.0):
                rows += 1
                o = scope.ordinal
                if isinstance(item, Drop):
                    fd.write(json.dumps(item.to_dict()) + "\n")
                    fdi.write(json.dumps([o, item.reason, item.source]) + "\n")
                    continue
                key = sample_key(item.id, seed)
                fs.write(item.to_json() + "\n")
                fsi.write(json.dumps([o, key, item.id, item.source]) + "\n")
                if cap is not None and key not in in_heap:
                    if len(heap) < cap:
                        heapq.heappush(heap, (-key, -o))
                        in_heap.add(key)
                    elif cap and (key, o) < (-heap[0][0], -heap[0][1]):
                        in_heap.discard(-heapq.heapreplace(heap, (-key, -o))[0])
                        in_heap.add(key)
    finally:
        ROW_SCOPE.reset(token)
    with open(out / "capped.idx", "w") as fc:
        if cap is not None:
            kept = {-neg_o for _, neg_o in heap}
            del heap
            with open(out / "samples.all.jsonl") as fa, open(out / "samples.all.idx") as fai, \
                    open(out / "samples.jsonl", "w") as fs, open(out / "samples.idx", "w") as fsi:
                for line, idx in zip(fa, fai):
                    o, key, sid, source = json.loads(idx)
                    if o in kept:
                        fs.write(line)
                        fsi.write(idx)
                    else:
                        fc.write(json.dumps([o, sid, source, key]) + "\n")
            (out / "samples.all.jsonl").unlink()
            (out / "samples.all.idx").unlink()
    info = {"shard": [k, n], "block": SHARD_BLOCK, "rows": rows, "cap": cap}
    (out / "part.json").write_text(json.dumps(info))
    return info


def assemble(parts: list[Path], cap: int | None, out: Path, name: str) -> dict[str, Any]:
    """Merge part folders (one, or the n shards) into the artifact: samples and drops in source row order, the
    global cap applied, the report counted. Reads only the parts, never the source; memory O(parts + cap)."""
    from aloevision.cleaning import DropCounter

    dups = duplicate_ordinals(parts)
    kept: set[int] | None = None
    if cap is not None:
        smallest = heapq.nsmallest(cap, ((key, o) for p in parts for o, key, _, _ in _jsonl(p / "samples.idx")
                                         if o not in dups))
        kept = {o for _, o in smallest}
        del smallest
    counter = DropCounter()
    cap_detail = f"over the cap of {cap}"

    def drop_counted(source: str, reason: str, example) -> None:
        counter.rows_in[source] += 1
        counter.drops[source][reason] += 1
        ex = counter.examples[source][reason]
        if len(ex) < counter.max_examples:
            ex.append(example())

    def lines(p: Path, stem: str):
        with open(p / f"{stem}.jsonl") as f, open(p / f"{stem}.idx") as fi:
            for line, idx in zip(f, fi):
                rec = json.loads(idx)
                yield rec[0], line, rec

    evicted, duplicated = out / ".evicted.idx", out / ".duplicates.jsonl"
    with open(out / "samples.jsonl", "w") as fs, open(evicted, "w") as fe, open(duplicated, "w") as fdup:
        for o, line, (_, _, sid, source) in heapq.merge(*(lines(p, "samples") for p in parts), key=lambda t: t[0]):
            if o in dups:
                fdup.write(json.dumps([o, sid, source]) + "\n")
            elif kept is None or o in kept:
                fs.write(line)
                counter.rows_in[source] += 1
                counter.rows_out[source] += 1
            else:
                fe.write(json.dumps([o, sid, source]) + "\n")
    kept = None

    def capped(path: Path):
        for o, sid, source, *_ in _jsonl(path):
            yield o, sid, source

    def duplicates():  # repeated ids (a shard's capped rows included), as drop lines in row order
        capped_dups = ((o, sid, source) for p in parts for o, sid, source in capped(p / "capped.idx") if o in dups)
        for o, sid, source in heapq.merge(capped(duplicated), sorted(capped_dups), key=lambda t: t[0]):
            d = Drop(sid, source, "duplicate_id", f"id already used by an earlier row (row {o} of the source dropped; "
                                                  "the first is kept)")
            line = json.dumps(d.to_dict()) + "\n"
            yield o, line, [o, "duplicate_id", source]

    with open(out / "drops.jsonl", "w") as fd:
        for _, line, (_, reason, source) in heapq.merge(*(lines(p, "drops") for p in parts), duplicates(),
                                                        key=lambda t: t[0]):
            fd.write(line)
            drop_counted(source, reason, lambda line=line: _example(json.loads(line)))
        # The cap comes last (as it did in a single pass): its drops follow, in row order.
        for o, sid, source in heapq.merge(*(capped(p / "capped.idx") for p in parts), capped(evicted),
                                          key=lambda t: t[0]):
            if o in dups:
                continue
            d = Drop(sid, source, "source_cap", cap_detail)
            fd.write(json.dumps(d.to_dict()) + "\n")
            drop_counted(source, "source_cap", lambda d=d: _example(d.to_dict()))
    evicted.unlink()
    duplicated.unlink()
    per_source = counter.to_dict()
    report = per_source.get(name) or {"rows_in": 0, "rows_out": 0, "drops": {}, "examples": {}}
    if len(per_source) > 1:  # an adapter that labels samples with several source names
        report = {"rows_in": sum(v["rows_in"] for v in per_source.values()),
                  "rows_out": sum(v["rows_out"] for v in per_source.values()),
                  "drops": {}, "examples": {}, "by_source": per_source}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(counter.markdown() + "\n")
    return report


def duplicate_ordinals(parts: list[Path]) -> set[int]:
    """Ordinals of the samples whose id an earlier row (smaller ordinal) of the source already used: the first is
    kept, the rest become ``duplicate_id`` drops. Keys that occur twice are found by sorting the parts' 64-bit cap
    keys (a hash of the id, already in the indexes; 8 bytes per sample plus the sorted copy), then the rows with such
    a key are confirmed on the ids themselves in a second pass over the indexes."""
    from array import array

    import numpy as np

    keys = array("Q")
    for p in parts:
        keys.extend(r[1] for r in _jsonl(p / "samples.idx"))
        keys.extend(r[3] for r in _jsonl(p / "capped.idx"))
    if len(keys) < 2:
        return set()
    ks = np.sort(np.frombuffer(keys, dtype=np.uint64))
    del keys
    repeated = set(ks[1:][ks[1:] == ks[:-1]].tolist())
    del ks
    if not repeated:
        return set()
    found = sorted([(r[0], r[2]) for p in parts for r in _jsonl(p / "samples.idx") if r[1] in repeated] +
                   [(r[0], r[1]) for p in parts for r in _jsonl(p / "capped.idx") if r[3] in repeated])
    first: dict[str, int] = {}
    dups: set[int] = set()
    for o, sid in found:
        if sid in first:
            dups.add(o)
        else:
            first[sid] = o
    return dups


def _example(d: dict) -> dict[str, str]:
    return {"id": d.get("id", ""), "detail": str(d.get("detail", ""))[:300]}


def ingest_source(src_cfg, seed: int, out: Path) -> None:
    """One source, unsharded, into the artifact folder ``out`` (samples.jsonl, drops.jsonl, report.json/md)."""
    part = out / ".part"
    part.mkdir()
    build_part(src_cfg, seed, part)  # no cap in the part: the assembly applies it once
    assemble([part], src_cfg.cap, out, src_cfg.name)
    shutil.rmtree(part)


def source_key(src, seed: int) -> dict[str, Any]:
    """The ingest artifact key of a source (the only rule: ingest, adversarial and the planner use it): sharded or
    not, the assembled artifact is the same, so it has the same key."""
    src = OmegaConf.to_container(src, resolve=True) if not isinstance(src, dict) else src
    root = (src.get("options") or {}).get("image_root")  # the Hub-id setup's images live outside `path`
    stamp = data_stamp(src["path"]) if not root else [data_stamp(src["path"]), data_stamp(str(root))]
    return {"source": src, "stamp": stamp, "seed": int(seed), "version": INGEST_VERSION}


def ingested(store, src, seed: int):
    """The (cached) unsharded ingest artifact of one source config."""
    return store.get_or_build("ingest", source_key(src, seed), lambda tmp: ingest_source(src, seed, tmp))


def iter_samples(artifact_dir: str | Path) -> Iterator[Sample]:
    with open(Path(artifact_dir) / "samples.jsonl") as f:
        for line in f:
            yield Sample.from_dict(json.loads(line))



def sample_folders(results: dict[str, Any]) -> dict[str, str]:
    """Folders of unified samples (`samples.jsonl`) that feed the mixture, from the upstream results the stage
    graph resolved: every ingested source, plus the adversarial set when the AR stage built one."""
    ingest = results.get("ingest") or {}
    if "shard" in ingest:
        k, n = ingest["shard"]
        raise ConfigError(f"this job ingested shard {k}/{n} only: run the assembling ingest job (the same command "
                          "without cluster.data_shard) before the later stages")
    out = dict(ingest.get("artifacts", {}))
    out.update((results.get("adversarial") or {}).get("artifacts", {}))
    return out
