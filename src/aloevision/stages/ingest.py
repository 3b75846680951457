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
    rules = default_rules()
    n_out = 0
    with open(out / "samples.jsonl", "w") as fs, open(out / "drops.jsonl", "w") as fd:

        def kept() -> Iterator[Sample]:
            for item in clean(read_source(src_cfg), rules):
                counter.seen(item)
                if isinstance(item, Drop):
                    counter.drop(item)
                    fd.write(json.dumps(item.to_dict()) + "\n")
                else:
                    yield item

        stream: Iterator[Sample] = kept()
        if src_cfg.cap:
            stream, capped = cap_samples(stream, int(src_cfg.cap), seed)
        else:
            capped = None
        for s in stream:
            fs.write(s.to_json() + "\n")
            n_out += 1
        if capped is not None:
            for d in capped():
                counter.drop(d)
                fd.write(json.dumps(d.to_dict()) + "\n")
    report = counter.report()
    report["rows_out"] = n_out
    (out / "report.json").write_text(json.dumps(report, indent=1))


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
