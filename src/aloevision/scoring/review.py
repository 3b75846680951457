"""Helping a person choose thresholds the way the paper did (by looking at the extremes of each source): per
source, histograms of score and perplexity with the thresholds drawn, and an HTML gallery of the lowest and highest
examples and of those just inside / just outside each threshold, with the images, questions and answers."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from aloevision.schema import Sample
from aloevision.scoring.store import ScoreRecord
from aloevision.scoring.taxonomy import TAG_FIELDS, qa_pairs
from aloevision.scoring.thresholds import Thresholds, decide, thresholds_for

log = logging.getLogger(__name__)
THUMB_PX = 160


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_histograms(source: str, records: list[ScoreRecord], thr: Thresholds, path: Path) -> Path:
    """Score (1-5) and log-perplexity histograms of one source, thresholds as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [r.score for r in records if r.score is not None]
    ppls = [r.ppl for r in records if r.ppl is not None and r.ppl > 0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.hist(scores, bins=[0.5, 1.5, 2.5, 3.5, 4.5, 5.5], color="#4c72b0", edgecolor="white")
    ax1.set_xlabel("LVLM quality score")
    ax1.set_ylabel("samples")
    n_fail = sum(1 for r in records if r.score is None)
    ax1.set_title(f"{source}: score (n={len(scores)}, unparsed={n_fail})", fontsize=9)
    if thr.min_score is not None:
        ax1.axvline(thr.min_score - 0.5 if float(thr.min_score).is_integer() else thr.min_score, color="red",
                    linestyle="--", label=f"min_score={thr.min_score:g}")
        ax1.legend(fontsize=8)
    if ppls:
        lo, hi = math.log10(min(ppls)), math.log10(max(ppls))
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        bins = [10 ** (lo + (hi - lo) * i / 30) for i in range(31)]
        ax2.hist(ppls, bins=bins, color="#55a868", edgecolor="white")
        ax2.set_xscale("log")
    for value, label in ((thr.min_ppl, "min_ppl"), (thr.max_ppl, "max_ppl")):
        if value is not None and math.isfinite(value) and value > 0:
            ax2.axvline(value, color="red", linestyle="--", label=f"{label}={value:g}")
    if thr.min_ppl is not None or thr.max_ppl is not None:
        ax2.legend(fontsize=8)
    ax2.set_xlabel("answer perplexity (trained tokens)")
    ax2.set_title(f"{source}: perplexity (n={len(ppls)})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def select_examples(records: list[ScoreRecord], thr: Thresholds, k: int = 4) -> dict[str, list[ScoreRecord]]:
    """Named groups of records to show: extremes of each signal and the ones nearest each threshold."""
    scored = sorted((r for r in records if r.score is not None), key=lambda r: (r.score, r.id))
    with_ppl = sorted((r for r in records if r.ppl is not None), key=lambda r: (r.ppl, r.id))
    groups: dict[str, list[ScoreRecord]] = {
        "lowest score": scored[:k],
        "highest score": scored[::-1][:k],
        "lowest perplexity": with_ppl[:k],
        "highest perplexity": with_ppl[::-1][:k],
    }
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


def review(samples: Iterable[Sample], scores: Mapping[str, ScoreRecord], filter_cfg, out_dir: str | Path, *,
           k: int = 4, image_loader: Callable[[str], Any] | None = None) -> dict[str, dict[str, Path]]:
    """Per source: `<out>/<source>_hist.png` and `<out>/<source>_gallery.html`. Samples are read in one pass and
    only the ones shown are kept in memory."""
    from aloevision.scoring.score import default_image_loader

    out = Path(out_dir)
    loader = image_loader or default_image_loader()
    by_source: dict[str, list[ScoreRecord]] = defaultdict(list)
    for r in scores.values():
        by_source[r.source].append(r)
    plans = {}
    for source, recs in sorted(by_source.items()):
        thr = thresholds_for(filter_cfg, source)
        plans[source] = (thr, select_examples(recs, thr, k))
    wanted = {r.id for _, groups in plans.values() for g in groups.values() for r in g}
    shown = {s.id: s for s in samples if s.id in wanted}
    result = {}
    for source, (thr, groups) in plans.items():
        name = _safe(source)
        result[source] = {
            "hist": plot_histograms(source, by_source[source], thr, out / f"{name}_hist.png"),
            "gallery": write_gallery(source, groups, shown, thr, out / f"{name}_gallery.html", loader),
        }
    return result
