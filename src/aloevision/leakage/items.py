"""The images the leakage control looks at: every image of a folder of training samples, of an evaluation set, by
sample (or item) and position, optionally one shard of the distinct images (`image_shard`)."""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

from aloevision.config import ConfigError
from aloevision.ingestion import iter_samples


def image_shard(ref: Any, n: int) -> int:
    """The hash shard of an image: by its reference (path, `archive::member`), or its bytes when embedded. Shards
    split distinct images, so an image several samples (or sources, or evaluation items) share is decoded by one
    array task only."""
    from aloevision.scoring.store import shard_of

    if isinstance(ref, (bytes, bytearray, memoryview)):
        ref = "bytes:" + hashlib.blake2b(bytes(ref), digest_size=16).hexdigest()
    return shard_of(str(ref), n)


def train_items(folder: str, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, int, Any]]:
    """(sample id, image position, reference) of every image of a folder of samples; with a shard, only the images
    of that shard (`image_shard`)."""
    k, n = shard
    for s in iter_samples(folder):
        for j, ref in enumerate(s.images):
            if n == 1 or image_shard(ref, n) == k:
                yield s.id, j, ref


def eval_items(cfg, name: str, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, Any]]:
    from aloevision.evalsets import iter_eval_images

    k, n = shard
    bench = cfg.eval.benchmarks[name]
    try:
        for item_id, ref in iter_eval_images(bench):
            if n == 1 or image_shard(ref, n) == k:
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
