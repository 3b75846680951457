"""The training mixture as a library: which samples are available (not excluded upstream, trainable), the plan
that meets the mixture's loss-token targets, the rows in TRL's vision SFT format, and loading a built mixture."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

from aloevision.schema import Sample
from aloevision.token_stats import STATS_FILE, iter_token_records


def features(embedded: bool = False):
    """The mixture's row features: TRL's vision SFT format (`messages` + `images`) plus `id`, `source`, `category`.
    In the mixture artifact `images` holds image-store keys (strings, `aloevision.image_store`); in the portable
    export (`embedded=True`) the images themselves (`datasets` Image: encoded bytes)."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "category": Value("string"),
            "messages": List({"role": Value("string"), "content": List(part)}),
            "images": List(Image()) if embedded else List(Value("string")),
        }
    )


def excluded_ids(results: dict[str, Any]) -> set[str]:
    """Ids removed by the stages between ingest and mix (leakage, filter), from their resolved results."""
    out: set[str] = set()
    for stage in ("leakage", "filter"):
        out.update((results.get(stage) or {}).get("excluded_ids", []))
    return out


def _token_stream(tokens_dirs: dict[str, str], excluded: set[str]) -> Iterator[tuple[str, str, dict]]:
    """(folder key, source name, token record) of every trainable sample (not excluded, not dropped)."""
    for key, d in sorted(tokens_dirs.items()):
        for rec in iter_token_records(d):
            if "drop" in rec or rec["id"] in excluded:
                continue
            yield key, rec["source"], rec


def available_stats(tokens_dirs: dict[str, str], excluded: set[str]) -> tuple[list, dict[str, int]]:
    """Per-source SourceStats of the trainable samples, and counts of token-stage drops / upstream exclusions."""
    from aloevision.planning import SourceStats

    meta = {}
    for d in tokens_dirs.values():
        for r in json.loads((Path(d) / STATS_FILE).read_text())["sources"]:
            meta[r["name"]] = r
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    skipped = {"excluded": 0, "token_drops": 0}
    for d in tokens_dirs.values():
        for rec in iter_token_records(d):
            if "drop" in rec:
                skipped["token_drops"] += 1
            elif rec["id"] in excluded:
                skipped["excluded"] += 1
            else:
                a = acc[rec["source"]]
                a[0] += 1
                for i, k in enumerate(("loss", "total", "text", "image"), 1):
                    a[i] += rec[k]
    stats = []
    for name, m in sorted(meta.items()):
        a = acc.get(name, [0, 0, 0, 0, 0])
        stats.append(SourceStats(name=name, domain=m["domain"], modality=m["modality"], samples=a[0],
                                 loss_tokens=a[1], total_tokens=a[2], text_tokens=a[3], image_tokens=a[4]))
    return stats, skipped


def iter_image_keys(folder: str | Path) -> Iterator[dict[str, Any]]:
    """The `images` stage's records of a folder of samples (`{"id", "keys"}`, aligned with its samples.jsonl)."""
    with open(Path(folder) / "keys.jsonl") as f:
        for line in f:
            yield json.loads(line)


def mixture_rows(ingest_dirs: dict[str, str], tokens_dirs: dict[str, str], keys_dirs: dict[str, str],
                 excluded: set[str], fractions: dict[str, float], seed: int,
                 skipped: dict[str, int] | None = None,
                 want: Callable[[str], bool] | None = None) -> Iterator[tuple[dict[str, Any], int]]:
    """(row, loss tokens) of every selected row, images named by their image-store keys (no image is read).
    Samples whose image the `images` stage could no longer read are skipped, counted in
    `skipped["image_unavailable"]`. `want(sample id)`: only those samples (a mix shard; the others' sample lines
    are not even parsed)."""
    from aloevision.planning import copies_for

    skipped = {} if skipped is None else skipped
    for key in sorted(ingest_dirs):
        with open(Path(ingest_dirs[key]) / "samples.jsonl") as fs, open(Path(keys_dirs[key]) / "keys.jsonl") as fk:
            for line, rec, kline in zip(fs, iter_token_records(tokens_dirs[key]), fk, strict=True):
                if "drop" in rec or rec["id"] in excluded or (want is not None and not want(rec["id"])):
                    continue
                s, keys = Sample.from_dict(json.loads(line)), json.loads(kline)
                if rec["id"] != s.id or keys["id"] != s.id:
                    bad = tokens_dirs[key] if rec["id"] != s.id else keys_dirs[key]
                    raise RuntimeError(f"artifact {bad} is out of step with {ingest_dirs[key]} "
                                       f"({rec['id'] if rec['id'] != s.id else keys['id']} != {s.id}); "
                                       "delete it to rebuild")
                if any(k is None for k in keys["keys"]):
                    skipped["image_unavailable"] = skipped.get("image_unavailable", 0) + 1
                    continue
                k = copies_for(s.id, s.source, fractions.get(s.source, 1.0), seed)
                if not k:
                    continue
                messages = [
                    {"role": m["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in m["content"]]}
                    for m in s.messages
                ]
                for c in range(k):  # repeats (fraction > 1) get distinct ids
                    yield ({"id": s.id if c == 0 else f"{s.id}#{c}", "source": s.source, "category": s.category,
                            "messages": messages, "images": list(keys["keys"])}, rec["loss"])


def mixture_with_built_sources(cfg, results: dict[str, Any]):
    """The mixture config plus the sets upstream stages built (the AR set): sources of this mixture too."""
    built = (results.get("adversarial") or {}).get("sources", {})
    if not built:
        return cfg.mixture
    from omegaconf import OmegaConf

    mixture = OmegaConf.to_container(cfg.mixture, resolve=True)
    mixture["sources"].update(built)
    return mixture


def build_plan(cfg, results: dict[str, Any], stats: list) -> dict[str, Any]:
    """The mixture's plan on the measured (available) stats; the reference's steps on the same stats (its other
    sources measured by the tokens stage too)."""
    from aloevision.planning import make_plan, reference_steps_from

    ref_stats = list(stats)
    have = {s.name for s in stats}
    extra = (results.get("tokens") or {}).get("reference_artifacts") or {}
    if extra:
        more, _ = available_stats(extra, set())
        ref_stats += [s for s in more if s.name not in have]
    plan = make_plan(mixture_with_built_sources(cfg, results), stats, cfg.model.recipe, cfg.cluster, seed=int(cfg.seed), train=cfg.train,
                     total_loss_tokens=cfg.mixture.total_loss_tokens, stats_meta={"measured": True},
                     reference_steps=reference_steps_from(cfg, ref_stats))
    return plan.to_dict()


def mixture_files(mix: dict[str, Any] | str | Path) -> list[Path]:
    """The row files of a built mixture (the mix stage's result, or its artifact / data folder), in order."""
    if isinstance(mix, dict):
        mix = mix["data"]
    d = Path(mix)
    d = d / "data" if (d / "data").is_dir() else d
    files = sorted(d.glob("train-*.arrow"))
    if not files:
        raise FileNotFoundError(f"no mixture row files (train-*.arrow) in {d}")
    return files


def load_mixture(mix: dict[str, Any] | str | Path, cache_dir: str | Path | None = None):
    """A built mixture as a `datasets.Dataset`, memory-mapped from the artifact's Arrow files: no copy is made (no
    `datasets` cache). Its `images` are image-store keys: resolve them with `image_store_of(mix)` (the training
    collator does). `cache_dir` is unused (kept for callers of the older signature)."""
    from datasets import Dataset, concatenate_datasets

    parts = [Dataset.from_file(str(f)) for f in mixture_files(mix)]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def image_store_of(mix: dict[str, Any] | str | Path):
    """The image store a built mixture's keys refer to (recorded in its `mixture.json`)."""
    from aloevision.image_store import ImageStore

    if isinstance(mix, dict) and mix.get("image_store"):
        return ImageStore(mix["image_store"])
    d = Path(mix["path"] if isinstance(mix, dict) else mix)
    d = d.parent if d.name == "data" else d
    return ImageStore(json.loads((d / "mixture.json").read_text())["image_store"])
