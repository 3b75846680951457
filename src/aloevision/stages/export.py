"""Stage `export`: the mixture as a portable dataset, for publishing or for training outside the project: parquet
shards with the images embedded, rows exactly TRL's vision SFT format (`messages` + `images`, plus `id`, `source`,
`category`), read by plain `datasets.load_dataset("parquet", data_files=..., streaming=True)` and plain TRL.

- Shards hold at most `export.max_shard_bytes` of rows + images each (1 GB by default; a single larger row gets a shard
  of its own). Files: `<artifact>/data/train-XXXXX-of-YYYYY.parquet`.
- Images are deduplicated within a row group: the image bytes column is dictionary-encoded (parquet stores each
  distinct value of a row group once), and rows that share an image are placed next to each other (rows are ordered
  by a seeded hash of their first image's key, of their id when they have none: still a shuffle across sources and
  files, so any subset of the shards is a fair sample). Row groups hold up to ROW_GROUP_BYTES of images: the
  dictionary page of a row group is at most that large, which every parquet reader handles.
- Memory: one shard's row text plus one row group of image bytes; images come from the image store's mapped packs.
- `export.push_to_hub=<repo id>` uploads the shards when Hub credentials exist (never fails the run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from aloevision.mixture import features, image_store_of, mixture_files

log = logging.getLogger(__name__)
EXPORT_VERSION = "1"
ROW_GROUP_BYTES = 32 << 20
IMAGE_BYTES_COLUMN = "images.list.element.bytes"


def _group_hash(row: dict[str, Any], seed: int) -> int:
    """Orders the export: rows sharing their first image are adjacent (one dictionary entry in a row group)."""
    anchor = row["images"][0] if row["images"] else "id:" + row["id"]
    return int.from_bytes(hashlib.blake2b(f"{seed}:{anchor}".encode(), digest_size=8).digest(), "little") >> 1


def _sizes(store, keys: list[str]) -> int:
    import numpy as np

    if not keys:
        return 0
    raw = np.array([bytes.fromhex(k) for k in keys], dtype="S16")
    pos = store._find(raw)
    if (pos < 0).any():
        store.get(keys[int(np.argmax(pos < 0))])  # raises the store's error naming the key
    return int(store._ensure()["length"][pos].sum())


def _build(mix: dict[str, Any], max_shard_bytes: int, seed: int, out: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = image_store_of(mix)
    files = mixture_files(mix)
    # Pass 1 (row text only): each row's size with its images and its place; rows are then assigned to shards of
    # about equal size, each shard's rows ordered by the group hash.
    rows_meta: list[tuple[int, int, int, int, int]] = []  # (group hash, file, row in file, bytes, first image)
    total = 0
    for fi, f in enumerate(files):
        with pa.memory_map(str(f)) as m:
            reader = pa.ipc.open_stream(m)
            r0 = 0
            for batch in reader:
                for j, row in enumerate(batch.to_pylist()):
                    size = _sizes(store, row["images"]) + len(json.dumps(row["messages"]))
                    first = _sizes(store, row["images"][:1])
                    rows_meta.append((_group_hash(row, seed), fi, r0 + j, size, first))
                    total += size
                r0 += batch.num_rows
    meta = np.array(rows_meta, dtype=[("h", "<i8"), ("file", "<i4"), ("row", "<i8"), ("bytes", "<i8"),
                                      ("first", "<i8")])
    del rows_meta
    meta = meta[np.argsort(meta["h"], kind="stable")]
    # Shards: consecutive runs of the ordered rows, cut before a shard would pass max_shard_bytes. A row sharing the
    # previous row's first image (same group hash) adds that image once: the dictionary stores it once.
    cuts, acc, prev = [0], 0, None
    for i, (h, b, first) in enumerate(zip(meta["h"].tolist(), meta["bytes"].tolist(), meta["first"].tolist())):
        if acc and h == prev:
            b -= first
        elif acc and acc + b > max_shard_bytes:
            cuts.append(i)
            acc = 0
        acc += b
        prev = h
    cuts.append(len(meta))
    n_shards = max(1, len(cuts) - 1)
    schema = features(embedded=True).arrow_schema
    tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]  # mapped, not copied
    data = out / "data"
    data.mkdir()
    report = []
    for s in range(n_shards):
        part = meta[cuts[s]:cuts[s + 1]] if len(meta) else meta
        path = data / f"train-{s:05d}-of-{n_shards:05d}.parquet"
        stored = 0
        with pq.ParquetWriter(str(path), schema, compression="zstd", use_dictionary=[IMAGE_BYTES_COLUMN],
                              dictionary_pagesize_limit=ROW_GROUP_BYTES + (1 << 20)) as w:
            buf: list[dict[str, Any]] = []
            buf_bytes = 0

            def flush() -> None:
                nonlocal buf, buf_bytes
                if buf:
                    w.write_table(pa.Table.from_pylist(buf, schema=schema), row_group_size=len(buf))
                buf, buf_bytes = [], 0

            prev = None
            for h, fi, ri in zip(part["h"].tolist(), part["file"].tolist(), part["row"].tolist()):
                row = tables[fi].slice(ri, 1).to_pylist()[0]
                images = [{"bytes": store.get(k), "path": None} for k in row["images"]]
                size = sum(len(im["bytes"]) for im in images)
                if h == prev and images:  # shares the previous row's first image: same row group, stored once
                    size -= len(images[0]["bytes"])
                elif buf and buf_bytes + size > ROW_GROUP_BYTES:
                    flush()
                buf.append({**row, "images": images})
                buf_bytes += size
                prev = h
            flush()
            stored = len(part)
        report.append({"file": path.name, "rows": stored, "bytes": path.stat().st_size})
    (out / "export.json").write_text(json.dumps({"rows": int(len(meta)), "shards": report,
                                                 "max_shard_bytes": max_shard_bytes,
                                                 "row_and_image_bytes": int(total)}, indent=1))
    readme = ("# Aloe-Vision mixture (portable export)\n\nParquet shards in TRL's vision SFT format (`messages` + "
              "`images`, images embedded), plus `id`, `source`, `category`:\n\n```python\nfrom datasets import "
              "load_dataset\nds = load_dataset(\"parquet\", data_files=\"data/*.parquet\", split=\"train\", "
              "streaming=True)\n```\n")
    (out / "README.md").write_text(readme)


def push_to_hub(repo: str | None, data_dir: Path) -> str | None:
    """Upload the parquet shards when a repo id is set AND Hub credentials exist; never fails the run."""
    if not repo:
        return None
    try:
        from huggingface_hub import HfApi, get_token

        if not (get_token() or os.environ.get("HF_TOKEN")):
            log.warning("export.push_to_hub=%s: no Hugging Face credentials; not pushed", repo)
            return None
        api = HfApi()
        api.create_repo(str(repo), repo_type="dataset", exist_ok=True, private=True)
        api.upload_folder(folder_path=str(data_dir), path_in_repo="data", repo_id=str(repo), repo_type="dataset")
        return str(repo)
    except Exception as e:  # an upload must never lose the built export
        log.warning("push_to_hub %s failed: %s", repo, e)
        return None


def run(ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    mix = ctx.results["mix"]
    max_bytes = int(cfg.export.max_shard_bytes)
    key = {"mix": Path(mix["path"]).name, "max_shard_bytes": max_bytes, "seed": int(cfg.seed),
           "row_group_bytes": ROW_GROUP_BYTES, "version": EXPORT_VERSION}
    art = ctx.store.get_or_build("export", key, lambda tmp: _build(mix, max_bytes, int(cfg.seed), tmp))
    info = art.read_json("export.json")
    repo = cfg.export.push_to_hub or cfg.mix.push_to_hub
    pushed = push_to_hub(repo, art.path / "data")
    total = sum(s["bytes"] for s in info["shards"])
    ctx.tracker.summary({"export/rows": info["rows"], "export/shards": len(info["shards"]), "export/bytes": total})
    ctx.tracker.stage_report("export", {"artifact": str(art.path), **info, "bytes": total, "pushed": pushed})
    ctx.tracker.add_paths(export=art.path / "data")
    return {"path": str(art.path), "data": str(art.path / "data"), "rows": info["rows"], "shards": info["shards"],
            "bytes": total, "pushed": pushed}
