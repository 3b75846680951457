"""Evaluation-set loaders: each yields `EvalItem`s from a set's native format (HF datasets, VLMEvalKit TSVs with
base64 images, JSON + image folders/zips). Used by the eval stage and, for their images, by leakage hashing.

`LOADERS[name](bench_cfg, stats=None, require_answer=True)` -> Iterator[EvalItem]. `bench_cfg` is a
BenchmarkConfig (or DictConfig / dict) with `name`, `kind`, `path`, `split`, `options`. Malformed rows never crash a
load: they are skipped and counted by reason in a `LoadStats` (pass one in to read the counts; otherwise they are
logged when the iterator is exhausted). `max_samples` is NOT applied here (the eval stage truncates; leakage
hashing must see every image).

Registered loaders (paper sets of datasets.md E1-E9, and the demo sets, which are written in the same formats):
  vlmevalkit_tsv  PathMMU, GMAI-MMBench, OmniMedVQA (TSV), MMMU_DEV_VAL, demo MCQ   (vlm.py)
  omnimedvqa      OmniMedVQA native QA_information/*.json                            (vlm.py)
  probmed         ProbMed, demo yes/no                                               (vlm.py)
  slake           SLAKE json + imgs/ or imgs.zip, demo open-ended                    (vlm.py)
  mmmu            MMMU HF parquet                                                    (vlm.py)
  careqa_vision   CareQA-Vision close/open, demo CareQA-V                            (vlm.py)
  careqa, medmcqa, medqa, pubmedqa, mmlu   text MCQ, demo MedMCQA-like              (text.py)
"""

from __future__ import annotations

from typing import Any, Iterator

from aloevision.evalsets.base import Bench, EvalItem, LoadStats, SkipRow
from aloevision.evalsets.registry import LOADERS
from aloevision.evalsets import text as _text  # noqa: F401  (registers loaders)
from aloevision.evalsets import vlm as _vlm  # noqa: F401  (registers loaders)

__all__ = ["EvalItem", "LoadStats", "SkipRow", "Bench", "LOADERS", "load_benchmark", "iter_eval_images"]


def _loader_of(bench_cfg: Any):
    name = bench_cfg.get("loader") if isinstance(bench_cfg, dict) else getattr(bench_cfg, "loader", None)
    if name not in LOADERS:
        raise KeyError(f"benchmark loader {name!r} is not registered; choose one of {', '.join(sorted(LOADERS))}")
    return LOADERS[name]


def load_benchmark(bench_cfg: Any, require_answer: bool = True) -> tuple[list[EvalItem], LoadStats]:
    """All items of a benchmark and the load statistics (rows, items, skips by reason with examples)."""
    stats = LoadStats(Bench.of(bench_cfg).name)
    items = list(_loader_of(bench_cfg)(bench_cfg, stats=stats, require_answer=require_answer))
    stats.log()
    return items, stats


def iter_eval_images(bench_cfg: Any, stats: LoadStats | None = None) -> Iterator[tuple[str, Any]]:
    """(item id, image) for every image of a benchmark, including rows without a reference answer (hidden test
    labels). An image is a path string, an `<archive>::<member>` reference (see aloevision.images) or raw bytes
    (base64-decoded TSV cells, parquet cells). Multi-image items yield `<id>#<k>` for k > 0. An image shared by
    several rows (VLMEvalKit index references) is yielded once per row."""
    for item in _loader_of(bench_cfg)(bench_cfg, stats=stats, require_answer=False):
        for k, img in enumerate(item.images):
            yield (item.id if k == 0 else f"{item.id}#{k}"), img
