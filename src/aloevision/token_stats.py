"""Token statistics as a library: per-sample total / loss / text / image tokens of an ingest artifact, counted
with the configured model's processor, into a cached `tokens` artifact (see the `tokens` stage for its files).

Sharded (`cluster.data_shards=n`, array task k): shard k counts the samples of the ingest artifact's lines
`i` with `(i // TOKENS_BLOCK) % n == k` into a `tokens_shard` artifact (`stats.jsonl` and `drops.jsonl` for its lines,
per-source partial sums in `source_stats.json` with the first line of each source, `part.json`). `assemble_parts`
deals the blocks back round-robin, so the assembled `tokens` artifact is byte-identical to an unsharded count (same
key: a later job cannot tell them apart); the shard artifacts are then removed."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter, deque
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from aloevision.schema import Drop

log = logging.getLogger(__name__)
TOKENS_VERSION = "1"  # bump when counting changes what is written
STATS_FILE = "source_stats.json"
TOKENS_BLOCK = 1024  # consecutive samples a shard counts together (the round-robin unit of the assembly)


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


def _line_shard(i: int, n: int) -> int:
    return (i // TOKENS_BLOCK) % n


def count_part(folder: str, counter_fn, name: str, out: Path, k: int, n: int) -> dict[str, Any]:
    """Shard k of n of `count_source`: the same per-sample lines for this shard's lines of `samples.jsonl` (the other
    lines are skipped unparsed), per-source partial sums with the line of each source's first sample."""
    from aloevision.schema import Sample
    from aloevision.tokens import STAT_FIELDS

    counter = counter_fn()
    lines = [0]
    line_of: deque[int] = deque()  # the line of each sample handed to the counter, not yet back from it

    def mine() -> Iterator:
        with open(Path(folder) / "samples.jsonl") as f:
            for i, line in enumerate(f):
                lines[0] = i + 1
                if _line_shard(i, n) == k:
                    line_of.append(i)
                    yield Sample.from_dict(json.loads(line))

    acc: dict[str, dict[str, Any]] = {}
    with open(out / "stats.jsonl", "w") as fs, open(out / "drops.jsonl", "w") as fd:
        for s, r in tqdm(counter.iter_stats(mine()), desc=f"tokens {name} shard {k}/{n}", unit=" samples",
                         leave=False):
            i = line_of.popleft()
            if isinstance(r, Drop):
                fd.write(json.dumps(r.to_dict()) + "\n")
                fs.write(json.dumps({"id": s.id, "source": s.source, "drop": r.reason, "detail": r.detail}) + "\n")
                continue
            fs.write(json.dumps({"id": s.id, "source": s.source, **r.to_dict()}) + "\n")
            row = acc.setdefault(s.source, {"name": s.source, "domain": s.domain, "modality": s.modality, "samples": 0}
                                 | {f"{f}_tokens": 0 for f in STAT_FIELDS} | {"first_line": i})
            row["samples"] += 1
            for f in STAT_FIELDS:
                row[f"{f}_tokens"] += getattr(r, f)
    # first_line: where the source's first kept sample is (the unsharded summary takes its domain and modality)
    (out / STATS_FILE).write_text(json.dumps({"sources": [acc[src] for src in sorted(acc)]}, indent=1))
    info = {"shard": [k, n], "block": TOKENS_BLOCK, "lines": lines[0]}
    (out / "part.json").write_text(json.dumps(info))
    return info


def assemble_parts(parts: list[Path], out: Path) -> None:
    """The `tokens` artifact from the n shard artifacts (in shard order), exactly as `count_source` writes it:
    stats lines dealt back block by block, drops in the same order, report and per-source sums recomputed."""
    from aloevision.tokens import STAT_FIELDS

    n = len(parts)
    infos = [json.loads((p / "part.json").read_text()) for p in parts]
    total = {i["lines"] for i in infos}
    if len(total) != 1 or [i["shard"] for i in infos] != [[k, n] for k in range(n)] or \
            {i["block"] for i in infos} != {TOKENS_BLOCK}:
        raise ValueError(f"tokens shards do not belong together: {infos}")
    reasons: Counter[str] = Counter()
    kept = 0
    stats = [open(p / "stats.jsonl") for p in parts]
    drops = [open(p / "drops.jsonl") for p in parts]
    try:
        with open(out / "stats.jsonl", "w") as fs, open(out / "drops.jsonl", "w") as fd:
            written = 0
            lines = total.pop()
            for b in range(-(-lines // TOKENS_BLOCK)):
                k = b % n
                for _ in range(TOKENS_BLOCK):
                    line = stats[k].readline()
                    if not line:
                        break
                    written += 1
                    fs.write(line)
                    rec = json.loads(line)
                    if "drop" in rec:
                        reasons[rec["drop"]] += 1
                        fd.write(drops[k].readline())
                    else:
                        kept += 1
            if written != lines or any(f.readline() for f in stats + drops):
                raise ValueError(f"tokens shards hold {written}+ lines for an ingest artifact of {lines}")
    finally:
        for f in stats + drops:
            f.close()
    by_source: dict[str, list[dict[str, Any]]] = {}
    for p in parts:
        for row in json.loads((p / STATS_FILE).read_text())["sources"]:
            by_source.setdefault(row["name"], []).append(row)
    rows: dict[str, dict[str, Any]] = {}
    for src, partial in by_source.items():
        first = min(partial, key=lambda r: r["first_line"])  # domain and modality of the source's first sample
        rows[src] = {"name": src, "domain": first["domain"], "modality": first["modality"],
                     "samples": sum(r["samples"] for r in partial)}
        rows[src] |= {f"{f}_tokens": sum(r[f"{f}_tokens"] for r in partial) for f in STAT_FIELDS}
    (out / STATS_FILE).write_text(json.dumps({"sources": [rows[k] for k in sorted(rows)]}, indent=1))
    (out / "report.json").write_text(json.dumps({"kept": kept, "drops": dict(reasons)}, indent=1))


def token_artifacts(store, cfg, folders: dict[str, str], shard: tuple[int, int] | None = None,
                    counted: list[str] | None = None) -> dict[str, Any]:
    """key -> tokens Artifact for each ingested folder (built when not cached; the processor loads lazily).

    `shard=(k, n)`: this job is array task k of n: only the `tokens_shard` artifacts of shard k are built (and
    returned). Otherwise, with `cluster.data_shards=n > 1` and shards on disk, each artifact is assembled from its
    shards (a missing one is counted here, with a warning) and the shards are removed; without shards it is counted
    directly (the same artifact). `counted` collects the keys whose samples this job tokenized (whole or a shard)."""
    ident = processor_identity(cfg)
    processor = {}
    counted = [] if counted is None else counted

    def counter():
        from aloevision.model.qwen_tokenizer import load_model_processor
        from aloevision.tokens import TokenCounter

        if "p" not in processor:
            processor["p"] = load_model_processor(cfg.model, cfg.paths.cache_dir)
        return TokenCounter(processor["p"], max_length=int(cfg.model.max_length))

    n_cfg = int(cfg.cluster.data_shards or 1)
    out = {}
    for key, folder in sorted(folders.items()):
        art_key = {"ingest": Path(folder).name, "processor": ident, "version": TOKENS_VERSION}

        def shard_art(k: int, n: int, f=folder, name=key, ak=art_key):
            def build(tmp: Path) -> None:
                counted.append(name)
                count_part(f, counter, name, tmp, k, n)

            return store.get_or_build("tokens_shard", {**ak, "shard": [k, n], "block": TOKENS_BLOCK}, build)

        if shard is not None:
            if (store.path_for("tokens", art_key) / "_SUCCESS").is_file():
                log.info("tokens %s: already assembled; shard %d/%d has nothing to do", key, *shard)
                continue
            out[key] = shard_art(*shard)
            continue
        have = [(store.path_for("tokens_shard", {**art_key, "shard": [k, n_cfg], "block": TOKENS_BLOCK})
                 / "_SUCCESS").is_file() for k in range(n_cfg)] if n_cfg > 1 else []
        if any(have) and not (store.path_for("tokens", art_key) / "_SUCCESS").is_file():
            if not all(have):
                log.warning("tokens %s: shards %s of %d missing; counting them in this job", key,
                            [k for k, h in enumerate(have) if not h], n_cfg)
            parts: list[Path] = []

            def build(tmp: Path, sa=shard_art) -> None:
                parts.extend(sa(k, n_cfg).path for k in range(n_cfg))
                assemble_parts(parts, tmp)

            out[key] = store.get_or_build("tokens", art_key, build)
            for part in parts:  # no later job reads a shard of an assembled artifact
                shutil.rmtree(part, ignore_errors=True)
            continue

        def build_whole(tmp: Path, f=folder, name=key) -> None:
            counted.append(name)
            count_source(f, counter, name, tmp)

        out[key] = store.get_or_build("tokens", art_key, build_whole)
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
