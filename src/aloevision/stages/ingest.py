"""Stage `ingest`: every source of the mixture → unified samples, cleaned (paper rules), capped.

One artifact per source, keyed by the source config and a stamp of its files, so every mixture and ablation of a
sweep shares them. Each artifact holds `samples.jsonl` (kept, streamed), `drops.jsonl` (every removed sample with its
reason) and `report.json` (rows in/out, counts per reason, a few examples of each).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from aloevision.schema import Drop, Sample

log = logging.getLogger(__name__)
INGEST_VERSION = "1"  # bump when adapters or cleaning change what they produce


def data_stamp(path: str, limit: int = 5000) -> list:
    """Cheap identity of a local source (names, sizes, mtimes of its files); a Hub id stands for itself."""
    p = Path(path)
    if not p.exists():
        return [path]
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())[:limit]
    return [[str(f.relative_to(p.parent)), f.stat().st_size, int(f.stat().st_mtime)] for f in files]


def ensure_demo_data(cfg) -> None:
    """The demo's sources live in generated demo data: make sure it exists before reading it."""
    demo_dir = Path(cfg.paths.demo_dir)
    if any(str(s.path).startswith(str(demo_dir)) for s in cfg.mixture.sources.values()) or any(
        str(b.path).startswith(str(demo_dir)) for b in cfg.eval.benchmarks.values()
    ):
        from aloevision.demo.generate import ensure_demo_data as build

        build(demo_dir)


def _ingest_source(src_cfg, seed: int, out: Path) -> None:
    from aloevision.cleaning import DropCounter, cap_samples, clean, default_rules
    from aloevision.sources import read_source

    counter = DropCounter()
    rules = default_rules(roots=[str(src_cfg.path)])
    stream = counter.count(cap_samples(clean(read_source(src_cfg), rules), src_cfg.cap, seed))
    with open(out / "samples.jsonl", "w") as fs, open(out / "drops.jsonl", "w") as fd:
        for item in tqdm(stream, desc=f"ingest {src_cfg.name}", unit=" rows", leave=False):
            if isinstance(item, Drop):
                fd.write(json.dumps(item.to_dict()) + "\n")
            else:
                fs.write(item.to_json() + "\n")
    per_source = counter.to_dict()
    report = per_source.get(src_cfg.name) or {"rows_in": 0, "rows_out": 0, "drops": {}, "examples": {}}
    if len(per_source) > 1:  # an adapter that labels samples with several source names
        report = {"rows_in": sum(v["rows_in"] for v in per_source.values()),
                  "rows_out": sum(v["rows_out"] for v in per_source.values()),
                  "drops": {}, "examples": {}, "by_source": per_source}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(counter.markdown() + "\n")


def run(ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    ensure_demo_data(cfg)
    artifacts, reports = {}, {}
    for key, src in cfg.mixture.sources.items():
        src_dict = OmegaConf.to_container(src, resolve=True)
        art_key = {"source": src_dict, "stamp": data_stamp(src.path), "seed": cfg.seed, "version": INGEST_VERSION}
        art = ctx.store.get_or_build("ingest", art_key, lambda tmp, s=src: _ingest_source(s, cfg.seed, tmp))
        artifacts[key] = art
        reports[key] = art.read_json("report.json")
        log.info("ingest %s: %s rows in, %s kept%s", key, reports[key].get("rows_in"), reports[key]["rows_out"],
                 " (cached)" if art.cached else "")
    rows = [[k, r.get("rows_in"), r["rows_out"], json.dumps(r.get("drops", {}))] for k, r in reports.items()]
    ctx.tracker.table("ingest/report", ["source", "rows_in", "rows_out", "drops_by_reason"], rows)
    ctx.tracker.stage_report("ingest", reports)
    write_report_md(ctx.run_dir / "ingest_report.md", reports)
    return {"artifacts": {k: str(a.path) for k, a in artifacts.items()}, "reports": reports}


def write_report_md(path: Path, reports: dict[str, dict]) -> None:
    lines = ["# Ingest report", "", "| source | rows in | rows out | dropped (reason: count) |", "|---|---:|---:|---|"]
    for k, r in reports.items():
        drops = ", ".join(f"{reason}: {n}" for reason, n in sorted(r.get("drops", {}).items())) or "-"
        lines.append(f"| {k} | {r.get('rows_in', '?')} | {r['rows_out']} | {drops} |")
    for k, r in reports.items():
        for reason, examples in sorted(r.get("examples", {}).items()):
            lines += ["", f"**{k} / {reason}**: " + "; ".join(f"`{e.get('id')}` {e.get('detail', '')}" for e in examples)]
    path.write_text("\n".join(lines) + "\n")


def iter_samples(artifact_dir: str | Path) -> Iterator[Sample]:
    with open(Path(artifact_dir) / "samples.jsonl") as f:
        for line in f:
            yield Sample.from_dict(json.loads(line))


def training_artifacts(ctx) -> dict[str, str]:
    """Folders of unified samples (`samples.jsonl`) that feed this run's mixture: every ingested source, plus the
    adversarial set when the AR stage built one. Runs ingest if this run has not yet."""
    ingest = ctx.results.get("ingest")
    if ingest is None and len(ctx.cfg.mixture.sources):
        ingest = ctx.results["ingest"] = run(ctx)
    out = dict((ingest or {}).get("artifacts", {}))
    if ctx.cfg.adversarial.enabled and "adversarial" not in ctx.results:  # e.g. stage=train of the AR experiment
        from aloevision.stages import adversarial

        ctx.results["adversarial"] = adversarial.run(ctx)
    out.update((ctx.results.get("adversarial") or {}).get("artifacts", {}))
    return out
