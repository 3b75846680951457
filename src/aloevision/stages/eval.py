"""Stage `eval`: the configured benchmarks with greedy decoding (built-in evaluator), text MCQ by option
log-likelihood, open-ended answers by LLM judges, and the harnesses (lm-eval) where configured.

The model evaluated is, in order: the model this run trained, `eval.model` (a run folder, checkpoint or Hub id),
else the configured base model. Per-item predictions go to `eval/<benchmark>.jsonl`; scores to the W&B summary
(`eval/<benchmark>` and sub-scores) and the run record.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
YESNO_INSTRUCTION = "Answer yes or no."
OPEN_INSTRUCTION = "Answer the question briefly."


def prompt_text(item) -> str:
    if item.kind in ("mcq", "text_mcq"):
        opts = "\n".join(f"{k}. {v}" for k, v in sorted(item.options.items()))
        return f"{item.question}\n{opts}\n{MCQ_INSTRUCTION}"
    if item.kind in ("yesno", "probmed"):
        return f"{item.question}\n{YESNO_INSTRUCTION}"
    return f"{item.question}\n{OPEN_INSTRUCTION}"


def load_pil(image) -> Any:
    from aloevision.images import decode_image  # the decode training and ingest use (EXIF orientation, modes)

    return decode_image(image)


def generate_chat(model, processor, turns, max_new_tokens: int, batch_size: int, desc: str) -> list[str]:
    """Greedy answers to single user turns, batched with left padding. `turns`: (content parts, images) pairs, the
    parts in TRL's format ({"type": "image"} / {"type": "text", "text": ...}), images in placeholder order."""
    import torch

    tok = processor.tokenizer
    tok.padding_side = "left"  # decoder-only batch generation pads on the left
    out: list[str] = []
    for start in tqdm(range(0, len(turns), batch_size), desc=desc, unit="batch", leave=False):
        batch = turns[start : start + batch_size]
        texts = [processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                               add_generation_prompt=True) for content, _ in batch]
        images = [load_pil(im) for _, imgs in batch for im in imgs]
        enc = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out.extend(tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def generate(model, processor, items, max_new_tokens: int, batch_size: int, desc: str) -> list[str]:
    """Greedy answers for eval items (their images, then the prompt, in one user turn)."""
    turns = [([{"type": "image"} for _ in it.images] + [{"type": "text", "text": prompt_text(it)}], it.images)
             for it in items]
    return generate_chat(model, processor, turns, max_new_tokens, batch_size, desc)


def loglik_choices(model, processor, items, desc: str) -> list[str]:
    """Text MCQ by highest log-likelihood of the option letter after the prompt (as lm-eval scores MCQ)."""
    import torch

    tok = processor.tokenizer
    preds = []
    for it in tqdm(items, desc=desc, leave=False):
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": prompt_text(it)}]}], tokenize=False,
            add_generation_prompt=True)
        ctx_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        best, best_lp = None, float("-inf")
        for letter in sorted(it.options):
            cont = tok(letter, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx_ids + cont], device=model.device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(ctx_ids) - 1 : -1].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(cont, device=model.device)[:, None]).sum().item()
            if lp > best_lp:
                best, best_lp = letter, lp
        preds.append(best or "")
    return preds


def model_under_test(ctx) -> str:
    from aloevision.model.loading import checkpoint_path
    from aloevision.model.checkpoints import resolve_init_from

    trained = (ctx.results.get("train") or {}).get("model")
    if trained:
        return trained
    if ctx.cfg.eval.model:
        return resolve_init_from(ctx.cfg.eval.model)
    return checkpoint_path(ctx.cfg.model, ctx.cfg.paths.cache_dir)


def run(ctx) -> dict[str, Any]:
    from aloevision.evalsets import load_benchmark
    from aloevision.evaluation.answers import OPEN_KINDS, counts, score_result, summarise
    from aloevision.model.loading import load_model, load_processor_for
    from aloevision.ingestion import ensure_demo_data

    cfg = ctx.cfg
    ensure_demo_data(cfg)
    path = model_under_test(ctx)
    processor = load_processor_for(cfg.model, path)
    model = load_model(cfg.model, path).eval()
    out_dir = ctx.run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    all_results, status, load_stats = [], {}, {}
    for key, bench in cfg.eval.benchmarks.items():
        if bench.harness != "builtin":
            status[key] = _run_harness(ctx, key, bench, model, processor)
            continue
        items, stats = load_benchmark(bench)
        load_stats[key] = stats.as_dict()
        if bench.max_samples:
            items = items[: bench.max_samples]
        # Score per item kind: one benchmark can mix kinds (MMMU has open items among MCQ; CareQA-V both).
        by_kind = {"text_mcq": [], "open": [], "gen": []}
        for it in items:
            by_kind["text_mcq" if it.kind == "text_mcq" else "open" if it.kind in OPEN_KINDS else "gen"].append(it)
        results = []
        if by_kind["text_mcq"]:
            preds = loglik_choices(model, processor, by_kind["text_mcq"], desc=f"eval {key}")
            results += [score_result(it, p) for it, p in zip(by_kind["text_mcq"], preds)]
        if by_kind["gen"]:
            preds = generate(model, processor, by_kind["gen"], cfg.eval.max_new_tokens, cfg.eval.batch_size, f"eval {key}")
            results += [score_result(it, p) for it, p in zip(by_kind["gen"], preds)]
        if by_kind["open"]:
            preds = generate(model, processor, by_kind["open"], cfg.eval.max_new_tokens, cfg.eval.batch_size, f"eval {key}")
            results += _judge_open(ctx, key, by_kind["open"], preds, model, processor, bench)
        for r in results:
            r.benchmark = key
        with open(out_dir / f"{key}.jsonl", "w") as f:
            for r in results:
                f.write(json.dumps(r.__dict__, default=str) + "\n")
        all_results.extend(results)
        status[key] = f"builtin: {len(items)} items"
        ctx.tracker.table(f"eval/{key}/predictions", ["id", "prediction", "extracted", "score"],
                          [[r.id, r.prediction[:200], r.extracted, r.score] for r in results[:100]])
    metrics = {f"eval/{k}": v for k, v in summarise(all_results).items() if v is not None}
    if cfg.eval.heart.enabled:
        from aloevision.stages.heart_eval import run_heart

        metrics.update({f"eval/{k}": v for k, v in run_heart(ctx, model, processor).items()})
    n = {f"eval_counts/{k}": v for k, v in counts(all_results).items()}
    ctx.tracker.summary(metrics)
    report = {"model": path, "harness_status": status, "metrics": metrics, "counts": n, "load_stats": load_stats}
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    ctx.tracker.stage_report("eval", report)
    ctx.tracker.add_paths(eval=out_dir)
    return report


def _judge_open(ctx, key, items, preds, model, processor, bench):
    """Open-ended answers scored 0 / 0.5 / 1 by the configured judges, combined by majority vote."""
    from aloevision.evaluation.judges import score_open

    results, report = score_open(items, preds, list(ctx.cfg.eval.judges), backend=ctx.cfg.eval.judge_backend,
                                 self_model=(model, processor), out_dir=ctx.run_dir / "eval", name=f"judges_{key}",
                                 labels_file=bench.options.get("human_labels") or ctx.cfg.eval.labels_file)
    ctx.tracker.stage_report(f"eval_judges_{key}", report)
    return results


def _run_harness(ctx, key, bench, model, processor) -> str:
    """External harnesses: run when installed and wired, otherwise reported as such — never faked."""
    from aloevision.evaluation.lm_eval_task import harness_available, harness_status, run_benchmark

    state = harness_status(bench.harness)
    if not harness_available(bench.harness):
        log.warning("benchmark %s: harness %s is %s; skipped (not faked)", key, bench.harness, state)
        return f"{bench.harness}: {state}"
    if bench.harness == "lm_eval":
        scores = run_benchmark(model, processor.tokenizer, key, bench, out_dir=ctx.run_dir / "eval",
                               batch_size=ctx.cfg.eval.batch_size, seed=ctx.cfg.seed)
        ctx.tracker.summary({f"eval/{k}": v for k, v in scores.items()})
        return f"lm_eval: {len(scores)} scores ({state})"
    return f"{bench.harness}: {state}; not wired in this version: run it with its own CLI on the saved model"
