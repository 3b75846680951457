"""Stage `mix`: the ready-to-train mixture, rebalanced by loss tokens: row tables in TRL's vision SFT format whose
images are keys into the shared image store (stage `images`), so a mixture costs only its rows.

Rows are TRL's vision SFT format (`messages` + `images`, plus `id`, `source`, `category`) with `images` holding
image-store keys; training resolves them (`aloevision.training.collator`). The row tables are Arrow IPC stream files
(`data/train-XXXXX-of-YYYYY.arrow`) that `datasets.Dataset.from_file` memory-maps: training reads them in place, with
no `datasets` cache copy. For publishing, or training outside the project, `stage=export` writes portable parquet with
the images embedded.

Steps, all streaming (row text in small batches; no image is read):
1. the per-sample token statistics of every source (stage `tokens`, cached);
2. the available statistics: samples not removed upstream (leakage, filter: by id) and trainable
   (`too_many_tokens` and other token-stage drops excluded);
3. the plan (`aloevision.planning`): per-source sampling fractions meeting `mixture.targets` in loss tokens, and the
   training arithmetic (total steps) the trainer follows;
4. selection (seeded hash of the id, `planning.copies_for`): `copies` rows per kept sample;
5. interleaving: each row goes to file `h % files` and files are ordered by `h`, with `h` a seeded hash of the row
   id, so sources are interleaved and any subset of the files is a fair sample (an external shuffle: memory is one
   file's rows, whatever the mixture's size);
6. the Table 1-style composition (markdown, CSV, W&B table; requested vs observed) and a token-allocation chart.

Sharding (SLURM job array): `stage=mix cluster.data_shards=n` as array task `k` writes the rows of the samples with
`shard_of(id, n) == k` into per-file buckets (artifact `mix_shard`); the next job without a shard index assembles
them: file i = every part's bucket i ordered by the row hash, so the result equals an unsharded mix byte for byte
(and the parts are deleted). Without an array the mix runs in one process: it reads no image, so it is cheap
(~12,000 rows/s on one core of the 2-core test machine: ~6 min for 4M rows).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from aloevision.ingestion import sample_folders
from aloevision.mixture import available_stats, build_plan, excluded_ids, features, mixture_rows

log = logging.getLogger(__name__)
MIX_VERSION = "4"  # 4: rows name images by image-store key; Arrow IPC row tables
ROWS_PER_FILE = 50_000  # rows per file (row text only: ~1-2 KB a row)
BATCH_ROWS = 512  # rows buffered per file before an Arrow record batch is written


def row_hash(row_id: str, seed: int) -> int:
    """The seeded 63-bit hash that places a row: its file (h % files) and its position in the file (by h)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest(), "little") >> 1


def n_files_for(plan: dict) -> int:
    return max(1, -(-int(plan.get("samples") or 0) // ROWS_PER_FILE))


def _write_part(ingest_dirs, tokens_dirs, keys_dirs, excluded, plan: dict, seed: int, out: Path,
                shard: tuple[int, int] = (0, 1)) -> None:
    """Rows of the samples of `shard` (k, n: by sample id) into per-file buckets (`<out>/<i>.arrow`, rows with their
    hash `_h`, in arrival order) and `part.json` (observed samples / loss tokens per source and category, skips)."""
    import pyarrow as pa

    from aloevision.scoring.store import shard_of

    k, n = shard
    fractions = {s["name"]: s["fraction"] for s in plan["sources"]}
    tmp_schema = features().arrow_schema.append(pa.field("_h", pa.int64()))
    n_files = n_files_for(plan)
    writers = [pa.ipc.new_stream(str(out / f"{i}.arrow"), tmp_schema) for i in range(n_files)]
    buffers: list[list[dict]] = [[] for _ in range(n_files)]

    def flush(i: int) -> None:
        if buffers[i]:
            writers[i].write_batch(pa.RecordBatch.from_pylist(buffers[i], schema=tmp_schema))
            buffers[i] = []

    observed: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    skipped: dict[str, int] = {}
    want = None if n == 1 else (lambda sid: shard_of(sid, n) == k)
    for row, loss in mixture_rows(ingest_dirs, tokens_dirs, keys_dirs, excluded, fractions, seed, skipped, want):
        o = observed[(row["source"], row["category"])]
        o[0] += 1
        o[1] += loss
        h = row_hash(row["id"], seed)
        i = h % n_files
        buffers[i].append({**row, "_h": h})
        if len(buffers[i]) >= BATCH_ROWS:
            flush(i)
    for i, w in enumerate(writers):
        flush(i)
        w.close()
    (out / "part.json").write_text(json.dumps({"shard": [k, n], "files": n_files, "skipped": skipped,
                                               "observed": [[s, c, v[0], v[1]] for (s, c), v in observed.items()]}))


def _assemble(parts: list[Path], plan: dict, image_store: str, out: Path) -> None:
    """The row files from the parts' buckets: file i = every part's bucket i ordered by the row hash (so the result
    does not depend on how the rows were sharded), then the composition."""
    import numpy as np
    import pyarrow as pa

    schema = features().arrow_schema
    n_files = n_files_for(plan)
    infos = [json.loads((p / "part.json").read_text()) for p in parts]
    if any(i["files"] != n_files for i in infos):
        raise RuntimeError(f"mix parts {parts} were built for another plan; delete them to rebuild")
    data = out / "data"
    data.mkdir()
    for i in range(n_files):  # one file's rows in memory at a time
        tables = []
        for p in parts:
            with pa.memory_map(str(p / f"{i}.arrow")) as f:
                tables.append(pa.ipc.open_stream(f).read_all())
        table = pa.concat_tables(tables)
        del tables
        order = np.argsort(table.column("_h").to_numpy(), kind="stable")
        table = table.take(pa.array(order)).drop_columns(["_h"]).replace_schema_metadata(schema.metadata)
        with pa.ipc.new_stream(str(data / f"train-{i:05d}-of-{n_files:05d}.arrow"), schema) as w:
            w.write_table(table, max_chunksize=10_000)
        del table
    observed: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    skipped: dict[str, int] = defaultdict(int)
    for info in infos:
        for s, c, rows, loss in info["observed"]:
            observed[(s, c)][0] += rows
            observed[(s, c)][1] += loss
        for reason, v in info["skipped"].items():
            skipped[reason] += v
    comp = composition(plan, observed)
    (out / "composition.json").write_text(json.dumps(comp, indent=1))
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    (out / "mixture.json").write_text(json.dumps({"format": "image-store keys", "image_store": image_store,
                                                  "files": n_files, "rows": sum(v[0] for v in observed.values()),
                                                  "skipped": dict(skipped), "parts": len(parts)}, indent=1))
    write_composition(out, comp)


def _build(ingest_dirs, tokens_dirs, keys_dirs, excluded, plan: dict, seed: int, image_store: str, out: Path) -> None:
    part = out / ".part"  # the temporary buckets: row text only, removed once the files are written
    part.mkdir()
    _write_part(ingest_dirs, tokens_dirs, keys_dirs, excluded, plan, seed, part)
    _assemble([part], plan, image_store, out)
    shutil.rmtree(part)


def composition(plan: dict, observed: dict[tuple[str, str], list[int]]) -> list[dict[str, Any]]:
    """Table 1-style rows: per source then per category (and a total), planned vs observed samples and loss
    tokens, observed and requested share of loss tokens."""
    total_lt = sum(v[1] for v in observed.values()) or 1
    by_source = {s: v for (s, _), v in observed.items()}
    rows = []
    cats = {c["category"]: c for c in plan["categories"]}
    for cat in list(cats) + sorted({c for (_, c) in observed if c not in cats}):
        cp = cats.get(cat, {})
        members = [s for s in plan["sources"] if s["category"] == cat]
        extra = sorted(s for (s, c) in observed if c == cat and s not in {m["name"] for m in members})
        for s in members + [{"name": n, "label": n, "fraction": 1.0, "samples": None, "loss_tokens": None,
                             "requested_share": None} for n in extra]:
            o = by_source.get(s["name"], [0, 0])
            rows.append({"level": "source", "source": s["label"], "category": cat, "fraction": s["fraction"],
                         "samples": o[0], "loss_tokens": o[1], "share": o[1] / total_lt,
                         "planned_samples": s["samples"], "planned_loss_tokens": s["loss_tokens"],
                         "requested_share": s["requested_share"]})
        o = [sum(by_source.get(m["name"], [0, 0])[i] for m in members) + sum(by_source[n][i] for n in extra)
             for i in (0, 1)]
        rows.append({"level": "category", "source": "", "category": cat, "fraction": None, "samples": o[0],
                     "loss_tokens": o[1], "share": o[1] / total_lt, "planned_samples": cp.get("samples"),
                     "planned_loss_tokens": cp.get("loss_tokens"), "requested_share": cp.get("requested_share")})
    rows.append({"level": "total", "source": "", "category": "total", "fraction": None,
                 "samples": sum(v[0] for v in observed.values()), "loss_tokens": sum(v[1] for v in observed.values()),
                 "share": 1.0, "planned_samples": plan["samples"], "planned_loss_tokens": plan["loss_tokens"],
                 "requested_share": None})
    return rows


COLUMNS = ["level", "source", "category", "fraction", "samples", "loss_tokens", "share", "requested_share",
           "planned_samples", "planned_loss_tokens"]


def _fmt(v: Any, col: str) -> str:
    if v is None:
        return ""
    if col in ("share", "requested_share"):
        return f"{v:.1%}"
    if col == "fraction":
        return f"{v:.4f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def write_composition(out: Path, comp: list[dict[str, Any]]) -> None:
    with open(out / "composition.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in COLUMNS} for r in comp)
    lines = ["# Mixture composition (Table 1 style)", "",
             "Observed = rows written (repeats counted); share = observed share of loss tokens; requested = the "
             "mixture's target (empty: natural share).", "",
             "| " + " | ".join(COLUMNS[1:]) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 3)]
    for r in comp:
        cells = [_fmt(r[c], c) for c in COLUMNS[1:]]
        if r["level"] != "source":
            cells = [f"**{c}**" if c else "" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "composition.md").write_text("\n".join(lines) + "\n")
    _chart(out / "token_allocation.png", comp)


def _chart(path: Path, comp: list[dict[str, Any]]) -> None:
    """Loss-token share per category (observed, and requested where the mixture sets a target) and per source,
    coloured by category (one legend for both panels); every bar carries its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cats = [r for r in comp if r["level"] == "category"]
    srcs = [r for r in comp if r["level"] == "source"]
    colour = {r["category"]: f"C{i % 10}" for i, r in enumerate(cats)}
    requested = [r.get("requested_share") for r in cats]
    has_targets = any(v is not None for v in requested)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    x = list(range(len(cats)))
    w = 0.4 if has_targets else 0.6
    obs = a.bar([i - (0.2 if has_targets else 0) for i in x], [100 * r["share"] for r in cats], w,
                color=[colour[r["category"]] for r in cats])
    a.bar_label(obs, fmt="%.1f", fontsize=7, padding=1)
    if has_targets:
        req = a.bar([i + 0.2 for i in x], [100 * (v or 0) for v in requested], w, color="none", edgecolor="black",
                    hatch="//", linewidth=0.8)
        a.bar_label(req, labels=["—" if v is None else f"{100 * v:.1f}" for v in requested], fontsize=7, padding=1)
        a.legend(handles=[Patch(facecolor="gray", label="observed"),
                          Patch(facecolor="none", edgecolor="black", hatch="//", label="requested (target)")],
                 fontsize=8, loc="upper right")
        a.set_title("per category: observed vs requested", fontsize=10)
    else:
        a.set_title("per category (no targets: natural shares)", fontsize=10)
    a.set_xticks(x, [r["category"].replace("_", "\n") for r in cats], fontsize=8)
    a.set_ylabel("% of loss tokens")
    a.set_ylim(0, max([100 * r["share"] for r in cats] + [100 * (v or 0) for v in requested] + [1]) * 1.15)
    bars = b.barh([r["source"] for r in srcs], [r["loss_tokens"] for r in srcs],
                  color=[colour.get(r["category"], "gray") for r in srcs])
    b.bar_label(bars, labels=[f"{r['loss_tokens']:,} ({100 * r['share']:.1f}%)" for r in srcs], fontsize=7,
                padding=2)
    b.invert_yaxis()
    b.set_xlim(0, max([r["loss_tokens"] for r in srcs] + [1]) * 1.25)
    b.set_xlabel("loss tokens (observed, repeats counted)")
    b.set_title("per source", fontsize=10)
    b.legend(handles=[Patch(color=colour[r["category"]], label=r["category"]) for r in cats], fontsize=8,
             loc="lower right", title="category", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_shard(ctx, key, sources, tokens_dirs, keys_dirs, excluded, plan, k: int, n: int) -> dict[str, Any]:
    """One array task of a sharded mix: the rows of the samples with `shard_of(id, n) == k`, into per-file buckets
    (artifact `mix_shard`); the next job without a shard index assembles them (equal to an unsharded mix)."""
    if (ctx.store.path_for("mix", key) / "_SUCCESS").is_file():
        log.info("mix: already assembled; shard %d/%d has nothing to do", k, n)
        return {"shard": [k, n], "part": None}
    art = ctx.store.get_or_build(
        "mix_shard", {**key, "shard": [k, n]},
        lambda t: _write_part(sources, tokens_dirs, keys_dirs, excluded, plan, int(ctx.cfg.seed), t, (k, n)))
    info = art.read_json("part.json")
    rows = sum(o[2] for o in info["observed"])
    ctx.tracker.stage_report("mix", {"shard": [k, n], "part": str(art.path), "rows": rows})
    log.info("mix shard %d/%d: %d rows%s", k, n, rows, " (cached)" if art.cached else "")
    return {"shard": [k, n], "part": str(art.path), "rows": rows}


def run(ctx) -> dict[str, Any]:
    """`stage=mix`; with `cluster.data_shards=n` and a shard index (`cluster.data_shard` or the SLURM array task id)
    it writes one shard's rows only (artifact `mix_shard`, by sample id); a later job without a shard index
    assembles them into the same mixture an unsharded job builds."""
    from aloevision.image_store import store_root

    cfg = ctx.cfg
    sources = sample_folders(ctx.results)
    tokens_dirs = dict(ctx.results["tokens"]["artifacts"])
    keys_dirs = dict(ctx.results["images"]["artifacts"])
    excluded = excluded_ids(ctx.results)
    stats, skipped = available_stats(tokens_dirs, excluded)
    plan = build_plan(cfg, ctx.results, stats)
    store = str(store_root(cfg.paths.cache_dir))
    key = {
        "ingest": {k: Path(v).name for k, v in sources.items()},
        "tokens": {k: Path(v).name for k, v in tokens_dirs.items()},
        "images": {k: Path(v).name for k, v in keys_dirs.items()},
        "excluded": sorted(excluded),
        "fractions": {s["name"]: round(s["fraction"], 9) for s in plan["sources"]},
        "seed": int(cfg.seed),
        "version": MIX_VERSION,
    }
    from aloevision.sharding import shard_spec

    seed = int(cfg.seed)
    k, n = shard_spec(cfg, stage="mix") if cfg.stage == "mix" else (0, 1)
    if n > 1:
        return _run_shard(ctx, key, sources, tokens_dirs, keys_dirs, excluded, plan, k, n)
    n_cfg = int(cfg.cluster.data_shards or 1)
    shard_dirs = [ctx.store.path_for("mix_shard", {**key, "shard": [j, n_cfg]}) for j in range(n_cfg)] if n_cfg > 1 else []
    have = [(d / "_SUCCESS").is_file() for d in shard_dirs]

    def build(tmp: Path) -> None:
        if any(have):  # an array built parts: assemble them (a missing one is built here)
            if not all(have):
                log.warning("mix: shards %s of %d missing; building them in this job",
                            [j for j, h in enumerate(have) if not h], n_cfg)
            parts = [ctx.store.get_or_build(
                "mix_shard", {**key, "shard": [j, n_cfg]},
                lambda t, j=j: _write_part(sources, tokens_dirs, keys_dirs, excluded, plan, seed, t, (j, n_cfg))).path
                for j in range(n_cfg)]
            _assemble(parts, plan, store, tmp)
        else:
            _build(sources, tokens_dirs, keys_dirs, excluded, plan, seed, store, tmp)

    art = ctx.store.get_or_build("mix", key, build)
    for d in shard_dirs:  # assembled: the parts (row text) go
        shutil.rmtree(d, ignore_errors=True)
    comp = art.read_json("composition.json")
    skipped.update(art.read_json("mixture.json").get("skipped", {}))
    # The run's own plan (training arithmetic can differ between runs sharing one mixture artifact).
    (ctx.run_dir / "plan.json").write_text(json.dumps(plan, indent=1))
    out = ctx.run_dir / "mix"
    out.mkdir(exist_ok=True)
    for name in ("composition.md", "composition.csv", "token_allocation.png"):
        (out / name).write_bytes((art.path / name).read_bytes())
    ctx.tracker.table("mix/composition", COLUMNS, [[r[c] for c in COLUMNS] for r in comp])
    ctx.tracker.image("mix/token_allocation", art.path / "token_allocation.png", caption="loss-token allocation")
    total = next(r for r in comp if r["level"] == "total")
    tr = plan.get("training") or {}
    rows_bytes = sum(f.stat().st_size for f in (art.path / "data").iterdir())
    ctx.tracker.summary({"mix/samples": total["samples"], "mix/loss_tokens": total["loss_tokens"],
                         "mix/row_bytes": rows_bytes, **({"mix/total_steps": tr["total_steps"]} if tr else {})})
    ctx.tracker.stage_report("mix", {"artifact": str(art.path), "samples": total["samples"], "skipped": skipped,
                                     "composition": comp, "training": tr, "row_bytes": rows_bytes,
                                     "image_store": store})
    ctx.tracker.add_paths(mixture=art.path / "data", composition=out / "composition.md")
    return {"path": str(art.path), "data": str(art.path / "data"), "samples": total["samples"],
            "composition": comp, "plan": plan, "skipped": skipped, "image_store": store, "row_bytes": rows_bytes}
