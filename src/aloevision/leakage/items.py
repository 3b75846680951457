"""The images the leakage control looks at: every image of a folder of training samples, of an evaluation set, by
sample (or item) and position, optionally one shard of them (`aloevision.scoring.store.shard_of`, by id)."""

from __future__ import annotations

from typing import Any, Iterator

from aloevision.config import ConfigError
from aloevision.ingestion import iter_samples


def train_items(folder: str, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, int, Any]]:
    from aloevision.scoring.store import shard_of

    k, n = shard
    for s in iter_samples(folder):
        if n > 1 and shard_of(s.id, n) != k:
            continue
        for j, ref in enumerate(s.images):
            yield s.id, j, ref


def eval_items(cfg, name: str, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, Any]]:
    from aloevision.evalsets import iter_eval_images
    from aloevision.scoring.store import shard_of

    k, n = shard
    bench = cfg.eval.benchmarks[name]
    try:
        for item_id, ref in iter_eval_images(bench):
            if n > 1 and shard_of(f"{name}/{item_id}", n) != k:
                continue
            yield str(item_id), ref
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ConfigError(f"leakage: evaluation set {name!r} cannot be read at {bench.path} ({e})") from e


def eval_set_names(cfg) -> list[str]:
    names = list(cfg.leakage.eval_sets or [])
    unknown = [n for n in names if n not in cfg.eval.benchmarks]
    if unknown:
        raise ConfigError(f"leakage.eval_sets names {unknown}, not benchmarks of eval={cfg.eval.name} "
                          f"(known: {list(cfg.eval.benchmarks)})")
    return names
