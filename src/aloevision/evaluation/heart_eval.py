"""HEART-style robustness evaluation (paper §4, Table 4), called by the eval stage when `eval.heart.enabled`
(library code: stages import it, never each other).

The benchmark is a cached artifact built from `eval.heart.sources` (name -> base-item JSONL, see
`aloevision.adversarial.heart_sources`; the value "demo" draws the two demo sources): every item unattacked plus
each attack of its task. It is never built from the AR training source (`eval.heart.ar_source`, FracAtlas): a
source of that name, items of it, or a file inside `adversarial.source.path` are refused.

Answers are greedy (batched, the attacked prompt exactly as built: no instruction is appended), scored by
`aloevision.adversarial.heart.score_heart` (classification: exactly one label named, the truth; detection: the IoU
rule of `eval.heart.iou_*`). Outputs under `<run_dir>/eval/heart/`: `predictions.jsonl` (per item), `scores.json`
(n / correct per column) and `table4.md` (the paper's rows above this run's).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from aloevision.config import ConfigError

log = logging.getLogger(__name__)
HEART_VERSION = "1"
DEMO = "demo"
MIN_NEW_TOKENS = 48  # a grounded box answer is ~25-40 tokens (digits are single tokens in Qwen2)
PAPER_ROWS = ("Random", "Qwen2-VL-7B", "Aloe-Vision-7B-S1", "Aloe-Vision-7B-S2")


def check_heart_config(cfg: DictConfig) -> None:
    """Clear errors for a HEART config that cannot run (called early by the adversarial stage, and here)."""
    hc = cfg.eval.heart
    if not hc.sources:
        raise ConfigError("eval.heart.enabled=true but eval.heart.sources is empty: give classification/detection "
                          "evaluation sets as base-item JSONL (+eval.heart.sources.<name>=<file>, format in "
                          "aloevision/adversarial/heart_sources.py), use `{demo: demo}`, or set "
                          "eval.heart.enabled=false")
    from aloevision.adversarial.heart import _is_ar

    ar_path = None
    src = cfg.adversarial.get("source") if "adversarial" in cfg else None
    if src is not None:
        ar_path = Path(str(src.path)).resolve()
    for name, path in hc.sources.items():
        if _is_ar(str(name), str(hc.ar_source)):
            raise ConfigError(f"eval.heart.sources.{name}: the AR training source {hc.ar_source!r} cannot be a "
                              "robustness benchmark (the paper evaluates on sources the AR stage never saw)")
        if path == DEMO:
            continue
        p = Path(str(path)).resolve()
        if not p.is_file():
            raise ConfigError(f"eval.heart.sources.{name}={path}: file not found (a base-item JSONL, or 'demo')")
        if ar_path is not None and (p == ar_path or ar_path in p.parents):
            raise ConfigError(f"eval.heart.sources.{name}={path} lies inside the AR training source "
                              f"adversarial.source.path={src.path}")


def _relocate(path: str, tmp: Path, final: Path) -> str:
    try:
        return str(final / Path(path).relative_to(tmp.resolve()))
    except ValueError:
        return path


def _build(cfg: DictConfig, final: Path, tmp: Path) -> None:
    """Base items of every source -> heart.jsonl + images/, paths pointing at the artifact's final folder."""
    from aloevision.adversarial.heart import HeartConfig, build_heart
    from aloevision.adversarial.heart_sources import demo_heart_sources, load_base_items
    from aloevision.adversarial.attacks import attack_config

    hc = cfg.eval.heart
    sources, drops = {}, []
    for name, path in sorted(hc.sources.items()):
        if path == DEMO:
            sources.update(demo_heart_sources(tmp / "sources", seed=int(cfg.seed)))
        else:
            items, d = load_base_items(str(path), str(name))
            sources[str(name)] = items
            drops += d
    res = build_heart(sources, tmp, HeartConfig(ar_source=str(hc.ar_source)), attack_config(cfg))
    drops += res.drops
    with open(tmp / "heart.jsonl", "w", encoding="utf-8") as f:
        for s in res.samples:
            s.images = [_relocate(im, tmp, final) for im in s.images]
            f.write(s.to_json() + "\n")
    with open(tmp / "drops.jsonl", "w", encoding="utf-8") as f:
        for d in drops:
            f.write(json.dumps(d.to_dict()) + "\n")
    if not res.samples:
        raise ValueError(f"HEART: no samples built from {dict(hc.sources)} ({len(drops)} drops, see drops.jsonl)")


def build_benchmark(ctx):
    """The HEART benchmark artifact of this config (shared by every run with the same sources and attacks)."""
    import dataclasses

    from aloevision.adversarial.attacks import attack_config
    from aloevision.utils.fingerprint import data_stamp

    cfg = ctx.cfg
    check_heart_config(cfg)
    hc = cfg.eval.heart
    key = {
        "sources": {str(k): [str(v), data_stamp(str(v)) if v != DEMO else DEMO] for k, v in hc.sources.items()},
        "ar_source": str(hc.ar_source),
        "attack": dataclasses.asdict(attack_config(cfg)),
        "seed": int(cfg.seed),
        "version": HEART_VERSION,
    }
    final = ctx.store.path_for("heart", key).resolve()
    return ctx.store.get_or_build("heart", key, lambda tmp: _build(cfg, final, Path(tmp)))


def generate_answers(model, processor, samples, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers; the user turn is the sample's image(s) + its attacked prompt, as built."""
    from aloevision.evaluation.generation import generate_chat

    turns = []
    for s in samples:
        user = next(m for m in s.messages if m["role"] == "user")
        content = [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]}
                   for p in user["content"]]
        turns.append((content, s.images))
    return generate_chat(model, processor, turns, max_new_tokens, batch_size, desc="eval heart")


def run_heart(ctx, model, processor) -> dict[str, float]:
    """Build (or reuse) the benchmark, answer it, score it: {"heart/<task>/<column>": accuracy %} in Table 4
    order. Writes `<run_dir>/eval/heart/` and logs the Table 4 rows to the tracker."""
    from aloevision.adversarial.heart import TABLE4_COLUMNS, format_table4, load_heart, score_heart_counts, score_one
    from aloevision.adversarial.matching import IoURule

    cfg = ctx.cfg
    hc = cfg.eval.heart
    art = build_benchmark(ctx)
    samples = load_heart(art.path / "heart.jsonl")
    rule = IoURule(threshold=float(hc.iou_threshold), inclusive=bool(hc.iou_inclusive), match=str(hc.iou_match))
    preds = generate_answers(model, processor, samples, max(int(cfg.eval.max_new_tokens), MIN_NEW_TOKENS),
                             int(cfg.eval.batch_size))
    by_id = {s.id: p for s, p in zip(samples, preds)}
    counts = score_heart_counts(samples, by_id, rule)
    scores = {k: round(100.0 * c["correct"] / c["n"], 2) for k, c in counts.items()}

    out = ctx.run_dir / "eval" / "heart"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for s, p in zip(samples, preds):
            m = s.meta
            row = {"id": s.id, "heart_source": m.get("heart_source"), "task": m["task"], "attack": m["attack"],
                   "prompt": s.texts("user")[0], "prediction": p, "correct": score_one(s, p, rule),
                   "truth": m["truth"], "misleading": m.get("misleading"), "image": s.images[0]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows.append(row)
    (out / "scores.json").write_text(json.dumps({"accuracy": scores, "counts": counts, "benchmark": str(art.path),
                                                 "iou_rule": rule.__dict__}, indent=1))
    name = f"{cfg.group} ({cfg.model.name})"
    table = format_table4({name: scores}, paper_rows=list(PAPER_ROWS))
    (out / "table4.md").write_text(
        "# HEART robustness (Table 4 layout), accuracy %\n\n" + table + "\n\n"
        f"Benchmark: `{art.path}` ({len(samples)} samples). Detection: {rule.match} box of the answer, IoU "
        f"{'>=' if rule.inclusive else '>'} {rule.threshold} with a ground-truth box (docs/adversarial.md).\n")
    cols = [f"heart/{t}/{c}" for t, cs in TABLE4_COLUMNS.items() for c in cs]
    ctx.tracker.table("eval/heart/table4", ["model", *cols], [[name, *[scores.get(c) for c in cols]]])
    ctx.tracker.table("eval/heart/predictions", ["id", "task", "attack", "prompt", "prediction", "correct"],
                      [[r["id"], r["task"], r["attack"], r["prompt"][:200], r["prediction"][:200], r["correct"]]
                       for r in rows[:200]])
    ctx.tracker.stage_report("eval_heart", {"benchmark": str(art.path), "samples": len(samples), "counts": counts,
                                            "accuracy": scores, "iou_rule": rule.__dict__})
    log.info("HEART: %s", ", ".join(f"{k.removeprefix('heart/')}={v}" for k, v in scores.items()))
    return scores
