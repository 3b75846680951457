"""The reference the columnar score index is checked against: the review selection computed by sorting full
ScoreRecords (the code before `ScoreIndex`). One copy, used by tests/unit/test_scoring_index.py and by
benchmarks/score_store_bench.py (same-results check at the benchmark's subsample)."""

from __future__ import annotations

from aloevision.scoring.store import ScoreRecord
from aloevision.scoring.thresholds import Thresholds


def select_examples_reference(records: list[ScoreRecord], thr: Thresholds, k: int = 4) -> dict[str, list[ScoreRecord]]:
    """review.select_examples as it was before the columnar index: sorting full records."""
    scored = sorted((r for r in records if r.score is not None), key=lambda r: (r.score, r.id))
    with_ppl = sorted((r for r in records if r.ppl is not None), key=lambda r: (r.ppl, r.id))
    groups = {"lowest score": scored[:k], "highest score": scored[::-1][:k],
              "lowest perplexity": with_ppl[:k], "highest perplexity": with_ppl[::-1][:k]}
    if thr.min_score is not None:
        groups[f"just inside min_score={thr.min_score:g}"] = [r for r in scored if r.score >= thr.min_score][:k]
        groups[f"just outside min_score={thr.min_score:g}"] = [r for r in scored if r.score < thr.min_score][::-1][:k]
    if thr.min_ppl is not None:
        groups[f"just inside min_ppl={thr.min_ppl:g}"] = [r for r in with_ppl if r.ppl >= thr.min_ppl][:k]
        groups[f"just outside min_ppl={thr.min_ppl:g}"] = [r for r in with_ppl if r.ppl < thr.min_ppl][::-1][:k]
    if thr.max_ppl is not None:
        groups[f"just inside max_ppl={thr.max_ppl:g}"] = [r for r in with_ppl if r.ppl <= thr.max_ppl][::-1][:k]
        groups[f"just outside max_ppl={thr.max_ppl:g}"] = [r for r in with_ppl if r.ppl > thr.max_ppl][:k]
    failures = [r for r in records if r.score is None]
    if failures:
        groups["parse failures"] = failures[:k]
    return groups


def keyword_tags_reference(text: str) -> dict[str, list[str]]:
    """rules.keyword_tags as it was before the first-word lookup: every keyword's case-insensitive regex searched
    in every text (benchmarks/rules_bench.py and tests/unit/test_taxonomy.py check the fast one gives the same tags)."""
    from aloevision.scoring.rules import _UNSAFE, ALIASES, TAG_FIELDS, VOCAB, keyword_regex

    global _REFERENCE_PATTERNS
    if _REFERENCE_PATTERNS is None:
        _REFERENCE_PATTERNS = {}
        for f in TAG_FIELDS:
            terms = {t: t for t in VOCAB[f] if t != "Other"}
            terms.update({a: c for a, c in ALIASES[f].items() if a not in _UNSAFE})
            _REFERENCE_PATTERNS[f] = [(keyword_regex(t), c) for t, c in terms.items() if keyword_regex(t)]
    tags: dict[str, list[str]] = {}
    for f, pats in _REFERENCE_PATTERNS.items():
        hits: dict[str, int] = {}
        for pat, canon in pats:
            m = pat.search(text)
            if m and (canon not in hits or m.start() < hits[canon]):
                hits[canon] = m.start()
        tags[f] = sorted(hits, key=hits.get)
    return tags


_REFERENCE_PATTERNS = None
