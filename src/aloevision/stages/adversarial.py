"""Stage `adversarial`: the adversarially robust (AR) training set of the second SFT stage (paper §5.1).

FracAtlas (`adversarial.source`, conf/source/fracatlas.yaml) is ingested with the ingest stage's own per-source
artifact (shared with any mixture that also lists it), turned into classification + detection base items, and
every attack of the recipe is applied (`aloevision.adversarial.ar_set`). The result is a cached artifact holding
`samples.jsonl` (unified Samples, images under `images/`), `drops.jsonl` and `counts.json`; it is returned under
`artifacts`, so the mix stage trains on it (`aloevision.ingestion.sample_folders`).

The run folder gets `adversarial/report.md`: samples per attack in this run, the count expected from the items,
and how the paper's 17.2K is reached at FracAtlas' real size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aloevision.adversarial.attacks import attack_config
from aloevision.config import ConfigError

log = logging.getLogger(__name__)
AR_VERSION = "1"  # bump when the attacks or the AR recipe code change what they produce
AR_SET_NAME = "fracatlas_ar"  # the key of the AR set among the training sample folders (and its Samples' source)


def ar_recipe(cfg: DictConfig):
    from aloevision.adversarial.ar_set import ArRecipe

    r = cfg.adversarial.ar
    return ArRecipe(tuple(r.classification_variants), tuple(r.detection_variants), str(r.detection_unit))


def check_config(cfg: DictConfig) -> None:
    """Fail before any work when the AR run cannot finish: no source, or a second stage without its first."""
    if cfg.adversarial.source is None:
        raise ConfigError("adversarial.source is not set: use +experiment=aloe_vision_7b_ar (or demo_ar), or add "
                          "`+source@adversarial.source=fracatlas` to the command line")
    if cfg.stage in ("all", "train") and cfg.train.enabled and not cfg.train.init_from:
        raise ConfigError("the AR experiment is a second SFT stage: give the first stage's model with "
                          "train.init_from=<stage-1 run folder> (or a checkpoint path)")
    if cfg.stage == "all" and cfg.eval.heart.enabled:
        from aloevision.evaluation.heart_eval import check_heart_config

        check_heart_config(cfg)


check = check_config  # run by the stage graph before any stage of the job


def ingest_fracatlas(ctx):
    """The FracAtlas source through the ingest stage's per-source artifact (same key: shared cache)."""
    from aloevision.ingestion import ingested

    cfg = ctx.cfg
    src = cfg.adversarial.source
    if str(src.path).startswith(str(cfg.paths.demo_dir)):
        from aloevision.demo.generate import ensure_demo_data

        ensure_demo_data(Path(cfg.paths.demo_dir))
    return ingested(ctx.store, src, cfg.seed)


def _relocate(path: str, tmp: Path, final: Path) -> str:
    """Samples are written while the artifact lives in its temporary folder; point them at its final place."""
    p = Path(path)
    try:
        return str(final / p.relative_to(tmp.resolve()))
    except ValueError:
        return path


def _build(items, drops, recipe, attack_cfg, final: Path, tmp: Path) -> None:
    from aloevision.adversarial.ar_set import build_ar_set
    from aloevision.schema import Sample

    res = build_ar_set(items, tmp, recipe=recipe, cfg=attack_cfg, drops=drops, source=AR_SET_NAME, progress=True)
    with open(res.jsonl, encoding="utf-8") as fin, open(tmp / "samples.jsonl", "w", encoding="utf-8") as fout:
        for line in fin:
            s = Sample.from_dict(json.loads(line))
            s.images = [_relocate(im, tmp, final) for im in s.images]
            fout.write(s.to_json() + "\n")
    os.remove(res.jsonl)  # samples.jsonl is the one copy (the folder layout every training source has)
    if res.counts != res.expected:
        raise RuntimeError(f"AR set: built counts {res.counts} differ from the recipe's {res.expected} "
                           f"({len(res.drops)} drops, see drops.jsonl)")


def run(ctx) -> dict[str, Any]:
    from aloevision.adversarial.ar_set import ar_set_counts, base_items_from_samples
    from aloevision.ingestion import iter_samples

    cfg = ctx.cfg
    check_config(cfg)
    ingest_art = ingest_fracatlas(ctx)
    items, drops = base_items_from_samples(iter_samples(ingest_art.path))
    if not items:
        raise ValueError(f"adversarial: no usable FracAtlas items in {ingest_art.path} "
                         f"({len(drops)} drops: {dict(Counter(d.reason for d in drops))})")
    recipe, attack_cfg = ar_recipe(cfg), attack_config(cfg)
    key = {"ingest": ingest_art.fingerprint, "recipe": dataclasses.asdict(recipe),
           "attack": dataclasses.asdict(attack_cfg), "name": AR_SET_NAME, "version": AR_VERSION}
    final = ctx.store.path_for("adversarial", key).resolve()
    art = ctx.store.get_or_build("adversarial", key,
                                 lambda tmp: _build(items, drops, recipe, attack_cfg, final, Path(tmp)))
    info = art.read_json("counts.json")
    counts, expected = info["counts"], info["expected"]
    with open(art.path / "drops.jsonl") as f:
        drop_reasons = dict(Counter(json.loads(line)["reason"] for line in f if line.strip()))
    paper = ar_set_counts(recipe=recipe)  # FracAtlas' real numbers: how the paper's 17.2K is reached
    rows = [[k, counts.get(k, 0), expected.get(k, 0), paper.get(k, 0)] for k in paper]
    ctx.tracker.table("adversarial/counts", ["task/variant", "samples", "expected", "paper_scale"], rows)
    ctx.tracker.summary({"adversarial/samples": counts["total"], "adversarial/drops": sum(drop_reasons.values())})
    _log_examples(ctx, art.path)
    report_path = ctx.run_dir / "adversarial" / "report.md"
    report_path.parent.mkdir(exist_ok=True)
    write_report_md(report_path, counts, expected, paper, drop_reasons, recipe, str(art.path))
    report = {"artifact": str(art.path), "cached": art.cached, "ingest": str(ingest_art.path), "counts": counts,
              "expected": expected, "paper_scale": paper, "drops": drop_reasons, "recipe": dataclasses.asdict(recipe)}
    ctx.tracker.stage_report("adversarial", report)
    ctx.tracker.add_paths(adversarial=art.path, adversarial_report=report_path)
    log.info("adversarial: %d AR samples%s (%s)", counts["total"], " (cached)" if art.cached else "",
             ", ".join(f"{k}={v}" for k, v in counts.items() if k != "total"))
    # "sources": how the mixture planner should declare the AR set (it is in no mixture config).
    declared = {AR_SET_NAME: {"name": AR_SET_NAME, "domain": "medical", "modality": "multimodal", "cap": None}}
    return {"artifacts": {AR_SET_NAME: str(art.path)}, "sources": declared, "counts": counts, "expected": expected, "paper_scale": paper,
            "drops": drop_reasons, "path": str(art.path)}


def _log_examples(ctx, folder: Path) -> None:
    """One image per task/attack to W&B, so the drawn attacks can be looked at."""
    seen: set[str] = set()
    with open(folder / "samples.jsonl") as f:
        for line in f:
            d = json.loads(line)
            k = f"{d['meta']['task']}/{d['meta']['attack']}"
            if k not in seen and d["images"]:
                seen.add(k)
                prompt = next(p["text"] for p in d["messages"][0]["content"] if p["type"] == "text")
                ctx.tracker.image(f"adversarial/examples/{k}", d["images"][0], caption=prompt[:300])
            if len(seen) >= 9:
                break


def write_report_md(path: Path, counts: dict, expected: dict, paper: dict, drops: dict, recipe, artifact: str) -> None:
    from aloevision.adversarial.ar_set import (FRACATLAS_FRACTURED, FRACATLAS_IMAGES, FRACATLAS_INSTANCES,
                                               PAPER_AR_SAMPLES)

    t = paper["total"]
    lines = [
        "# Adversarial (AR) training set", "",
        f"Artifact: `{artifact}`", "",
        f"Recipe: classification x {list(recipe.classification_variants)}; detection "
        f"{list(recipe.detection_variants)} per {recipe.detection_unit}"
        + (" (attacks rotating round-robin)" if recipe.detection_unit != "all" else ""), "",
        "| task/variant | samples (this run) | expected from the items | at FracAtlas' size |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {counts.get(k, 0):,} | {expected.get(k, 0):,} | {v:,} |" for k, v in paper.items()]
    lines += [
        "",
        f"At FracAtlas' real size ({FRACATLAS_IMAGES:,} images, {FRACATLAS_FRACTURED:,} fractured, "
        f"{FRACATLAS_INSTANCES:,} fracture instances) this recipe gives {t:,} samples; the paper reports "
        f"{PAPER_AR_SAMPLES:,} ({100 * (t - PAPER_AR_SAMPLES) / PAPER_AR_SAMPLES:+.1f}%). See docs/adversarial.md "
        "(`python -m aloevision.adversarial.ar_set` prints the alternatives considered).",
        "",
        "Dropped (reason: count): " + (", ".join(f"{r}: {n}" for r, n in sorted(drops.items())) or "none"),
    ]
    path.write_text("\n".join(lines) + "\n")
