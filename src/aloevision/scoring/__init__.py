"""Semi-automatic quality filtering (paper section 3, Appendix A): LVLM tags + 1-5 score, answer perplexity over the
SFT-trained tokens, a per-sample score cache, per-source thresholds, review galleries and coverage heatmaps.

Stage API: `score_samples(samples, scorer_cfg, store, ...)` yields (sample_id, ScoreRecord);
`apply_thresholds(samples, scores, filter_cfg)` returns (kept, drops, report); `scores` may be a ScoreStore, read
through its columns (`ScoreStore.table()`), which is how the filter stage handles millions of scores."""

from aloevision.scoring.coverage import coverage
from aloevision.scoring.review import review
from aloevision.scoring.score import needs_scoring, open_store, score_samples
from aloevision.scoring.store import ScoreRecord, ScoreRows, ScoreStore, shard_of
from aloevision.scoring.thresholds import FilterReport, apply_thresholds, thresholds_for

__all__ = ["score_samples", "open_store", "needs_scoring", "ScoreRecord", "ScoreRows", "ScoreStore", "shard_of",
           "apply_thresholds", "thresholds_for", "FilterReport", "review", "coverage"]
