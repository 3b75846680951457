"""The evaluation engine: every configured benchmark scored in-process, one at a time, each result on disk as soon as
it is done, a failing benchmark recorded with its error while the others go on.

Input is plain Python (`plain()` turns a composed OmegaConf node into dicts and lists before anything else sees
it). Per benchmark `<key>`, under `out_dir`: `<key>.jsonl` (one line per item: prediction, extracted answers under
both matchers, score), `<key>.result.json` (status, metrics, counts, seconds), and `results.json` (the whole suite so
far, rewritten after every benchmark). `on_result(key, entry, metrics)` lets the caller push metrics to its tracker
as they come.

Harnesses: `builtin` (this engine; the multimodal sets, with VLMEvalKit's Qwen2-VL protocol reproduced in
aloevision.evaluation.protocol) and `lm_eval` (lm-evaluation-harness, text MCQ groups). `vlmevalkit` and `lmms_eval`
are accepted as names for the builtin engine (their protocol is what it reproduces); any other value is a start-up
error, so no benchmark is ever skipped silently.

Several ranks (torch.distributed initialised): the items of each generated benchmark are dealt round-robin to the
ranks, answered, and gathered on every rank in the original order, so scores equal the one-process run; rank 0 scores,
judges and writes. lm-eval benchmarks run on rank 0 only.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from aloevision.evaluation.values import plain

log = logging.getLogger(__name__)

HARNESSES = ("builtin", "lm_eval")
HARNESS_ALIASES = {"vlmevalkit": "builtin", "lmms_eval": "builtin"}
FETCH_COMMAND = "python -m aloevision.evalsets.fetch --data-dir <paths.data_dir>"


def harness_of(bench: Mapping[str, Any]) -> str:
    h = str(bench.get("harness") or "builtin")
    h = HARNESS_ALIASES.get(h, h)
    if h not in HARNESSES:
        raise ValueError(f"harness {bench.get('harness')!r} is not supported; use builtin (VLMEvalKit's protocol, "
                         f"also accepted as vlmevalkit / lmms_eval) or lm_eval")
    return h


# ------------------------------------------------------------------------------------------------ distribution
def dist_info() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return 0, 1


def sharded(fn: Callable[[list], list], items: list, rank: int, world: int) -> list:
    """`fn` over this rank's share of `items` (round-robin), the answers of all ranks gathered in item order."""
    if world <= 1:
        return fn(items)
    import torch.distributed as dist

    # A rank that fails still joins the gather (with its error), so the others never wait for it forever and every
    # rank raises the same error for this benchmark.
    try:
        mine, err = fn(items[rank::world]), None
    except Exception as e:  # noqa: BLE001
        mine, err = [], f"{type(e).__name__}: {e}"
    parts: list = [None] * world
    dist.all_gather_object(parts, (mine, err))
    errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(parts) if e]
    if errors:
        raise RuntimeError("; ".join(errors))
    parts = [p for p, _ in parts]
    out: list = [None] * len(items)
    for r, part in enumerate(parts):
        for j, value in enumerate(part):
            out[r + j * world] = value
    return out


# -------------------------------------------------------------------------------------------------- pre-flight
def hub_cache_has(repo: str) -> bool:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (Path(HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}").is_dir()


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def preflight(benchmarks: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]) -> list[str]:
    """Start-up problems, one line each naming the benchmark, the expected path and how to fetch it."""
    from aloevision.evalsets.base import looks_like_hub_id

    errors = []
    for key, bench in benchmarks.items():
        try:
            harness = harness_of(bench)
        except ValueError as e:
            errors.append(f"benchmark {key}: {e}")
            continue
        if harness == "lm_eval":
            from aloevision.evaluation.lm_eval_task import benchmark_tasks, local_dataset_dir, task_datasets

            if bench.get("path") and Path(str(bench["path"])).expanduser().is_file():
                continue  # a local task reading a local file
            try:
                repos = task_datasets(benchmark_tasks(key, bench))
            except ValueError as e:
                errors.append(f"benchmark {key}: {e}")
                continue
            root = settings.get("hf_datasets_dir")
            for repo in repos:
                if root and local_dataset_dir(root, repo) is not None:
                    continue
                if hub_cache_has(repo) or not offline():
                    continue
                where = f"{Path(str(root)) / repo}" if root else "eval.hf_datasets_dir (unset)"
                errors.append(f"benchmark {key}: the lm-eval dataset {repo} is neither at {where} nor in the "
                              f"Hugging Face cache, and the Hub is offline; fetch it on a login node: {FETCH_COMMAND}")
            continue
        path = str(bench.get("path") or "")
        p = Path(path).expanduser()
        if p.exists() or (any(c in path for c in "*?[") and __import__("glob").glob(path)):
            continue
        if looks_like_hub_id(path) and not offline():
            continue
        errors.append(f"benchmark {key} ({bench.get('name')}): expected {path} (loader {bench.get('loader')}), "
                      f"which does not exist; fetch it on a login node: {FETCH_COMMAND} (docs/evaluation.md)")
    return errors


# --------------------------------------------------------------------------------------------------- one benchmark
def blank_images(item):
    """The item with every image replaced by a uniform grey image of the same size (`eval.blank_images=true`): the
    control that shows whether answers come from the pixels (a model that reads the images falls to chance)."""
    import dataclasses

    from PIL import Image

    from aloevision.evaluation.generation import load_pil
    from aloevision.images import ImageError

    blanks = []
    for im in item.images:
        try:
            size = load_pil(im).size
        except ImageError:
            blanks.append(im)  # left as it is: the generator drops and counts it as undecodable
            continue
        blanks.append(Image.new("RGB", size, (128, 128, 128)))
    return dataclasses.replace(item, images=blanks)


def leaked_item_ids(path: Any) -> set[tuple[str, str]]:
    """(benchmark key, item id) of the evaluation items known to be leaked into the training data (`eval.leaked_items`):
    a JSON list of records, each with `eval_items`: [{"benchmark": <eval key>, "id": <item id>}, ...] (the demo's
    PLANTED.json; records without it are ignored). Empty when `path` is unset."""
    if not path:
        return set()
    rows = json.loads(Path(path).read_text())
    return {(str(e["benchmark"]), str(e["id"])) for r in rows if isinstance(r, dict)
            for e in r.get("eval_items") or []}


def prompt_style(bench: Mapping[str, Any]) -> str | None:
    """The benchmark's prompt style (options.prompt), else MMMU's own for MMMU, else per item (aloevision.evaluation.
    generation.default_style)."""
    opts = bench.get("options") or {}
    if opts.get("prompt"):
        return str(opts["prompt"])
    if bench.get("loader") == "mmmu" or str(bench.get("name", "")).upper().startswith("MMMU"):
        return "mmmu"
    return None


class Engine:
    def __init__(self, benchmarks: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any], *, model, processor,
                 out_dir: str | Path, on_result: Callable[[str, dict, dict], None] | None = None,
                 judge: Callable[[str, Mapping[str, Any], list, list], list] | None = None, seed: int = 0):
        self.benchmarks = {str(k): dict(plain(v)) for k, v in plain(benchmarks).items()}
        self.settings = dict(plain(settings))
        self.model, self.processor = model, processor
        self.out_dir = Path(out_dir)
        self.on_result = on_result
        self.judge = judge
        self.seed = seed
        self.rank, self.world = dist_info()
        self.results: list = []  # every scored item so far (rank 0)
        self.report: dict[str, Any] = {"benchmarks": {}, "metrics": {}, "counts": {}, "load_stats": {},
                                       "settings": self.settings}

    @property
    def main(self) -> bool:
        return self.rank == 0

    def run(self) -> dict[str, Any]:
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        for key, bench in self.benchmarks.items():
            t0 = time.time()
            try:
                entry = self.run_one(key, bench)
            except Exception as e:  # one benchmark's failure never costs the others' scores
                log.error("benchmark %s failed: %r", key, e)
                entry = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-3000:]}
            entry["seconds"] = round(time.time() - t0, 2)
            entry.setdefault("harness", str(bench.get("harness") or "builtin"))
            self.report["benchmarks"][key] = entry
            if self.main:
                (self.out_dir / f"{key}.result.json").write_text(json.dumps(entry, indent=1, default=str))
                self._write_report()
                if self.on_result:
                    self.on_result(key, entry, self.report["metrics"])
        statuses = [e["status"] for e in self.report["benchmarks"].values()]
        self.report["scored"] = [k for k, e in self.report["benchmarks"].items() if e["status"] == "scored"]
        self.report["failed"] = [k for k, e in self.report["benchmarks"].items() if e["status"] == "failed"]
        self.report["skipped"] = [k for k, e in self.report["benchmarks"].items() if e["status"] == "skipped"]
        log.info("evaluation: %d scored, %d failed, %d skipped", statuses.count("scored"), statuses.count("failed"),
                 statuses.count("skipped"))
        if self.main:
            self._write_report()
        return self.report

    def _write_report(self) -> None:
        tmp = self.out_dir / "results.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        tmp.replace(self.out_dir / "results.json")

    def run_one(self, key: str, bench: dict) -> dict[str, Any]:
        harness = harness_of(bench)
        if harness == "lm_eval":
            return self.run_lm_eval(key, bench)
        return self.run_builtin(key, bench)

    def run_lm_eval(self, key: str, bench: dict) -> dict[str, Any]:
        from aloevision.evaluation.lm_eval_task import run_benchmark

        if not self.main:
            return {"status": "scored", "note": "lm-eval runs on rank 0"}
        scores = run_benchmark(self.model, self.processor.tokenizer, key, bench, out_dir=self.out_dir,
                               batch_size=int(self.settings.get("batch_size", 8)), seed=self.seed,
                               hf_datasets_dir=self.settings.get("hf_datasets_dir"))
        if key not in scores:
            raise RuntimeError(f"lm-eval returned no {key} score (got {sorted(scores)})")
        metrics = {f"eval/{k}": v for k, v in scores.items()}
        self.report["metrics"].update(metrics)
        return {"status": "scored", "harness": "lm_eval", "metrics": metrics}

    def run_builtin(self, key: str, bench: dict) -> dict[str, Any]:
        from aloevision.evalsets import load_benchmark
        from aloevision.evaluation.answers import OPEN_KINDS, counts, score_result, summarise
        from aloevision.evaluation.generation import UndecodableImage, generate, loglik_choices

        s = self.settings
        matching = str(s.get("matching", "exact"))
        items, stats = load_benchmark(bench)
        self.report["load_stats"][key] = stats.as_dict()
        if bench.get("max_samples"):
            items = items[: int(bench["max_samples"])]
        if not items:
            raise ValueError(f"{key}: no items loaded from {bench.get('path')} ({stats.as_dict()['skipped']})")
        if s.get("blank_images"):
            items = [blank_images(it) for it in items]
        style = prompt_style(bench)
        groups = {"text_mcq": [], "open": [], "gen": []}
        for it in items:
            groups["text_mcq" if it.kind == "text_mcq" else "open" if it.kind in OPEN_KINDS else "gen"].append(it)
        max_new, bs = int(s.get("max_new_tokens", 32)), int(s.get("batch_size", 8))
        progress = self.main
        results = []
        preds_of = {}
        if groups["text_mcq"]:
            preds = sharded(lambda sub: loglik_choices(self.model, self.processor, sub, f"eval {key} (log-lik)",
                                                       progress), groups["text_mcq"], self.rank, self.world)
            preds_of["text_mcq"] = preds
        for g in ("gen", "open"):
            if groups[g]:
                preds_of[g] = sharded(lambda sub: generate(self.model, self.processor, sub, max_new, bs,
                                                           f"eval {key}", style, progress),
                                      groups[g], self.rank, self.world)
        if not self.main:
            return {"status": "scored", "note": "answers gathered on rank 0"}
        # Items whose image could not be decoded: dropped with the reason, counted, never scored as a wrong answer.
        dropped = []
        for g in ("gen", "open"):
            if g in preds_of:
                keep = [(it, p) for it, p in zip(groups[g], preds_of[g]) if not isinstance(p, UndecodableImage)]
                dropped += [(it.id, str(p)) for it, p in zip(groups[g], preds_of[g]) if isinstance(p, UndecodableImage)]
                groups[g], preds_of[g] = [it for it, _ in keep], [p for _, p in keep]
        if dropped:
            log.warning("%s: %d item(s) dropped, image not decodable (e.g. %s)", key, len(dropped), dropped[0])
            stats_d = self.report["load_stats"][key]
            stats_d.setdefault("skipped", {})["undecodable_image"] = len(dropped)
            stats_d.setdefault("examples", {})["undecodable_image"] = [f"{i}: {r}" for i, r in dropped[:3]]
        for g in ("text_mcq", "gen"):
            if g in preds_of:
                results += [score_result(it, p, matching) for it, p in zip(groups[g], preds_of[g])]
        if groups["open"]:
            if self.judge is None:
                raise RuntimeError(f"{key}: {len(groups['open'])} open-ended items and no judge configured")
            results += self.judge(key, bench, groups["open"], preds_of["open"])
        for r in results:
            r.benchmark = key
        with open(self.out_dir / f"{key}.jsonl", "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r.__dict__, default=str, ensure_ascii=False) + "\n")
        self.results.extend(results)
        # Summaries over everything so far: CareQA-Vision's Table 10 cells pool its two keys.
        summary = summarise(self.results, probmed_metric=str(s.get("probmed_metric", "official")))
        metrics = {f"eval/{k}": v for k, v in summary.items() if v is not None}
        self.report["metrics"].update(metrics)
        leaked = leaked_item_ids(s.get("leaked_items"))
        if leaked:  # e.g. Table 8's leaked-item column: the items whose images were planted in the training data
            hit = [r for r in self.results if (r.benchmark, str(r.id)) in leaked and r.score is not None]
            if hit:
                metrics["eval/leaked_items"] = 100.0 * sum(r.score for r in hit) / len(hit)
                self.report["metrics"].update(metrics)
                self.report["counts"]["eval_counts/leaked_items"] = len(hit)
        n = {f"eval_counts/{k}": v for k, v in counts(results).items()}
        self.report["counts"].update(n)
        mine = {k: v for k, v in metrics.items() if k == f"eval/{key}" or k.startswith(f"eval/{key}/")}
        if key.startswith("careqa_vision"):
            mine.update({k: v for k, v in metrics.items() if k.startswith("eval/careqa_vision")})
        other = "lenient" if matching == "exact" else "exact"
        scored = [r for r in results if r.score is not None and f"score_{other}" in r.meta]
        if scored:
            mine[f"eval_{other}/{key}"] = 100.0 * sum(r.meta[f"score_{other}"] for r in scored) / len(scored)
            self.report["metrics"][f"eval_{other}/{key}"] = mine[f"eval_{other}/{key}"]
        if f"eval/{key}" not in mine:
            raise RuntimeError(f"{key}: {len(results)} items answered but no score came out (all unscored?)")
        return {"status": "scored", "harness": "builtin", "items": len(items), "dropped": len(dropped),
                "matching": matching,
                "prompt_style": style or "per item", "metrics": mine, "counts": n}
