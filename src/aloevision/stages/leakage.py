"""Stage `leakage`: evaluation-leakage control (paper: training samples whose image has the same 64-bit pHash as an
evaluation image are removed; engine: aloevision.leakage). Needs the `hash` stage upstream.

`leakage` matches training against evaluation hashes within
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
from typing import Any

import numpy as np

from aloevision.ingestion import sample_folders
from aloevision.leakage.items import eval_items, train_items

log = logging.getLogger(__name__)
LEAKAGE_VERSION = "1"  # bump when what a leakage decision artifact holds changes
OUT_DIR = "leakage"  # report folder, under the run folder
GALLERY_PAIRS = 64
WANDB_ROWS = 5000


# ---- matching ----------------------------------------------------------------------------------------------------
def _load_part(d: str, rows: bool = True) -> tuple[np.ndarray, list[list] | None, list[dict]]:
    """A hash artifact's hashes, its `images.jsonl` rows (None with rows=False: at millions of training images the
    parsed rows would dominate the job's memory, and only the matched ones are needed) and its errors."""
    p = Path(d)
    hashes = np.load(p / "hashes.npy")
    with open(p / "images.jsonl") as f:
        parsed = [json.loads(line) for line in f] if rows else None
        n = len(parsed) if rows else sum(1 for _ in f)
    with open(p / "errors.jsonl") as f:
        errors = [json.loads(line) for line in f]
    if n != len(hashes):
        raise RuntimeError(f"hash artifact {p} is inconsistent ({n} rows, {len(hashes)} hashes)")
    return hashes, parsed, errors


def _rows_at(parts: dict[str, dict], names: list[str], owner: np.ndarray, indices: set[int]) -> dict[int, list]:
    """The `images.jsonl` rows of the given global indices (one pass over each part that holds any)."""
    out: dict[int, list] = {}
    starts = np.searchsorted(owner, np.arange(len(names)))  # owner is sorted: parts are concatenated in order
    for i, name in enumerate(names):
        local = {g - int(starts[i]) for g in indices if owner[g] == i}
        if not local:
            continue
        with open(Path(parts[name]["dir"]) / "images.jsonl") as f:
            for k, line in enumerate(f):
                if k in local:
                    out[int(starts[i]) + k] = json.loads(line)
    return out


def _concat(parts: dict[str, dict], rows: bool = True
            ) -> tuple[np.ndarray, np.ndarray, list[str], list[list], dict[str, list[dict]]]:
    names = sorted(parts)
    hs, owner, all_rows, errors = [], [], [], {}
    for i, name in enumerate(names):
        h, r, e = _load_part(parts[name]["dir"], rows)
        hs.append(h)
        owner.append(np.full(len(h), i, np.int32))
        all_rows += r or []
        errors[name] = e
    cat = np.concatenate(hs) if hs else np.zeros(0, np.uint64)
    return cat, (np.concatenate(owner) if owner else np.zeros(0, np.int32)), names, all_rows, errors


def _train_refs(folder: str, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    return {(sid, j): ref for sid, j, ref in train_items(folder) if (sid, j) in wanted}


def _eval_refs(cfg, name: str, wanted: set[str]) -> dict[str, Any]:
    out = {}
    for iid, ref in eval_items(cfg, name):
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
    th, t_owner, t_names, _, t_errors = _concat(hashed["train"], rows=False)
    eh, e_owner, e_names, e_rows, e_errors = _concat(hashed["eval"])
    m, mstats = match(th, eh, radius, workers=max(1, int(cfg.cluster.cpus_per_task)), return_stats=True)
    t_rows = _rows_at(hashed["train"], t_names, t_owner, set(m["train_idx"].tolist()))

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
    title = f"Train/eval pHash matches, radius {ctx.cfg.leakage.radius}: {len(pairs)} matched (sample, eval item) rows"
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
