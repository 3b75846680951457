"""Token statistics as a library: per-sample total / loss / text / image tokens of an ingest artifact, counted
with the configured model's processor, into a cached `tokens` artifact (see the `tokens` stage for its files)."""

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


def count_source(folder: str, counter_fn, name: str, out: Path) -> None:
    from aloevision.ingestion import iter_samples
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


def token_artifacts(store, cfg, folders: dict[str, str]) -> dict[str, Any]:
    """key -> tokens Artifact for each ingested folder (built when not cached; the processor loads lazily)."""
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
        out[key] = store.get_or_build("tokens", art_key, lambda tmp, f=folder, k=key: count_source(f, counter, k, tmp))
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


def ingest_sources(store, cfg, sources: dict[str, Any]) -> dict[str, str]:
    """Ingest artifacts (cached, the ingest stage's key) for sources outside this run's mixture."""
    from aloevision.ingestion import ingested

    return {key: str(ingested(store, src, cfg.seed).path) for key, src in sources.items()}


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
