"""Per-source thresholds on the LVLM score and the answer perplexity: keep or drop each sample with a reason, and a
per-source report of what was kept and what was removed by which reason.

Thresholds for a source are `filter.per_source[<source>]` on top of `filter.default`: a field left null in the
per-source entry inherits the default (to switch a default threshold off for one source use min_score: 0,
min_ppl: 0 or max_ppl: .inf). A sample is checked in this order and dropped for the FIRST failing reason:

  not_scored          thresholds apply but the sample has no score record (the score stage did not cover it)
  parse_failure       min_score applies and the scorer's output had no valid SQ (reason kept in the detail)
  low_score           score < min_score
  missing_perplexity  a perplexity bound applies and no perplexity exists (no trained tokens, unreadable image)
  low_perplexity      ppl < min_ppl   (trivial answers, e.g. visible in the image)
  high_perplexity     ppl > max_ppl   (noisy or wrong answers)

A source with no threshold at all keeps everything, scored or not; `enabled: false` keeps everything everywhere.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from aloevision.schema import Drop, Sample
from aloevision.scoring.store import ScoreRecord, ScoreRow, ScoreStore, ScoreTable

# Where decisions read scores: records by id (small, tests), or a store's columns (`ScoreStore.table()`), which read
# only score, perplexity and the failure codes of each sample (a parse failure's detail comes from disk).
Scores = Mapping[str, ScoreRecord] | ScoreTable | ScoreStore

REASONS = ("not_scored", "parse_failure", "low_score", "missing_perplexity", "low_perplexity", "high_perplexity")
_KEYS = ("min_score", "min_ppl", "max_ppl")


@dataclass(frozen=True)
class Thresholds:
    min_score: float | None = None
    min_ppl: float | None = None
    max_ppl: float | None = None

    @property
    def active(self) -> bool:
        return any(getattr(self, k) is not None for k in _KEYS)

    def to_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in _KEYS}


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    if isinstance(node, Mapping):
        return node.get(key)
    return getattr(node, key, None)


def thresholds_for(filter_cfg, source: str) -> Thresholds:
    """The thresholds that apply to `source` (per-source entry over the default)."""
    default = _get(filter_cfg, "default")
    per_source = _get(filter_cfg, "per_source") or {}
    own = per_source.get(source) if hasattr(per_source, "get") else None
    vals = {}
    for k in _KEYS:
        v = _get(own, k)
        vals[k] = float(v) if v is not None else (float(_get(default, k)) if _get(default, k) is not None else None)
    return Thresholds(**vals)


def perplexity_thresholds(filter_cfg) -> list[str]:
    """The config entries that bound perplexity (`filter.default.min_ppl=1.5`, ...): with perplexity off
    (`filter.scorer.ppl_model=none`) they cannot be applied, and the score stage refuses the config."""
    out = []
    per_source = _get(filter_cfg, "per_source") or {}
    entries = [("default", _get(filter_cfg, "default"))] + [(f"per_source.{k}", v) for k, v in per_source.items()]
    for name, node in entries:
        out += [f"filter.{name}.{k}={_get(node, k)}" for k in ("min_ppl", "max_ppl") if _get(node, k) is not None]
    return out


def decide(record: ScoreRecord | ScoreRow | None, thr: Thresholds) -> tuple[str | None, str]:
    """(None, "") to keep, else (reason, detail)."""
    if not thr.active:
        return None, ""
    if record is None:
        return "not_scored", "no score record for this sample"
    if thr.min_score is not None:
        if record.score is None:
            return "parse_failure", f"{record.parse_failure or 'no score'}: {record.parse_detail}"[:200]
        if record.score < thr.min_score:
            return "low_score", f"score {record.score:g} < {thr.min_score:g}"
    if thr.min_ppl is not None or thr.max_ppl is not None:
        if record.ppl is None:
            return "missing_perplexity", record.ppl_failure or "no perplexity"
        if thr.min_ppl is not None and record.ppl < thr.min_ppl:
            return "low_perplexity", f"ppl {record.ppl:.4g} < {thr.min_ppl:g}"
        if thr.max_ppl is not None and record.ppl > thr.max_ppl:
            return "high_perplexity", f"ppl {record.ppl:.4g} > {thr.max_ppl:g}"
    return None, ""


class FilterReport:
    """Per source: total, kept, removed, and removed by reason; plus the thresholds applied."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: {"total": 0, "kept": 0, "removed": 0,
                                                                      **{r: 0 for r in REASONS}})
        self.thresholds: dict[str, dict[str, float | None]] = {}

    def add(self, source: str, thr: Thresholds, reason: str | None) -> None:
        c = self.counts[source]
        if source not in self.thresholds:  # not setdefault: to_dict() once per source, not once per sample
            self.thresholds[source] = thr.to_dict()
        c["total"] += 1
        if reason is None:
            c["kept"] += 1
        else:
            c["removed"] += 1
            c[reason] += 1

    def totals(self) -> dict[str, int]:
        out = {"total": 0, "kept": 0, "removed": 0, **{r: 0 for r in REASONS}}
        for c in self.counts.values():
            for k, v in c.items():
                out[k] += v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_source": {s: {**self.counts[s], "thresholds": self.thresholds[s]} for s in sorted(self.counts)},
            "total": self.totals(),
        }

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for s in sorted(self.counts):
            rows.append({"source": s, **self.counts[s], **self.thresholds[s]})
        rows.append({"source": "TOTAL", **self.totals(), "min_score": None, "min_ppl": None, "max_ppl": None})
        return rows

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "filter_report.json", "csv": out / "filter_report.csv"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1))
        rows = self.rows()
        with open(paths["csv"], "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return paths


def _lookup(scores: Scores) -> Callable[[Sequence[str]], list]:
    if isinstance(scores, ScoreStore):
        scores = scores.table()
    if isinstance(scores, ScoreTable):
        return scores.rows_for
    return lambda ids: [scores.get(i) for i in ids]


def iter_scored_decisions(samples: Iterable[Sample], scores: Scores, filter_cfg, report: FilterReport | None = None,
                          chunk: int = 1024) -> Iterator[tuple[Sample, ScoreRecord | ScoreRow | None, Drop | None]]:
    """(sample, its score record or None, None to keep or the Drop), in sample order; counts go into `report`.
    Ids are looked up `chunk` samples at a time (one vectorised lookup in a table)."""
    enabled = bool(_get(filter_cfg, "enabled"))
    cache: dict[str, Thresholds] = {}
    lookup = _lookup(scores)
    it = iter(samples)
    while batch := list(islice(it, chunk)):
        for s, record in zip(batch, lookup([s.id for s in batch])):
            if s.source not in cache:
                cache[s.source] = thresholds_for(filter_cfg, s.source) if enabled else Thresholds()
            thr = cache[s.source]
            reason, detail = decide(record, thr)
            if report is not None:
                report.add(s.source, thr, reason)
            yield s, record, (None if reason is None else Drop(id=s.id, source=s.source, reason=reason, detail=detail))


def iter_decisions(samples: Iterable[Sample], scores: Scores, filter_cfg,
                   report: FilterReport | None = None) -> Iterator[tuple[Sample, Drop | None]]:
    """Streaming form: (sample, None) to keep, (sample, Drop) to remove; counts go into `report`."""
    for s, _, drop in iter_scored_decisions(samples, scores, filter_cfg, report):
        yield s, drop


def apply_thresholds(samples: Iterable[Sample], scores: Scores, filter_cfg
                     ) -> tuple[list[Sample], list[Drop], FilterReport]:
    """Keep/drop every sample by its source's thresholds. `scores`: a mapping sample id -> ScoreRecord, or a
    ScoreStore (read through its columns); `filter_cfg` is a FilterConfig (dataclass or DictConfig)."""
    report = FilterReport()
    kept: list[Sample] = []
    drops: list[Drop] = []
    for s, drop in iter_decisions(samples, scores, filter_cfg, report):
        if drop is None:
            kept.append(s)
        else:
            drops.append(drop)
    return kept, drops, report
