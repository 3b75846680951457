"""lm-evaluation-harness integration (text MCQ by option log-likelihood) and which harnesses are available.

`run_lm_eval` evaluates an already-loaded model + tokenizer (wrapped in lm-eval's `HFLM`) on lm-eval tasks: the
built-in ones (`multimedqa`, `mmlu`, ... — these need their datasets, i.e. the Hub or a local HF cache) or the
tasks defined in this repo under `lm_eval_tasks/` (`demo_medmcqa`, offline, local data).

Qwen2-VL: `Qwen2VLForConditionalGeneration` runs text-only when called with input_ids alone (the multimodal RoPE
falls back to text positions), so HFLM can wrap it as a causal LM directly (`backend="causal"`); no separate
text-only model is needed.

VLMEvalKit and lmms-eval are optional: `harness_status` reports them as "not installed" when they are absent, and
nothing here pretends to run them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")

# harness name -> (import name, distribution name, install hint)
HARNESSES = {
    "lm_eval": ("lm_eval", "lm_eval", "pip install lm-eval"),
    "vlmevalkit": ("vlmeval", "vlmeval", "pip install git+https://github.com/open-compass/VLMEvalKit"),
    "lmms_eval": ("lmms_eval", "lmms_eval", "pip install lmms-eval"),
}


def harness_status(name: str) -> str:
    """'built-in', 'installed (<dist> <version>)' or 'not installed (<how to install>)'; unknown names are errors."""
    if name == "builtin":
        return "built-in"
    if name not in HARNESSES:
        raise ValueError(f"unknown harness {name!r}; known: builtin, {', '.join(HARNESSES)}")
    module, dist, hint = HARNESSES[name]
    if importlib.util.find_spec(module) is None:
        return f"not installed ({hint})"
    try:
        return f"installed ({dist} {importlib.metadata.version(dist)})"
    except importlib.metadata.PackageNotFoundError:
        return "installed (version unknown)"


def make_hflm(model, tokenizer, *, batch_size: int = 8, max_length: int | None = None):
    """lm-eval's HFLM around a loaded model (a causal LM or a Qwen2-VL used text-only) and its tokenizer/processor."""
    from lm_eval.models.huggingface import HFLM

    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor: its tokenizer
    return HFLM(pretrained=model, tokenizer=tok, backend="causal", batch_size=batch_size, max_length=max_length)


def run_lm_eval(
    lm,
    tasks: Sequence[str],
    *,
    include_path: str | Path | Sequence[str | Path] | None = TASKS_DIR,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    metadata: dict[str, Any] | None = None,
    log_samples: bool = False,
    apply_chat_template: bool = False,
    seed: int = 0,
    include_defaults: bool | None = None,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on `tasks` with `lm` (an HFLM or any lm-eval LM). Returns lm-eval's results dict.

    lm-eval's own task configs are indexed only when a requested task is not in `include_path`
    (`include_defaults=None`, the default); indexing them costs seconds to tens of seconds.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    local = _local_task_names(paths)
    if include_defaults is None:
        include_defaults = not set(tasks) <= local
    tm = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=include_defaults,
                     metadata=metadata)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval does not know task(s) {unknown}; local tasks: {sorted(local)}")
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=tm,
        log_samples=log_samples,
        apply_chat_template=apply_chat_template,
        bootstrap_iters=0,  # no stderr bootstrap: it dominates run time on small sets and is not reported
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:  # non-zero ranks in a distributed run
        return {}
    return results


def _local_task_names(paths: Sequence[str | Path]) -> set[str]:
    import yaml

    names: set[str] = set()
    for p in paths:
        for f in Path(p).rglob("*.yaml"):
            try:
                # Task YAMLs use custom tags (!function); read only the plain `task:` line.
                for line in f.read_text().splitlines():
                    if line.startswith("task:"):
                        names.add(yaml.safe_load(line)["task"])
                        break
            except (OSError, yaml.YAMLError):
                continue
    return names


def metrics_from_results(results: dict[str, Any], benchmarks: dict[str, str] | None = None,
                         metric: str = "acc") -> dict[str, float]:
    """{benchmark: percent} from lm-eval results. `benchmarks` maps our key -> lm-eval task/group name
    (default: identity). Groups (multimedqa, mmlu) are read from `groups`, tasks from `results`."""
    table = {**results.get("results", {}), **results.get("groups", {})}
    out: dict[str, float] = {}
    if benchmarks is None:
        benchmarks = {t: t for t in results.get("results", {})}
    for key, task in benchmarks.items():
        row = table.get(task)
        if row is None:
            log.warning("lm-eval returned no results for task %s (benchmark %s)", task, key)
            continue
        value = row.get(f"{metric},none", row.get(metric))
        if isinstance(value, (int, float)):
            out[key] = 100.0 * float(value)
        else:
            log.warning("lm-eval task %s has no %r metric (has %s)", task, metric, sorted(row))
    return out


def offline_env() -> dict[str, str]:
    """Environment that keeps lm-eval / datasets / the Hub from touching the network (local tasks only)."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def harness_available(name: str) -> bool:
    return harness_status(name).startswith(("installed", "built-in"))


def _opt(bench, name: str, default=None):
    if isinstance(bench, Mapping):
        return bench.get(name, default)
    return getattr(bench, name, default)


def benchmark_tasks(key: str, bench) -> list[str]:
    """lm-eval tasks of a configured benchmark: options.tasks (list) or options.task, else bench.name, else key;
    with options.subjects and the task `mmlu`, the per-subject tasks `mmlu_<subject>` instead. `bench` is a plain
    dict (or an object with the same attributes); a composed OmegaConf node is converted first."""
    from aloevision.evaluation.values import plain

    bench = plain(bench)
    opts = dict(plain(_opt(bench, "options", {})) or {})
    tasks = opts.get("tasks") or [opts.get("task") or _opt(bench, "name") or key]
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, (list, tuple)):
        raise TypeError(f"benchmark {key}: options.tasks must be a list of lm-eval task names, got {tasks!r}")
    tasks = [str(t) for t in tasks]
    subjects = opts.get("subjects")
    if subjects and tasks == ["mmlu"]:
        tasks = [f"mmlu_{s}" for s in subjects]
    return tasks


def _task_manager(tasks: Sequence[str]):
    from lm_eval.tasks import TaskManager

    local = _local_task_names([TASKS_DIR])
    return TaskManager(include_path=[str(TASKS_DIR)], include_defaults=not set(tasks) <= local)


def task_dataset_configs(tasks: Sequence[str], tm=None) -> list[tuple[str, str | None]]:
    """(Hub dataset repo, config name) of every leaf task lm-eval runs for `tasks` (groups and tags expanded), read
    from lm-eval's own task index (no dataset is touched)."""
    tm = tm or _task_manager(tasks)
    index = tm.task_index
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def walk(spec):
        name = spec.get("task") if isinstance(spec, Mapping) else spec
        if isinstance(name, (list, tuple)):
            for n in name:
                walk(n)
            return
        name = str(name)
        if name in seen:
            return
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            raise ValueError(f"lm-eval does not know task or group {name!r}")
        kind = getattr(entry.kind, "name", str(entry.kind)).upper()
        cfg = entry.cfg or {}
        if kind == "TAG":
            for t in sorted(n for n, e in index.items() if name in (e.tags or set())):
                walk(t)
        elif kind == "GROUP":
            members = cfg.get("task") or []
            walk(members if isinstance(members, list) else [members])
        elif cfg.get("dataset_path") and not cfg.get("custom_dataset"):
            pair = (str(cfg["dataset_path"]), cfg.get("dataset_name"))
            if pair not in out:
                out.append(pair)

    for t in tasks:
        walk(t)
    return out


def task_datasets(tasks: Sequence[str], tm=None) -> list[str]:
    """The Hugging Face dataset repos lm-eval reads for `tasks`."""
    repos: list[str] = []
    for repo, _ in task_dataset_configs(tasks, tm):
        if repo not in repos:
            repos.append(repo)
    return repos


def local_dataset_dir(root: str | Path, repo: str) -> Path | None:
    """`<root>/<owner>/<name>` when it holds a downloaded copy of the dataset repo (what the fetch command writes)."""
    p = Path(str(root)).expanduser() / repo
    return p if p.is_dir() and any(p.iterdir()) else None


class local_datasets:
    """While active, `datasets.load_dataset(<owner>/<name>, ...)` reads `<root>/<owner>/<name>` when it exists: how
    lm-eval's stock tasks (which name Hub ids) read a local copy of their datasets on an offline node. A copy with a
    README `configs:` block loads by config name (cais/mmlu's layout); a copy of a Parquet export
    (`<config>/<split>/*.parquet`, no README) loads from its config's folder."""

    def __init__(self, root: str | Path | None):
        self.root = root
        self._orig = None

    def __enter__(self):
        import datasets

        if not self.root:
            return self
        self._orig = orig = datasets.load_dataset
        root = self.root

        def load_dataset(path=None, name=None, *args, **kwargs):
            local = local_dataset_dir(root, str(path)) if isinstance(path, str) else None
            if local is None:
                return orig(path, name, *args, **kwargs)
            kwargs.pop("trust_remote_code", None)
            if name and not (local / "README.md").is_file() and (local / name).is_dir():
                return orig(str(local / name), None, *args, **kwargs)
            return orig(str(local), name, *args, **kwargs)

        datasets.load_dataset = load_dataset
        return self

    def __exit__(self, *exc):
        if self._orig is not None:
            import datasets

            datasets.load_dataset = self._orig
        return False


def run_benchmark(model, tokenizer, key: str, bench, *, out_dir: str | Path | None = None, batch_size: int = 8,
                  seed: int = 0, hf_datasets_dir: str | Path | None = None) -> dict[str, float]:
    """One configured benchmark (`BenchmarkConfig`, harness lm_eval) on a loaded model: {key: %, key/<task>: %}.

    bench.options: `task` / `tasks` / `subjects` (see `benchmark_tasks`), `num_fewshot`, `data_file` (for the local
    tasks; default bench.path when it is a file), `metric` (default acc). bench.max_samples → lm-eval's `limit`
    (per task). With one task or group, `key` is its score (a group's is lm-eval's sample-weighted aggregate, e.g.
    multimedqa); with several tasks, their sample-weighted mean. The raw lm-eval results (without per-sample logs)
    go to `<out_dir>/lm_eval_<key>.json`.
    """
    import json

    from aloevision.evaluation.values import plain

    bench = plain(bench)
    opts = dict(plain(_opt(bench, "options", {})) or {})
    tasks = benchmark_tasks(key, bench)
    path = _opt(bench, "path")
    data_file = opts.get("data_file") or (path if path and Path(str(path)).is_file() else None)
    lm = make_hflm(model, tokenizer, batch_size=batch_size)
    with local_datasets(hf_datasets_dir):
        results = run_lm_eval(lm, tasks, limit=_opt(bench, "max_samples"), num_fewshot=opts.get("num_fewshot"),
                              metadata={"data_file": str(data_file)} if data_file else None, seed=seed)
    metric = str(opts.get("metric", "acc"))
    per_task = metrics_from_results(results, {t: t for t in tasks}, metric)
    if len(tasks) == 1:
        scores = {key: per_task[tasks[0]]} if tasks[0] in per_task else {}
    else:
        n = {t: (results.get("n-samples", {}).get(t) or {}).get("effective", 0) for t in per_task}
        total = sum(n.values())
        complete = total and len(per_task) == len(tasks)
        scores = {key: sum(per_task[t] * n[t] for t in per_task) / total} if complete else {}
    # every task lm-eval ran (a group's members too) as a sub-score
    subtasks = [t for t in results.get("results", {}) if len(tasks) > 1 or t != tasks[0]]
    scores.update({f"{key}/{k}": v for k, v in metrics_from_results(results, {t: t for t in subtasks}, metric).items()})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        keep = {k: results.get(k) for k in ("results", "groups", "group_subtasks", "n-samples", "versions")}
        (out / f"lm_eval_{key}.json").write_text(json.dumps(keep, indent=1, default=str))
    return scores
