"""Stage `images`: every training image into the content-addressed image store (`aloevision.image_store`), once.

For each folder of samples (every ingested source, the AR set) the stage reads each distinct image reference once,
stores its encoded bytes under their content key (an image already in the store, from this source, another source or
an earlier run, is not written again) and writes the artifact `image_keys/<fingerprint>/`:
- `keys.jsonl`, aligned with the folder's `samples.jsonl`: `{"id", "keys": [...]}` (null where the image could not
  be read any more: the mix stage drops that sample, counted);
- `keys.npy` (the distinct keys: a cached artifact is reused only while the store still holds all of them),
  `errors.jsonl`, `report.json`.
The mix stage then writes rows that name images by key, never reading image bytes again.

Sharding (SLURM job array, like `hash`): `stage=images` with `cluster.data_shards=n` as array task `k` stores only the
images with `image_shard(ref, n) == k` (by image: an image several samples share is read by one task) and records
their ref -> key pairs in an `image_keys_shard` artifact; the next job without a shard index assembles `keys.jsonl`
from the shards (equal to an unsharded build; no image read again) and removes the shard artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from aloevision.image_store import KEY_BYTES, ImageStore, StoreWriter, store_root
from aloevision.ingestion import iter_samples, sample_folders

log = logging.getLogger(__name__)
KEYS_VERSION = "1"


def _ref_id(ref: str) -> bytes:
    return hashlib.blake2b(str(ref).encode(), digest_size=KEY_BYTES).digest()


def _folder_key(folder: str) -> dict[str, Any]:
    return {"samples": Path(folder).name, "version": KEYS_VERSION}


class _Reader:
    """Stores each distinct reference once. `memo` (reference -> key, or None after an error) is shared by the
    folders of one job, so a reference two sources share is read once; `seen` holds this folder's references."""

    def __init__(self, writer: StoreWriter, memo: dict[str, str | None] | None = None):
        from aloevision import images as image_io

        self.read = image_io.read_image_bytes
        self.writer = writer
        self.memo: dict[str, str | None] = {} if memo is None else memo
        self.seen: set[str] = set()
        self.errors: list[dict[str, str]] = []
        self.images = 0

    def key(self, ref: str) -> str | None:
        from aloevision.images import ImageError

        self.images += 1
        if ref not in self.seen:
            self.seen.add(ref)
            if ref not in self.memo:
                try:
                    self.memo[ref] = self.writer.put(self.read(ref))
                except ImageError as e:  # ingest checked it: the file changed or vanished since
                    self.errors.append({"ref": str(ref), "reason": e.reason, "detail": str(e)})
                    self.memo[ref] = None
            elif self.memo[ref] is None:
                self.errors.append({"ref": str(ref), "reason": "unreadable_image", "detail": "see the other folder"})
        return self.memo[ref]


def _write_keys(folder: str, out: Path, lookup) -> dict[str, Any]:
    """keys.jsonl (aligned with samples.jsonl) and keys.npy through `lookup(ref) -> key | None`."""
    distinct: set[str] = set()
    samples = with_images = unavailable = 0
    with open(out / "keys.jsonl", "w") as f:
        for s in iter_samples(folder):
            keys = [lookup(r) for r in s.images]
            samples += 1
            with_images += bool(keys)
            unavailable += any(k is None for k in keys)
            distinct.update(k for k in keys if k)
            f.write(json.dumps({"id": s.id, "keys": keys}) + "\n")
    np.save(out / "keys.npy", np.array(sorted(bytes.fromhex(k) for k in distinct), dtype=f"S{KEY_BYTES}"))
    return {"samples": samples, "samples_with_images": with_images, "samples_unavailable": unavailable,
            "distinct_images": len(distinct)}


def _build(folder: str, writer: StoreWriter, memo: dict, out: Path) -> None:
    r = _Reader(writer, memo)
    before = (writer.written, writer.written_bytes, writer.present)
    counts = _write_keys(folder, out, r.key)
    _finish(out, counts, r.errors, {"images": r.images, "distinct_refs": len(r.seen),
                                   "written": writer.written - before[0],
                                   "written_bytes": writer.written_bytes - before[1],
                                   "already_stored": writer.present - before[2]})


def _finish(out: Path, counts: dict, errors: list[dict], io: dict) -> None:
    with open(out / "errors.jsonl", "w") as f:
        for e in errors:
            f.write(json.dumps(e) + "\n")
    (out / "report.json").write_text(json.dumps({**counts, **io, "errors": len(errors)}, indent=1))


# ---- sharded -----------------------------------------------------------------------------------------------------
def _shard_key(folder: str, k: int, n: int) -> dict[str, Any]:
    return {**_folder_key(folder), "shard": [k, n]}


def _build_shard(folder: str, writer: StoreWriter, memo: dict, k: int, n: int, out: Path) -> None:
    from aloevision.leakage.items import image_shard

    r = _Reader(writer, memo)
    before = (writer.written, writer.written_bytes, writer.present)
    for s in iter_samples(folder):
        for ref in s.images:
            if image_shard(ref, n) == k:
                r.key(ref)
    refs = sorted((_ref_id(ref), bytes.fromhex(memo[ref])) for ref in r.seen if memo[ref])
    np.save(out / "refs.npy", np.array(refs, dtype=[("ref", f"S{KEY_BYTES}"), ("key", f"S{KEY_BYTES}")]))
    with open(out / "errors.jsonl", "w") as f:
        for e in r.errors:
            f.write(json.dumps(e) + "\n")
    (out / "part.json").write_text(json.dumps({"shard": [k, n], "images": r.images, "distinct_refs": len(r.seen),
                                               "written": writer.written - before[0],
                                               "written_bytes": writer.written_bytes - before[1],
                                               "already_stored": writer.present - before[2], "errors": len(r.errors)}))
    writer.close()  # this shard's images published before its artifact commits


def _assemble(folder: str, parts: list[Path], writer: StoreWriter, memo: dict, out: Path) -> None:
    """keys.jsonl from the shards' ref -> key tables (sorted arrays, 32 bytes per distinct reference); a reference
    no shard resolved (an error there) is read here once more, so the result equals an unsharded build."""
    table = np.concatenate([np.load(p / "refs.npy") for p in parts]) if parts else np.zeros(0)
    table = table[np.argsort(table["ref"], kind="stable")] if len(table) else table
    infos = [json.loads((p / "part.json").read_text()) for p in parts]
    r = _Reader(writer, memo)

    def lookup(ref: str) -> str | None:
        rid = np.array([_ref_id(ref)], dtype=f"S{KEY_BYTES}")
        if len(table):
            i = int(np.searchsorted(table["ref"], rid)[0])
            if i < len(table) and table["ref"][i] == rid[0]:
                return table["key"][i].ljust(KEY_BYTES, b"\0").hex()
        return r.key(ref)

    counts = _write_keys(folder, out, lookup)
    io = {k: sum(i[k] for i in infos) for k in ("images", "distinct_refs", "written", "written_bytes",
                                                "already_stored")}
    io["read_again"] = len(r.seen)
    _finish(out, counts, r.errors, io)
    (out / "shards.json").write_text(json.dumps([{"path": str(p), **i} for p, i in zip(parts, infos)]))


# ---- the stage ---------------------------------------------------------------------------------------------------
def _complete(store: ImageStore, art) -> bool:
    """A cached keys artifact is valid while the store holds every key it names (a deleted store is rebuilt)."""
    keys = np.load(art.path / "keys.npy")
    return not len(keys) or bool((store._find(keys) >= 0).all())


def _keys_artifact(ctx, store: ImageStore, writer: StoreWriter, memo: dict, folder: str, n: int):
    key = _folder_key(folder)
    shard_dirs = [ctx.store.path_for("image_keys_shard", _shard_key(folder, k, n)) for k in range(n)] if n > 1 else []
    have = [(d / "_SUCCESS").is_file() for d in shard_dirs]

    def build(tmp: Path) -> None:
        if any(have):
            if not all(have):
                log.warning("images %s: shards %s of %d missing; storing their images in this job", folder,
                            [k for k, h in enumerate(have) if not h], n)
            parts = [ctx.store.get_or_build("image_keys_shard", _shard_key(folder, k, n),
                                            lambda t, k=k: _build_shard(folder, writer, memo, k, n, t)).path
                     for k in range(n)]
            writer.close()  # shard images published before the assembly reads the store
            _assemble(folder, parts, writer, memo, tmp)
        else:
            _build(folder, writer, memo, tmp)
        # Published before the artifact commits: a parallel job that finds the artifact finds its images too
        # (else it would take the artifact for stale and rebuild it under this job's feet).
        writer.close()

    art = ctx.store.get_or_build("image_keys", key, build)
    if art.cached:
        store.refresh()  # packs other jobs published since this job opened the store
    if art.cached and not _complete(store, art):
        log.warning("images %s: the image store %s lost images this artifact names; rebuilding it", folder,
                    store.root)
        shutil.rmtree(art.path)
        art = ctx.store.get_or_build("image_keys", key, build)
    for d in shard_dirs:  # assembled: no later job reads a shard
        shutil.rmtree(d, ignore_errors=True)
    return art


def run(ctx) -> dict[str, Any]:
    from aloevision.sharding import shard_spec

    cfg = ctx.cfg
    store = ImageStore(store_root(cfg.paths.cache_dir))
    folders = sample_folders(ctx.results)
    k, n = shard_spec(cfg, stage="images") if cfg.stage == "images" else (0, 1)
    writer = store.writer()
    memo: dict[str, str | None] = {}  # reference -> key, for every folder of this job
    artifacts, reports = {}, {}
    try:
        if n > 1:  # one array task: this shard's images into the store, no assembled artifact
            for name, folder in sorted(folders.items()):
                if (ctx.store.path_for("image_keys", _folder_key(folder)) / "_SUCCESS").is_file():
                    continue
                art = ctx.store.get_or_build("image_keys_shard", _shard_key(folder, k, n),
                                             lambda t, f=folder: _build_shard(f, writer, memo, k, n, t))
                reports[name] = art.read_json("part.json")
        else:
            n_cfg = int(cfg.cluster.data_shards or 1)
            for name, folder in sorted(folders.items()):
                art = _keys_artifact(ctx, store, writer, memo, folder, n_cfg)
                artifacts[name] = str(art.path)
                reports[name] = {**art.read_json("report.json"), "cached": art.cached}
    finally:
        writer.close()
    summary = {"store": str(store.root), "entries": len(store), "distinct_images": store.distinct(),
               "stored_bytes": store.stored_bytes()}
    ctx.tracker.summary({"images/store_entries": summary["entries"], "images/store_bytes": summary["stored_bytes"]})
    ctx.tracker.stage_report("images", {"shard": [k, n], "store": summary, "parts": reports})
    log.info("images: store %s holds %d images, %.1f MB", store.root, summary["entries"],
             summary["stored_bytes"] / 1e6)
    out: dict[str, Any] = {"store": str(store.root), "artifacts": artifacts, "reports": reports, **summary}
    if n > 1:
        out["shard"] = [k, n]
    return out
