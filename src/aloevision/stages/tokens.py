"""Stage `tokens`: per-sample token statistics (total / loss / text / image) for the configured model's processor.

One cached artifact per source, keyed by that source's ingest artifact and the processor's identity, so every
mixture of a sweep (and a later `stage=plan`) shares them. Each artifact holds, streamed:

* `stats.jsonl`: one line per ingested sample, in ingest order: `{"id", "source", "total", "loss", "text", "image",
  "images"}` or `{"id", "source", "drop": reason, "detail"}` for samples that cannot be trained on (`too_many_tokens`:
  longer than `model.max_length`, the paper's 4096 rule; unreadable images, ...);
* `drops.jsonl` and `report.json` (counts per reason);
* `source_stats.json`: the per-source summary `aloevision.planning.load_stats` reads.

The run folder gets `source_stats.json` (all sources of this run, the file to point `plan.stats=` at later) and
`tokens_report.md`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from aloevision.schema import Drop

log = logging.getLogger(__name__)
TOKENS_VERSION = "1"  # bump when counting changes what is written
STATS_FILE = "source_stats.json"


def processor_identity(cfg) -> dict[str, Any]:
    """What the counts depend on: the tokenizer/template (checkpoint or tiny spec), the resize rule, max_length."""
    from aloevision.model.qwen_tokenizer import BUILD_VERSION

    m = cfg.model
    return {
        "checkpoint": m.checkpoint,
        "tiny": OmegaConf.to_container(m.tiny, resolve=True) if m.tiny is not None else None,
        "min_pixels": int(m.min_pixels),
        "max_pixels": int(m.max_pixels),
        "max_length": int(m.max_length),
        "offline_tokenizer": BUILD_VERSION,
    }


def _count_source(folder: str, counter_fn, name: str, out: Path) -> None:
    from aloevision.stages.ingest import iter_samples
    from aloevision.tokens import summarize

    counter = counter_fn()
    reasons: Counter[str] = Counter()

    def records() -> Iterator:
        with open(out / "stats.jsonl", "w") as fs, open(out / "drops.jsonl", "w") as fd:
            stream = counter.iter_stats(iter_samples(folder))
            for s, r in tqdm(stream, desc=f"tokens {name}", unit=" samples", leave=False):
                if isinstance(r, Drop):
                    reasons[r.reason] += 1
                    fd.write(json.dumps(r.to_dict()) + "\n")
                    fs.write(json.dumps({"id": s.id, "source": s.source, "drop": r.reason, "detail": r.detail}) + "\n")
                else:
                    fs.write(json.dumps({"id": s.id, "source": s.source, **r.to_dict()}) + "\n")
                    yield s, r

    rows = summarize(records())  # summarised on the fly: no sample is held
    (out / STATS_FILE).write_text(json.dumps({"sources": rows}, indent=1))
    n_kept = sum(r["samples"] for r in rows)
    (out / "report.json").write_text(json.dumps({"kept": n_kept, "drops": dict(reasons)}, indent=1))


def source_artifacts(ctx, folders: dict[str, str]) -> dict[str, Any]:
    """key -> tokens Artifact for each ingested folder (built when not cached; the processor loads lazily)."""
    cfg = ctx.cfg
    ident = processor_identity(cfg)
    processor = {}

    def counter():
        from aloevision.model.qwen_tokenizer import load_model_processor
        from aloevision.tokens import TokenCounter

        if "p" not in processor:
            processor["p"] = load_model_processor(cfg.model, cfg.paths.cache_dir)
        return TokenCounter(processor["p"], max_length=int(cfg.model.max_length))

    out = {}
    for key, folder in sorted(folders.items()):
        art_key = {"ingest": Path(folder).name, "processor": ident, "version": TOKENS_VERSION}
        out[key] = ctx.store.get_or_build("tokens", art_key, lambda tmp, f=folder, k=key: _count_source(f, counter, k, tmp))
    return out


def reference_sources(cfg) -> dict[str, Any]:
    """Sources of `mixture.reference_mixture` that this run's mixture lacks: their stats are needed to compute the
    reference's optimizer steps on the same data (`aloevision.planning.reference_steps_from`)."""
    from aloevision.planning import _get, compose_mixture

    ref = _get(cfg.mixture, "reference_mixture")
    if not ref or str(ref) == str(cfg.mixture.name):
        return {}
    have = {s.name for s in cfg.mixture.sources.values()}
    return {k: v for k, v in compose_mixture(str(ref)).sources.items() if v.name not in have}


def ingest_sources(ctx, sources: dict[str, Any]) -> dict[str, str]:
    """Ingest artifacts (cached, same key as the ingest stage) for sources outside this run's mixture."""
    from aloevision.stages import ingest
    from aloevision.utils.fingerprint import data_stamp

    out = {}
    for key, src in sources.items():
        art_key = {"source": OmegaConf.to_container(src, resolve=True), "stamp": data_stamp(src.path),
                   "seed": ctx.cfg.seed, "version": ingest.INGEST_VERSION}
        art = ctx.store.get_or_build("ingest", art_key, lambda tmp, s=src: ingest._ingest_source(s, ctx.cfg.seed, tmp))
        out[key] = str(art.path)
    return out


def iter_token_records(artifact_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The per-sample lines of a tokens artifact, in ingest order."""
    with open(Path(artifact_dir) / "stats.jsonl") as f:
        for line in f:
            yield json.loads(line)


def merged_stats(artifacts: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for art in artifacts.values():
        rows += art.read_json(STATS_FILE)["sources"]
    names = [r["name"] for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"source name(s) {dup} appear in more than one ingested folder")
    return sorted(rows, key=lambda r: r["name"])


def run(ctx) -> dict[str, Any]:
    from aloevision.planning import write_stats
    from aloevision.stages.ingest import training_artifacts

    folders = training_artifacts(ctx)
    # The reference mixture's other sources are measured too, so a later plan can compute the reference's steps.
    folders |= {k: v for k, v in ingest_sources(ctx, reference_sources(ctx.cfg)).items() if k not in folders}
    arts = source_artifacts(ctx, folders)
    rows = merged_stats(arts)
    reports = {k: a.read_json("report.json") for k, a in arts.items()}
    stats_path = write_stats(ctx.run_dir / STATS_FILE, rows, model=ctx.cfg.model.name,
                             processor=processor_identity(ctx.cfg))
    cols = ["source", "domain", "modality", "samples", "loss_tokens", "total_tokens", "text_tokens", "image_tokens"]
    table = [[r["name"], r["domain"], r["modality"], r["samples"], r["loss_tokens"], r["total_tokens"],
              r["text_tokens"], r["image_tokens"]] for r in rows]
    lines = [f"# Token statistics (model={ctx.cfg.model.name}, max_length={ctx.cfg.model.max_length})", "",
             "| " + " | ".join(cols) + " | dropped |", "|" + "---|" * 3 + "---:|" * 5 + "---|"]
    drops_by_name = {}
    for k, rep in reports.items():
        drops_by_name[k] = ", ".join(f"{r}: {n}" for r, n in sorted(rep["drops"].items())) or "-"
    for row in table:
        lines.append("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " | "
                     + drops_by_name.get(row[0], "-") + " |")
    lines += ["", f"Plan from these statistics later: `python launch.py stage=plan plan.stats={stats_path}`"]
    (ctx.run_dir / "tokens_report.md").write_text("\n".join(lines) + "\n")
    ctx.tracker.table("tokens/stats", cols, table)
    ctx.tracker.stage_report("tokens", {"stats": str(stats_path), "reports": reports})
    ctx.tracker.add_paths(source_stats=stats_path)
    return {"stats": str(stats_path), "artifacts": {k: str(a.path) for k, a in arts.items()}, "sources": rows,
            "reports": reports}
