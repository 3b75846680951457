"""Stage `filter`: the semi-automatic quality filter of paper section 3 (engine: aloevision.scoring): per-source
thresholds on the scores of the shared store.

It needs the `score` stage upstream (and `leakage` when it is on): the stage graph runs them first, so the store holds
every score and the thresholds see them all. It writes its report, per-source histograms and galleries, and the
coverage heatmaps into `<run_dir>/filter/` (from a cached `filter` decision artifact) and returns the removed ids.
"""

from __future__ import annotations

import json
import logging
import shutil
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from aloevision.ingestion import iter_samples, sample_folders
from aloevision.schema import Sample

log = logging.getLogger(__name__)
OUT_DIR = "filter"  # under the run folder
FILTER_VERSION = "1"  # bump when what a filter decision artifact holds changes


def _training_samples(ctx) -> Iterator[Sample]:
    for _, folder in sorted(sample_folders(ctx.results).items()):
        yield from iter_samples(folder)


# ---- filtering ---------------------------------------------------------------------------------------------------
def _log_html(ctx, key: str, path: Path) -> None:
    if ctx.tracker.run is None:
        return
    try:
        import wandb

        ctx.tracker.log({key: wandb.Html(path.read_text(encoding="utf-8"))})
    except Exception as e:  # W&B must never fail the job
        log.warning("W&B html %s failed (%s)", key, e)


def _write_filter_md(path: Path, report: dict, scoring_summary: dict, review_paths: dict, cov: dict,
                     coverage_note: str) -> None:
    from aloevision.scoring.thresholds import REASONS as reasons

    rows = report["per_source"]
    lines = ["# Quality filter report", "",
             f"Scores: {scoring_summary['samples']} samples, {scoring_summary['computed']} computed, "
             f"{scoring_summary['cached']} from the cache, {scoring_summary['model_calls_total']} model calls.", "",
             "| source | total | kept | removed | " + " | ".join(reasons) + " | min_score | min_ppl | max_ppl |",
             "|---|" + "---:|" * (3 + len(reasons)) + "---:|---:|---:|"]
    for src, c in list(rows.items()) + [("TOTAL", {**report["total"], "thresholds": {}})]:
        t = c["thresholds"]
        lines.append(f"| {src} | {c['total']} | {c['kept']} | {c['removed']} | "
                     + " | ".join(str(c[r]) for r in reasons) + " | "
                     + " | ".join("-" if t.get(k) is None else f"{t[k]:g}" for k in ("min_score", "min_ppl", "max_ppl"))
                     + " |")
    lines += ["", "## Review (thresholds drawn; galleries of extremes and near-threshold examples)", ""]
    for src, p in review_paths.items():
        hist, gallery = p["hist"].relative_to(path.parent), p["gallery"].relative_to(path.parent)
        lines.append(f"- {src}: ![]({hist}) [gallery]({gallery})")
    lines += ["", "## Coverage (paper Figure 1)", "", coverage_note, ""]
    for name, c in cov.items():
        lines.append(f"- {name}: {c['tagged']} tagged, {c['untagged']} untagged, {c['cells_covered']} cells "
                     f"([csv]({c['csv'].relative_to(path.parent)}))  \n  ![]({c['png'].relative_to(path.parent)})")
    path.write_text("\n".join(lines) + "\n")


def run(ctx) -> dict[str, Any]:
    """Stage `filter`: thresholds per source on the cached scores; report, review and coverage in <run>/filter/.

    The decisions are an artifact (`filter`, keyed by the score store, the samples, the thresholds and the leakage
    decisions): `excluded.jsonl` with a reason per removed sample, which any later job's mix stage reuses."""
    cfg = ctx.cfg
    if not cfg.filter.enabled:
        log.info("filter: filter=%s is disabled, every sample is kept", cfg.filter.name)
        return {"excluded_ids": [], "report": {"enabled": False}, "skipped": True}

    scored = ctx.results["score"]  # resolved upstream by the stage graph: unsharded, every sample in the store
    leakage = ctx.results.get("leakage") or {}
    key = {"scores": scored["fingerprint"], "samples": {k: Path(v).name for k, v in sample_folders(ctx.results).items()},
           "filter": OmegaConf.to_container(cfg.filter, resolve=True), "leakage": leakage.get("artifact"),
           "version": FILTER_VERSION}
    art = ctx.store.get_or_build("filter", key, lambda tmp: _decide(ctx, scored, set(leakage.get("excluded_ids", [])),
                                                                    Path(tmp)))
    out = ctx.run_dir / OUT_DIR
    shutil.copytree(art.path, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("_SUCCESS", "key.json"))
    d = json.loads((out / "decisions.json").read_text())
    rep, by_reason, rows = d["report"], d["drops_by_reason"], d["rows"]
    review_paths = {src: {k: out / v for k, v in p.items()} for src, p in d["review"].items()}
    cov = {name: {k: out / v if k in ("png", "csv") else v for k, v in c.items()} for name, c in d["coverage"].items()}
    md = out / "filter_report.md"

    # W&B: the per-source table, metrics, histograms, galleries, heatmaps
    cols = list(rows[0]) if rows else []
    ctx.tracker.table("filter/report", cols, [[r[c] for c in cols] for r in rows])
    ctx.tracker.summary({"filter/kept": rep["total"]["kept"], "filter/removed": rep["total"]["removed"],
                         **{f"filter/removed_{r}": n for r, n in by_reason.items()}})
    for src, p in review_paths.items():
        ctx.tracker.image(f"filter/hist/{src}", p["hist"], caption=f"{src}: score and perplexity, thresholds dashed")
        _log_html(ctx, f"filter/gallery/{src}", p["gallery"])
    for name, c in cov.items():
        ctx.tracker.image(f"filter/coverage/{name}", c["png"], caption=f"coverage {name} (n={c['tagged']})")

    result = {
        "excluded_ids": d["excluded_ids"],
        "report": rep,
        "drops_by_reason": by_reason,
        "scoring": scored,
        "artifact": str(art.path),
        "cached": art.cached,
        "coverage": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in cov.items()},
        "coverage_samples": d["coverage_samples"],
        "review": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in review_paths.items()},
        "paths": {"dir": str(out), "report_md": str(md), "report_json": str(out / d["report_json"]),
                  "report_csv": str(out / d["report_csv"]), "drops": str(out / "drops.jsonl"),
                  "excluded": str(art.path / "excluded.jsonl")},
    }
    ctx.tracker.stage_report("filter", {k: v for k, v in result.items() if k != "excluded_ids"}
                             | {"excluded": len(d["excluded_ids"])})
    ctx.tracker.add_paths(filter_report=md)
    log.info("filter: kept %d, removed %d %s; report %s%s", rep["total"]["kept"], rep["total"]["removed"],
             by_reason, md, " (cached)" if art.cached else "")
    return result


def _decide(ctx, scored: dict[str, Any], leaked: set[str], out: Path) -> None:
    """The filter decisions over this run's samples into ``out``: drops.jsonl / excluded.jsonl (id + reason), the
    report (md/json/csv), review histograms + galleries, coverage heatmaps, and decisions.json (what the stage logs)."""
    import numpy as np

    from aloevision import scoring
    from aloevision.scoring.store import ScoreRows, ScoreStore
    from aloevision.scoring.thresholds import iter_scored_decisions

    cfg = ctx.cfg
    # The store's columns, not its records: millions of scores in ~60 bytes each (aloevision.scoring.store).
    table = ScoreStore(Path(scored["store"]).parent, scored["fingerprint"]).table()
    report = scoring.FilterReport()
    excluded: list[str] = []
    by_reason: Counter = Counter()
    # Rows of this run's scored samples, in sample order (the shared store also holds other mixtures' samples:
    # review only ours), and whether each is in the final pool (kept, not leaked): 5 bytes a sample.
    run_rows = array("I" if len(table) < 2 ** 32 else "q")
    final = array("B")
    unscored_final = 0
    with open(out / "drops.jsonl", "w") as drops_fh, open(out / "excluded.jsonl", "w") as excl_fh:
        for s, row, drop in iter_scored_decisions(_training_samples(ctx), table, cfg.filter, report):
            if drop is not None:
                drops_fh.write(json.dumps(drop.to_dict()) + "\n")
                excl_fh.write(json.dumps({"id": drop.id, "reason": drop.reason}) + "\n")
                excluded.append(drop.id)
                by_reason[drop.reason] += 1
            in_pool = drop is None and s.id not in leaked
            if row is not None:
                run_rows.append(row.row)
                final.append(in_pool)
            elif in_pool:
                unscored_final += 1
    paths = report.write(out)

    run = ScoreRows(table, np.frombuffer(run_rows, dtype=run_rows.typecode))
    review_paths = scoring.review(_training_samples(ctx), run, cfg.filter, out / "review")
    # The final mixture's samples = kept here and not removed by leakage; the mix stage's own selection (caps,
    # rebalancing) is not applied yet, so these heatmaps are of the filtered pool.
    pool = run.subset(np.frombuffer(final, dtype=np.bool_))
    cov = scoring.coverage(pool, out / "coverage")
    coverage_note = (f"Over the {len(pool)} scored samples kept by the filter"
                     f"{' and the leakage stage' if leaked else ''} (the mixture's pool before the mix stage's "
                     f"selection); {unscored_final} kept samples of sources without thresholds are not tagged.")
    rep = report.to_dict()
    _write_filter_md(out / "filter_report.md", rep, scored, review_paths, cov, coverage_note)
    rel = lambda v: str(Path(v).relative_to(out)) if isinstance(v, Path) else v  # noqa: E731
    (out / "decisions.json").write_text(json.dumps({
        "report": rep, "rows": report.rows(), "drops_by_reason": dict(by_reason), "excluded_ids": sorted(excluded),
        "review": {k: {kk: rel(vv) for kk, vv in v.items()} for k, v in review_paths.items()},
        "coverage": {k: {kk: rel(vv) for kk, vv in v.items()} for k, v in cov.items()},
        "coverage_samples": len(pool), "report_json": rel(paths["json"]), "report_csv": rel(paths["csv"]),
    }, indent=1, default=str))
