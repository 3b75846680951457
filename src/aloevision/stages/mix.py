"""Stage `mix`: the ready-to-train mixture, a Hugging Face dataset of parquet shards with the images embedded.

Rows are exactly TRL's vision SFT format (`messages` + `images`, plus `id`, `source`, `category`), so the released
mixture trains with any TRL setup and no project code: `load_dataset("parquet", data_dir=<artifact>/data)`.
Samples removed by upstream stages (leakage, filter) are excluded by id; the composition table (samples per source
and category) is written beside it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)
MIX_VERSION = "1"
ROWS_PER_SHARD = 5000


def features():
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "category": Value("string"),
            "messages": List({"role": Value("string"), "content": List(part)}),
            "images": List(Image()),
        }
    )


def _rows(ingest_dirs: dict[str, str], excluded: set[str]) -> Iterator[dict[str, Any]]:
    from aloevision.images import read_image_bytes
    from aloevision.stages.ingest import iter_samples

    for _, d in sorted(ingest_dirs.items()):
        for s in iter_samples(d):
            if s.id in excluded:
                continue
            messages = [
                {"role": m["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in m["content"]]}
                for m in s.messages
            ]
            images = [{"bytes": read_image_bytes(ref), "path": None} for ref in s.images]
            yield {"id": s.id, "source": s.source, "category": s.category, "messages": messages, "images": images}


def _build(ingest_dirs: dict[str, str], excluded: set[str], hf_cache: str, out: Path) -> None:
    from datasets import Dataset

    ds = Dataset.from_generator(
        _rows, gen_kwargs={"ingest_dirs": ingest_dirs, "excluded": excluded}, features=features(), cache_dir=hf_cache
    )
    data = out / "data"
    data.mkdir(parents=True)
    n_shards = max(1, -(-len(ds) // ROWS_PER_SHARD))
    for i in range(n_shards):
        ds.shard(n_shards, i, contiguous=True).to_parquet(str(data / f"train-{i:05d}-of-{n_shards:05d}.parquet"))
    comp = Counter((r["source"], r["category"]) for r in ds.select_columns(["source", "category"]))
    (out / "composition.json").write_text(
        json.dumps([{"source": s, "category": c, "samples": n} for (s, c), n in sorted(comp.items())], indent=1)
    )


def excluded_ids(ctx) -> set[str]:
    """Ids removed by the stages between ingest and mix (leakage, filter) in this run."""
    out: set[str] = set()
    for stage in ("leakage", "filter"):
        res = ctx.results.get(stage) or {}
        out.update(res.get("excluded_ids", []))
    return out


def run(ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    from aloevision.stages.ingest import training_artifacts

    sources = training_artifacts(ctx)
    excluded = excluded_ids(ctx)
    key = {
        "ingest": {k: Path(v).name for k, v in sources.items()},
        "excluded": sorted(excluded),
        "version": MIX_VERSION,
    }
    hf_cache = str(Path(cfg.paths.cache_dir) / "hf_datasets")
    art = ctx.store.get_or_build("mix", key, lambda tmp: _build(sources, excluded, hf_cache, tmp))
    comp = art.read_json("composition.json")
    ctx.tracker.table("mix/composition", ["source", "category", "samples"], [[c["source"], c["category"], c["samples"]] for c in comp])
    total = sum(c["samples"] for c in comp)
    ctx.tracker.summary({"mix/samples": total})
    ctx.tracker.stage_report("mix", {"artifact": str(art.path), "samples": total, "composition": comp})
    ctx.tracker.add_paths(mixture=art.path / "data")
    return {"path": str(art.path), "data": str(art.path / "data"), "samples": total, "composition": comp}


def load_mixture(ctx):
    """The mixture of this run as a `datasets.Dataset` (building it when the run has not yet)."""
    from datasets import load_dataset

    mix = ctx.results.get("mix") or run(ctx)
    ctx.results["mix"] = mix
    return load_dataset(
        "parquet",
        data_files=str(Path(mix["data"]) / "*.parquet"),
        split="train",
        cache_dir=str(Path(ctx.cfg.paths.cache_dir) / "hf_datasets"),
    )
