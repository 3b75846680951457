"""Helping a person choose thresholds the way the paper did (by looking at the extremes of each source): per
source, histograms of score and perplexity with the thresholds drawn, and an HTML gallery of the lowest and highest
examples and of those just inside / just outside each threshold, with the images, questions and answers.

Works on score columns (`ScoreRows`), so millions of records cost a few arrays: the examples are chosen on the
arrays, and only the shown records (and the ids of rows tied at a group's cut, for the tie-break by id) are read."""

from __future__ import annotations

import base64
import heapq
import html
import io
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from aloevision.schema import Sample
from aloevision.scoring.store import ScoreRecord, ScoreRows, ScoreTable
from aloevision.scoring.taxonomy import TAG_FIELDS, qa_pairs
from aloevision.scoring.thresholds import Thresholds, decide, thresholds_for

log = logging.getLogger(__name__)
THUMB_PX = 160


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_histograms(source: str, scores: Sequence[float], ppls: Sequence[float], n_unparsed: int, thr: Thresholds,
                    path: Path) -> Path:
    """Score (1-5) and log-perplexity histograms of one source, thresholds as vertical lines. `scores`: the parsed
    scores; `ppls`: every perplexity (the positive ones are drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppls = np.asarray(ppls, dtype=float)
    ppls = ppls[ppls > 0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.hist(scores, bins=[0.5, 1.5, 2.5, 3.5, 4.5, 5.5], color="#4c72b0", edgecolor="white")
    ax1.set_xlabel("LVLM quality score")
    ax1.set_ylabel("samples")
    ax1.set_title(f"{source}: score (n={len(scores)}, unparsed={n_unparsed})", fontsize=9)
    if thr.min_score is not None:
        ax1.axvline(thr.min_score - 0.5 if float(thr.min_score).is_integer() else thr.min_score, color="red",
                    linestyle="--", label=f"min_score={thr.min_score:g}")
        ax1.legend(fontsize=8)
    if len(ppls):
        lo, hi = math.log10(float(ppls.min())), math.log10(float(ppls.max()))
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        bins = [10 ** (lo + (hi - lo) * i / 30) for i in range(31)]
        ax2.hist(ppls, bins=bins, color="#55a868", edgecolor="white")
        ax2.set_xscale("log")
        # Plain numbers, at most ~6 ticks: a narrow log range otherwise gets overlapping "7.4x10^2" minor labels.
        from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

        ax2.xaxis.set_major_locator(MaxNLocator(nbins=6) if hi - lo < 1 else
                                    LogLocator(base=10, numticks=8))
        ax2.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.3g}"))
        ax2.xaxis.set_minor_formatter(NullFormatter())
        ax2.set_xlim(bins[0], bins[-1])
    for value, label in ((thr.min_ppl, "min_ppl"), (thr.max_ppl, "max_ppl")):
        if value is not None and math.isfinite(value) and value > 0:
            ax2.axvline(value, color="red", linestyle="--", label=f"{label}={value:g}")
    if thr.min_ppl is not None or thr.max_ppl is not None:
        ax2.legend(fontsize=8)
    ax2.set_xlabel("answer perplexity (trained tokens)")
    ax2.set_title(f"{source}: perplexity (n={len(ppls)})", fontsize=9)
    ax2.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _nan_last(value: float) -> tuple[bool, float]:
    return (True, 0.0) if math.isnan(value) else (False, value)


def first_k(table: ScoreTable, rows: np.ndarray, values: np.ndarray, k: int, descending: bool = False) -> np.ndarray:
    """The first k of `rows` in (value, id) order, or in (value, id) descending order: what sorting the full
    records would give. Ids are read only for rows that can make the cut: those before the k-th value and those
    tied with it (the tie-break by id). NaN values sort last either way."""
    if k <= 0 or not len(rows):
        return rows[:0]
    v = -values if descending else values
    if len(v) > k:
        kth = np.partition(v, k - 1)[k - 1]
        nan = np.isnan(v)
        before, tied = (~nan, nan) if np.isnan(kth) else (v < kth, v == kth)
        sure, sure_v, tied_rows = rows[before], v[before], rows[tied]  # fewer than k sure ones
    else:
        sure, sure_v, tied_rows = rows, v, rows[:0]
    value = dict(zip(sure.tolist(), sure_v.tolist()))
    named = sorted(table.ids(sure), reverse=descending)  # (id, row): equal ids (records, not a store) by row
    named.sort(key=lambda item: _nan_last(value[item[1]]))  # stable: equal values stay in id order
    chosen = [row for _, row in named]
    if len(chosen) < k and len(tied_rows):
        pick = heapq.nlargest if descending else heapq.nsmallest
        chosen += [row for _, row in pick(k - len(chosen), table.ids(tied_rows))]
    return np.array(chosen, dtype=np.int64)


def select_examples(records: list[ScoreRecord] | ScoreRows, thr: Thresholds, k: int = 4
                    ) -> dict[str, list[ScoreRecord]]:
    """Named groups of records to show: extremes of each signal and the ones nearest each threshold. Ordered as
    sorting the records by (value, id) would; "parse failures" are the first unscored records in their order."""
    rows = records if isinstance(records, ScoreRows) else ScoreRows.of(records)
    table = rows.table
    no_score, no_ppl = rows.column("no_score"), rows.column("no_ppl")
    scored, with_ppl = rows.rows[~no_score], rows.rows[~no_ppl]
    score, ppl = table.cols["score"][scored], table.cols["ppl"][with_ppl]

    def first(subset: np.ndarray, values: np.ndarray, mask: np.ndarray | None = None, descending: bool = False):
        if mask is not None:
            subset, values = subset[mask], values[mask]
        return first_k(table, subset, values, k, descending)

    groups: dict[str, np.ndarray] = {
        "lowest score": first(scored, score),
        "highest score": first(scored, score, descending=True),
        "lowest perplexity": first(with_ppl, ppl),
        "highest perplexity": first(with_ppl, ppl, descending=True),
    }
    if thr.min_score is not None:
        groups[f"just inside min_score={thr.min_score:g}"] = first(scored, score, score >= thr.min_score)
        groups[f"just outside min_score={thr.min_score:g}"] = first(scored, score, score < thr.min_score, True)
    if thr.min_ppl is not None:
        groups[f"just inside min_ppl={thr.min_ppl:g}"] = first(with_ppl, ppl, ppl >= thr.min_ppl)
        groups[f"just outside min_ppl={thr.min_ppl:g}"] = first(with_ppl, ppl, ppl < thr.min_ppl, True)
    if thr.max_ppl is not None:
        groups[f"just inside max_ppl={thr.max_ppl:g}"] = first(with_ppl, ppl, ppl <= thr.max_ppl, True)
        groups[f"just outside max_ppl={thr.max_ppl:g}"] = first(with_ppl, ppl, ppl > thr.max_ppl)
    failures = rows.rows[no_score]
    if len(failures):
        groups["parse failures"] = failures[:k]
    return {name: table.records(g) for name, g in groups.items()}


def thumbnail_b64(image, px: int = THUMB_PX) -> str:
    im = image.copy()
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """body{font-family:sans-serif;margin:1em;color:#222}h2{border-bottom:1px solid #ccc}
.card{display:flex;gap:12px;border:1px solid #ddd;border-radius:6px;padding:8px;margin:6px 0}
.card img{max-width:160px;max-height:160px;border:1px solid #eee}.meta{font-size:12px;color:#555}
.drop{background:#fff3f3}.q{font-weight:bold}.a{white-space:pre-wrap}.raw{font-family:monospace;font-size:11px;color:#777}"""


def _card(sample: Sample | None, rec: ScoreRecord, thr: Thresholds, loader) -> str:
    reason, detail = decide(rec, thr)
    imgs = []
    if sample is not None:
        for ref in sample.images[:5]:
            try:
                imgs.append(f'<img src="data:image/jpeg;base64,{thumbnail_b64(loader(ref))}" alt="{html.escape(ref)}">')
            except Exception as e:  # the gallery still shows the text of a sample whose image is unreadable
                imgs.append(f'<div class="meta">image unreadable: {html.escape(str(e)[:120])}</div>')
    qa = "".join(
        f'<div class="q">Q: {html.escape(q[:600])}</div><div class="a">A: {html.escape(a[:1200])}</div>'
        for q, a in (qa_pairs(sample.messages) if sample is not None else [])
    ) or '<div class="meta">(sample text not available)</div>'
    tags = " ".join(f"{f}[{', '.join(rec.tags.get(f, []))}]" for f in TAG_FIELDS if f in rec.tags)
    ppl = f"{rec.ppl:.3g}" if rec.ppl is not None else f"n/a ({rec.ppl_failure})"
    score = f"{rec.score:g}" if rec.score is not None else f"n/a ({rec.parse_failure})"
    verdict = f"DROP: {reason} ({html.escape(detail)})" if reason else "keep"
    return (
        f'<div class="card{" drop" if reason else ""}"><div>{"".join(imgs)}</div><div>'
        f'<div class="meta">{html.escape(rec.id)} | score {score} | ppl {ppl} | {rec.n_loss_tokens} trained tokens | '
        f"{verdict}</div>{qa}<div class=\"meta\">{html.escape(tags)}</div>"
        f'<div class="raw">{html.escape(rec.raw_output[:300])}</div></div></div>'
    )


def write_gallery(source: str, groups: dict[str, list[ScoreRecord]], samples: Mapping[str, Sample], thr: Thresholds,
                  path: Path, loader) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(source)} review</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(source)}</h1>"
             f"<p class='meta'>thresholds: {html.escape(str(thr.to_dict()))}</p>"]
    for name, recs in groups.items():
        parts.append(f"<h2>{html.escape(name)} ({len(recs)})</h2>")
        parts.extend(_card(samples.get(r.id), r, thr, loader) for r in recs)
        if not recs:
            parts.append("<p class='meta'>none</p>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def review(samples: Iterable[Sample], scores: Mapping[str, ScoreRecord] | ScoreRows, filter_cfg,
           out_dir: str | Path, *, k: int = 4, image_loader: Callable[[str], Any] | None = None
           ) -> dict[str, dict[str, Path]]:
    """Per source (the records' own): `<out>/<source>_hist.png` and `<out>/<source>_gallery.html`. `scores`: the
    records to review, by id or as rows of a store's table. Samples are read in one pass and only the ones shown
    are kept in memory."""
    from aloevision.scoring.score import default_image_loader

    out = Path(out_dir)
    loader = image_loader or default_image_loader()
    rows = scores if isinstance(scores, ScoreRows) else ScoreRows.of(scores.values())
    source_codes = rows.column("source")
    names = rows.table.codes.source.names
    plans = {}
    for source, code in sorted((names[c], c) for c in np.unique(source_codes).tolist()):
        of_source = rows.subset(source_codes == code)
        thr = thresholds_for(filter_cfg, source)
        plans[source] = (thr, of_source, select_examples(of_source, thr, k))
    wanted = {r.id for _, _, groups in plans.values() for g in groups.values() for r in g}
    shown = {s.id: s for s in samples if s.id in wanted}
    result = {}
    for source, (thr, of_source, groups) in plans.items():
        name = _safe(source)
        no_score, no_ppl = of_source.column("no_score"), of_source.column("no_ppl")
        scored, ppls = of_source.column("score")[~no_score], of_source.column("ppl")[~no_ppl]
        result[source] = {
            "hist": plot_histograms(source, scored, ppls, int(no_score.sum()), thr, out / f"{name}_hist.png"),
            "gallery": write_gallery(source, groups, shown, thr, out / f"{name}_gallery.html", loader),
        }
    return result
