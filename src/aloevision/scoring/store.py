"""Score records and their cache: one append-only JSONL file per shard under a folder named by the scorer's
fingerprint, flushed and fsynced after every batch, so a killed job loses at most the batch in flight and a rerun
skips every sample already written. Changing the scorer (models, prompt, mask, lengths) changes the fingerprint and
therefore the folder; changing thresholds does not, so the filtering ablation reuses every score."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from aloevision.utils.locks import file_lock

log = logging.getLogger(__name__)


@dataclass
class ScoreRecord:
    """Everything the score stage learned about one sample."""

    id: str
    source: str
    score: float | None = None  # LVLM sample quality 1-5; None when the output could not be parsed
    tags: dict[str, list[str]] = field(default_factory=dict)  # MOD/MED/ST/SBP/GBP -> tags in priority order
    parse_failure: str | None = None  # empty_output | missing_sq | malformed_sq | sq_out_of_range | image_error | ...
    parse_detail: str = ""
    oov: dict[str, list[str]] = field(default_factory=dict)  # out-of-vocabulary tags dropped, per field
    missing_fields: list[str] = field(default_factory=list)
    raw_output: str = ""  # the scorer's text (truncated), for the review gallery
    ppl: float | None = None  # exp(mean NLL over the SFT-trained tokens)
    nll_mean: float | None = None
    n_loss_tokens: int = 0
    ppl_failure: str | None = None  # no_loss_tokens | image_error | ...
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreRecord":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def shard_of(sample_id: str, n_shards: int) -> int:
    """Stable shard of a sample (same on every machine and Python run, unlike hash()): for SLURM job arrays."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


class ScoreStore:
    """Cached scores of one scorer fingerprint: `<root>/<fingerprint>/part-<shard>-of-<n>.jsonl`.

    Reading merges every part file (any shard layout), so a later run with a different shard count, or the filter
    stage, sees all finished samples. A torn last line (job killed mid-write) is skipped and counted.
    """

    def __init__(self, root: str | Path, fingerprint: str, shard: int = 0, n_shards: int = 1):
        if not 0 <= shard < n_shards:
            raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
        self.fingerprint = fingerprint
        self.dir = Path(root) / fingerprint
        self.shard, self.n_shards = shard, n_shards
        self.path = self.dir / f"part-{shard:05d}-of-{n_shards:05d}.jsonl"
        self.torn_lines = 0
        self._records: dict[str, ScoreRecord] | None = None

    def _load(self) -> dict[str, ScoreRecord]:
        if self._records is None:
            self._records = {}
            self.torn_lines = 0
            for part in sorted(self.dir.glob("part-*.jsonl")):
                with open(part, encoding="utf-8") as fh:
                    for line in fh:
                        if not line.endswith("\n"):  # unterminated: the write was cut off
                            self.torn_lines += 1
                            continue
                        try:
                            rec = ScoreRecord.from_dict(json.loads(line))
                        except (json.JSONDecodeError, TypeError) as e:
                            self.torn_lines += 1
                            log.warning("skipping unreadable score line in %s: %s", part, e)
                            continue
                        self._records[rec.id] = rec  # a re-scored sample: the latest line wins
            if self.torn_lines:
                log.warning("%d torn/unreadable lines in %s (those samples will be re-scored)", self.torn_lines, self.dir)
        return self._records

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._load()

    def __len__(self) -> int:
        return len(self._load())

    def get(self, sample_id: str) -> ScoreRecord | None:
        return self._load().get(sample_id)

    def all(self) -> dict[str, ScoreRecord]:
        return dict(self._load())

    def reload(self) -> None:
        self._records = None

    def write(self, records: Iterable[ScoreRecord]) -> None:
        """Append a batch and make it durable before returning."""
        records = list(records)
        if not records:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        with file_lock(self.path.with_suffix(".lock")):
            self._repair_tail()
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
        cache = self._load()
        for r in records:
            cache[r.id] = r

    def _repair_tail(self) -> None:
        """Terminate a torn last line so the next record starts on its own line (the torn one stays unreadable)."""
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")

    def records_for(self, sample_ids: Iterable[str]) -> Iterator[tuple[str, ScoreRecord]]:
        cache = self._load()
        for sid in sample_ids:
            if sid in cache:
                yield sid, cache[sid]
