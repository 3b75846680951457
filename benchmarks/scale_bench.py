"""The data stages at scale, end to end, as a user runs them on a cluster: one `python launch.py stage=X` job per
step, the sharded stages as 2-task arrays (2 processes at once, `cluster.data_shards=2 cluster.data_shard=k`) then
the job that assembles / consumes them, on a generated corpus in the real release layouts (benchmarks/scale_corpus.py:
PubMedVision JSON + image zips, Magpie parquet, a SLAKE-like leakage reference with planted duplicates).

    PYTHONPATH=src python benchmarks/scale_bench.py --samples 1000000 --images 500000 \
        [--out benchmarks/results/scale.json] [--fit-with benchmarks/results/scale_200k.json] [--keep-work]
    PYTHONPATH=src python benchmarks/scale_bench.py --samples 20000 --images 10000 \
        --out benchmarks/results/scale_20k.json

The corpus is cached under $ALOEVISION_SCALE_CORPUS (default outputs/scale_bench/corpus), the jobs' cache and run
folders under $ALOEVISION_SCALE_WORK (default outputs/scale_bench/work; removed at the end unless --keep-work).
    # the baseline before issue 18 (commit 4566f86: no image store, perplexity in the rules scorer, tokens unsharded)
    PYTHONPATH=src python benchmarks/scale_bench.py --samples 20000 --images 10000 --filter demo --model tiny \
        --extra-stages "" --sharded "" --no-export --out benchmarks/results/scale_20k_baseline.json

Defaults: `filter=model_free` (rules tags, perplexity off: no model is loaded to score), `model=qwen2vl_7b` (its
real tokenizer, rebuilt offline, counts the tokens; nothing is downloaded), `model.max_length=4096`, the mixture
`demo` without the sources the corpus lacks (natural shares), the ablation `++mixture.targets={medical_multimodal:0.7,
general_text:0.3}` (a second mixture over the same images), then `stage=export`.

Measured per job (each one process tree, started under `nice -n 5`):
- wall time (time.monotonic around the job; for an array step, from the first start to the last end);
- peak RSS: of the whole process tree (VmRSS summed over the job's processes, polled every 0.25 s; a peak shorter
  than that can be missed) and of the largest single process (`ru_maxrss` from wait4, never missed); RssAnon
  (private memory) of the tree beside it, since memory-mapped files count in RSS but are reclaimable;
- CPU seconds (user + sys of the tree);
- disk added: every folder of the artifact cache (`paths.cache_dir/<kind>`), the `datasets` cache
  (HF_DATASETS_CACHE, set per job so hidden copies show), the run folders; before and after each step.
Mixture storage: distinct image bytes (the corpus's JPEGs, from scale_corpus.py's manifest) vs where image bytes
are stored (the image store `<cache>/image_store`, an `images` column of image bytes in the mixture rows, the
`datasets` cache) vs the row tables (every other column, the image keys); the ablation's extra = what its mix job
added to the cache.

Extrapolation to 4M samples: linear in the sample count (wall, CPU seconds, disk; the corpus keeps its images per
sample ratio), peak RSS as measured (the goal says it must not depend on the sample count; compare runs at two
scales to check). Not a prediction of cluster timings: the 2 cores here are shared.

Which steps run is read from the code's stage graph (`aloevision.pipeline.GRAPH`) and the overrides below; see
`plan()`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from scale_corpus import DEFAULT_ROOT, ensure_corpus  # noqa: E402

DEFAULT_WORK = Path(os.environ.get("ALOEVISION_SCALE_WORK", REPO / "outputs" / "scale_bench" / "work"))
TARGET = 4_000_000
RSS_GOAL = 4 * 10**9
KNOWN_KINDS = {"ingest", "ingest_shard", "hash", "phash", "leakage", "scores", "filter", "tokens", "mix", "models",
               "tiny", "demo", "tokens_shard", "image_keys_shard", "export"}
OTHER_SOURCES = ("medmax", "mecovqa", "medgrit", "medtrinity", "cambrian", "aloe_text")
OTHER_BENCHMARKS = ("demo_mcq", "demo_yesno", "demo_text_mcq", "careqa_vision_mcq", "careqa_vision_open",
                    "demo_text_mcq_lm_eval")


# ---- the jobs ----------------------------------------------------------------------------------------------------
def common_overrides(corpus: Path, work: Path, extra: list[str], filt: str = "demo", model: str = "tiny") -> list[str]:
    """What a user sets to run the real configs on their data: the data folder, the cache, the sources of this
    corpus (the demo mixture, natural shares, minus the sources the corpus lacks), the leakage reference set."""
    return [
        f"paths.data_dir={corpus / 'data'}", f"paths.cache_dir={work / 'cache'}", f"paths.demo_dir={work / 'demo'}",
        "mixture=demo", *[f"~mixture.sources.{s}" for s in OTHER_SOURCES],
        "leakage=phash", "leakage.eval_sets=[demo_open]", f"eval.benchmarks.demo_open.path={corpus / 'eval' / 'slake'}",
        *[f"~eval.benchmarks.{b}" for b in OTHER_BENCHMARKS],
        f"filter={filt}", f"model={model}", "model.max_length=4096",
        "cluster.data_shards=2", "wandb.mode=disabled", "group=scale_bench", *extra,
    ]


def plan(args) -> list[dict[str, Any]]:
    """The steps, in order: {"name", "jobs": [(label, overrides)]}; jobs of one step run at once."""
    from aloevision.pipeline import GRAPH

    def array(stage: str) -> dict[str, Any]:
        return {"name": f"{stage} x2", "stage": stage, "array": True,
                "jobs": [(f"{stage}[{k}]", [f"stage={stage}", f"cluster.data_shard={k}", "cluster.cpus_per_task=1"])
                         for k in range(2)]}

    def single(stage: str, name: str | None = None, extra: list[str] | None = None) -> dict[str, Any]:
        return {"name": name or stage, "stage": stage, "array": False,
                "jobs": [(name or stage, [f"stage={stage}", *(extra or [])])]}

    sharded = set(args.sharded.split(",")) if args.sharded else set()
    steps = [array("ingest"), single("ingest", "ingest (assemble)")]
    steps += [array("hash"), single("leakage")]
    if not args.no_filter:
        steps += [array("score"), single("filter")]
    for stage in args.extra_stages.split(",") if args.extra_stages else []:  # e.g. the image store, when it exists
        if stage in GRAPH:
            steps += ([array(stage)] if stage in sharded else []) + [single(stage)]
    steps += ([array("tokens"), single("tokens", "tokens (assemble)")] if "tokens" in sharded else [single("tokens")])
    steps += ([array("mix")] if "mix" in sharded else []) + [single("mix")]
    steps.append(single("mix", "mix (ablation)", args.ablation.split()))
    if args.export and "export" in GRAPH:
        steps.append(single("export"))
    return steps


# ---- measuring ---------------------------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/<pid>/task/<pid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _status(pid: int) -> tuple[int, int]:
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, anon


class TreePoller(threading.Thread):
    def __init__(self, pid: int, period: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak_rss = self.peak_anon = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rss = anon = 0
            for p in _tree(self.pid):
                r, a = _status(p)
                rss += r
                anon += a
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            self.stop.wait(self.period)


def du(path: Path) -> int:
    """Bytes allocated under path (st_blocks), without following links."""
    if not path.exists():
        return 0
    total = 0
    stack = [path]
    while stack:
        p = stack.pop()
        try:
            with os.scandir(p) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        else:
                            total += e.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        pass
        except (NotADirectoryError, FileNotFoundError):
            try:
                total += p.stat().st_blocks * 512
            except OSError:
                pass
    return total


def disk(work: Path) -> dict[str, int]:
    cache = work / "cache"
    out = {f"cache/{p.name}": du(p) for p in sorted(cache.iterdir()) if p.is_dir()} if cache.is_dir() else {}
    out["hf_datasets"] = du(work / "hf_datasets")
    out["runs"] = du(work / "runs")
    return out


def run_job(label: str, cmd: list[str], env: dict[str, str], log: Path, timeout: float | None) -> dict[str, Any]:
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        poll = TreePoller(proc.pid)
        poll.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0) if timeout is None else _wait_timeout(proc, timeout)
        finally:
            poll.stop.set()
            poll.join()
    rc = os.waitstatus_to_exitcode(status) if status is not None else None
    proc.returncode = rc
    wall = time.monotonic() - t0
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"label": label, "rc": rc, "wall_s": round(wall, 2), "start": t0, "end": t0 + wall,
            "peak_rss_tree": poll.peak_rss, "peak_anon_tree": poll.peak_anon,
            "peak_rss_largest_process": ru.ru_maxrss * 1024 if ru else None,
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2) if ru else None, "log": str(log),
            **({"error_tail": tail} if rc else {})}


def _wait_timeout(proc, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, ru
        time.sleep(0.5)
    proc.terminate()  # `nice` exec'd python: this is the job itself
    pid, status, ru = os.wait4(proc.pid, 0)
    return pid, None, ru


def _safe(label: str) -> str:
    return label.replace("[", "_").replace("]", "").replace(" ", "_").replace("(", "").replace(")", "")


def _job_record(work: Path, label: str) -> dict[str, Any]:
    """What the job did (samples, leaks, drops...) and where its mixture is, from its own run record."""
    rr = work / "runs" / _safe(label) / "run_record.json"
    if not rr.is_file():
        return {}
    rec = json.loads(rr.read_text())
    return {"metrics": rec.get("metrics", {}),
            "paths": {k: v for k, v in (rec.get("paths") or {}).items() if k in ("mixture", "export")}}


def run_step(step: dict, base: list[str], work: Path, env: dict[str, str], timeout: float | None) -> dict[str, Any]:
    before = disk(work)
    results: list[dict] = [None] * len(step["jobs"])  # type: ignore[list-item]
    threads = []
    for i, (label, ov) in enumerate(step["jobs"]):
        safe = _safe(label)
        cmd = ["nice", "-n", "5", sys.executable, "launch.py", *base, *ov, f"hydra.run.dir={work / 'runs' / safe}"]
        log = work / "logs" / f"{safe}.log"

        def go(i=i, label=label, cmd=cmd, log=log):
            results[i] = run_job(label, cmd, env, log, timeout)
            results[i]["command"] = "python launch.py " + " ".join(
                c for c in cmd[5:] if not c.startswith(("paths.", "hydra.run", "eval.benchmarks.demo_open.path")))
            results[i].update(_job_record(work, label))

        t = threading.Thread(target=go)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    after = disk(work)
    added = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    rec = {
        "step": step["name"], "stage": step["stage"], "array": step["array"],
        "wall_s": round(max(r["end"] for r in results) - min(r["start"] for r in results), 2),
        "ok": all(r["rc"] == 0 for r in results),
        "peak_rss_job": max(r["peak_rss_tree"] for r in results),  # the largest job of the step (one node's task)
        "peak_rss_step": sum(r["peak_rss_tree"] for r in results),  # both array tasks at once, upper bound
        "peak_anon_job": max(r["peak_anon_tree"] for r in results),
        "peak_rss_largest_process": max(r["peak_rss_largest_process"] or 0 for r in results),
        "cpu_s": round(sum(r["cpu_s"] or 0 for r in results), 1),
        "disk_added": added, "disk_added_total": sum(added.values()),
        "jobs": [{k: v for k, v in r.items() if k not in ("start", "end")} for r in results],
    }
    return rec


# ---- mixture storage ---------------------------------------------------------------------------------------------
def table_split(folder: Path) -> dict[str, int]:
    """Bytes of the row files under folder (parquet, or Arrow IPC streams): the `images` column (image bytes when
    embedded, keys when referenced) vs the other columns, and the files' total."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = rest = files = 0
    for f in sorted(folder.rglob("*.parquet")):
        files += f.stat().st_size
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                if col.path_in_schema.split(".")[0] == "images":
                    img += col.total_compressed_size
                else:
                    rest += col.total_compressed_size
    for f in sorted(folder.rglob("*.arrow")):
        files += f.stat().st_size
        try:
            reader = pa.ipc.open_stream(str(f))
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(str(f))
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        for b in batches:  # one batch at a time: bounded memory
            for name, col in zip(b.schema.names, b.columns):
                if name == "images":
                    img += col.nbytes
                else:
                    rest += col.nbytes
    return {"files_bytes": files, "images_column_bytes": img, "other_columns_bytes": rest}


IMAGE_STORE = "image_store"  # <cache_dir>/image_store: every distinct image once (issue 18)
ROW_KINDS = ("image_keys",)  # per-sample image keys, shared by every mixture: row tables, not image bytes


def mixture_storage(work: Path, corpus_doc: dict, steps: list[dict]) -> dict[str, Any]:
    """Where the image bytes live after the mixtures are built: embedded in the mixture rows (an `images` column of
    image bytes), in an image store, in a `datasets` cache; vs the row tables (every other column, image keys)."""
    cache = work / "cache"
    mixes = {}
    for p in sorted((cache / "mix").iterdir()) if (cache / "mix").is_dir() else []:
        if p.is_dir() and not p.name.startswith("."):
            mixes[p.name] = {"bytes": du(p), **table_split(p)}
    embedded = any(m["images_column_bytes"] > m["other_columns_bytes"] for m in mixes.values())
    store = du(cache / IMAGE_STORE)
    keys = sum(du(cache / k) for k in ROW_KINDS)
    hf = du(work / "hf_datasets")
    other = {p.name: du(p) for p in sorted(cache.iterdir()) if p.is_dir() and p.name not in KNOWN_KINDS
             and p.name not in (IMAGE_STORE, "mix", *ROW_KINDS)} if cache.is_dir() else {}
    mix_total = sum(m["bytes"] for m in mixes.values())
    # image bytes embedded in rows count as image storage; referenced keys count as row table
    mix_images = sum(m["images_column_bytes"] for m in mixes.values()) if embedded else 0
    rows = mix_total - mix_images + keys
    image_storage = store + mix_images + hf
    distinct = corpus_doc["distinct_image_bytes"]
    steps_by = {s["step"]: s for s in steps}

    def cache_added(step: str) -> int:  # what a step left in the cache (its run folder's reports excluded)
        s = steps_by.get(step)
        return sum(v for k, v in s["disk_added"].items() if k != "runs") if s else 0

    abl = cache_added("mix (ablation)")
    n_img = corpus_doc["images"]
    # the ablation's own mixture: image bytes embedded in its rows scale with the image size, the rest does not
    abl_fp = next((Path(j["paths"]["mixture"]).parent.name for j in steps_by.get("mix (ablation)", {}).get("jobs", [])
                   if j.get("paths", {}).get("mixture")), None)
    abl_img = mixes[abl_fp]["images_column_bytes"] if embedded and abl_fp in mixes else 0
    return {
        "distinct_image_bytes": distinct, "mixtures": mixes, "images_embedded_in_rows": embedded,
        "image_store_bytes": store, "image_keys_bytes": keys, "hf_datasets_cache": hf, "other_cache_kinds": other,
        "mix_cache_added": cache_added("mix"), "ablation_cache_added": abl,
        "row_table_bytes": rows, "image_storage_bytes": image_storage,
        "image_storage_over_distinct": image_storage / distinct if distinct else None,
        "ablation_extra_over_image_bytes": abl / distinct if distinct else None,
        # The corpus's JPEGs are small (cheap to generate); real ones are larger, the row tables are not: the same
        # ablation over the same number of images of the corpus (~40 KB each) or of typical paper-scale
        # images (~150 KB).
        "ablation_mixture": abl_fp,
        "ablation_extra_at_image_size": {str(size): (abl - abl_img) / (n_img * size) + abl_img / distinct
                                         for size in (40_000, 150_000)} if distinct else {},
        "export_bytes": du(cache / "export"),
    }


# ---- extrapolation -----------------------------------------------------------------------------------------------
def extrapolate(doc: dict, fit_with: Path | None) -> None:
    """Per step, wall / CPU / disk at TARGET samples: linear through the origin from this run, and, with a run at
    another scale, the line through both (a fixed cost per job, e.g. start-up, plus a cost per sample)."""
    n = doc["samples"]
    other = json.loads(fit_with.read_text()) if fit_with else None
    theirs = {s["step"]: s for s in other["steps"]} if other else {}
    for s in doc["steps"]:
        x = {"wall_s": s["wall_s"] * TARGET / n, "cpu_s": s["cpu_s"] * TARGET / n,
             "disk": s["disk_added_total"] * TARGET / n, "method": "proportional", "peak_rss_job": None}
        o = theirs.get(s["step"])
        if o and other["samples"] != n and o.get("ok") and s["ok"]:
            # wall / CPU / disk stay proportional (the other run's machine load differs); peak RSS follows the line
            # through both runs: what grows with the corpus shows, what does not stays flat
            slope = (s["peak_rss_job"] - o["peak_rss_job"]) / (n - other["samples"])
            x["peak_rss_job"] = max(0.0, s["peak_rss_job"] + slope * (TARGET - n))
            x["peak_rss_job_other_scale"] = o["peak_rss_job"]
            x["rss_method"] = f"line through {other['samples']:,} and {n:,} samples"
        s["at_target"] = x
    doc["extrapolation"]["fit_with"] = str(fit_with) if fit_with else None
    doc["extrapolation"]["fit_with_samples"] = other["samples"] if other else None


# ---- report ------------------------------------------------------------------------------------------------------
def _gb(b: float | None) -> str:
    return "-" if b is None else (f"{b / 1e9:.2f} GB" if abs(b) >= 1e8 else f"{b / 1e6:.1f} MB")


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def markdown(doc: dict) -> str:
    n = doc["samples"]
    f = TARGET / n
    lines = [f"Scale benchmark: {n:,} samples / {doc['images']:,} images ({doc['date']}, {doc['code']})", "",
             "| step | wall | peak RSS (job tree / largest process) | private (anon) | CPU | disk added | "
             f"wall at {TARGET // 10**6}M (x{f:.0f}) | disk at {TARGET // 10**6}M | ok |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    fitted = any(s["at_target"].get("peak_rss_job") is not None for s in doc["steps"])
    for s in doc["steps"]:
        x = s["at_target"]
        lines.append(f"| {s['step']} | {_dur(s['wall_s'])} | {_gb(s['peak_rss_job'])} / "
                     f"{_gb(s['peak_rss_largest_process'])} | {_gb(s['peak_anon_job'])} | {_dur(s['cpu_s'])} | "
                     f"{_gb(s['disk_added_total'])} | {_dur(x['wall_s'])} | {_gb(x['disk'])} | "
                     f"{'yes' if s['ok'] else '**FAILED**'} |")
    t = doc["totals"]
    lines.append(f"| **all** | {_dur(t['wall_s'])} | {_gb(t['peak_rss_job'])} | | {_dur(t['cpu_s'])} | "
                 f"{_gb(t['disk_added'])} | {_dur(sum(s['at_target']['wall_s'] for s in doc['steps']))} | "
                 f"{_gb(sum(s['at_target']['disk'] for s in doc['steps']))} | |")
    lines += ["", f"Extrapolation to {TARGET:,}: wall, CPU and disk proportional to the samples (start-up costs "
              "included, so small runs over-estimate); " + ("peak RSS at 4M on the line through this run and "
              f"{doc['extrapolation']['fit_with']}: " + ", ".join(f"{s['step']} {_gb(s['at_target']['peak_rss_job'])}"
                                                                   for s in doc["steps"]
                                                                   if s["at_target"].get("peak_rss_job") is not None)
              if fitted else "peak RSS not extrapolated (give --fit-with a run at another scale).")]
    m = doc["mixture_storage"]
    lines += ["", f"Distinct image bytes {_gb(m['distinct_image_bytes'])}; image store {_gb(m['image_store_bytes'])}"
              f"; image keys {_gb(m['image_keys_bytes'])}; mixtures: " + "; ".join(
                  f"`{k}` {_gb(v['bytes'])} (`images` column {_gb(v['images_column_bytes'])}, other columns "
                  f"{_gb(v['other_columns_bytes'])})" for k, v in m["mixtures"].items())
              + f"; `datasets` cache {_gb(m['hf_datasets_cache'])}; other cache kinds "
                f"{', '.join(f'{k} {_gb(v)}' for k, v in m['other_cache_kinds'].items()) or 'none'}."]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for g in doc["goals"]:
        lines.append(f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def goals(doc: dict) -> list[dict[str, Any]]:
    m = doc["mixture_storage"]
    worst = max(doc["steps"], key=lambda s: s["peak_rss_job"])
    out = [{"goal": "every stage's peak RSS < 4 GB (job process tree)",
            "measured": f"max {_gb(worst['peak_rss_job'])} ({worst['step']})",
            "met": all(s["peak_rss_job"] < RSS_GOAL for s in doc["steps"])}]
    grow = [(s["step"], s["at_target"]["peak_rss_job_other_scale"], s["peak_rss_job"]) for s in doc["steps"]
            if s["at_target"].get("peak_rss_job_other_scale")]
    if grow:
        other_n = doc["extrapolation"]["fit_with_samples"]
        worst3 = sorted(grow, key=lambda g: g[1] - g[2])[:3]
        out.append({"goal": "peak RSS independent of the sample count (within 10 %)",
                    "measured": f"{other_n:,} -> {doc['samples']:,} samples: " + ", ".join(
                        f"{st} {_gb(a)} -> {_gb(b)}" for st, a, b in worst3) + "; at 4M (linear): max "
                        + _gb(max(s["at_target"]["peak_rss_job"] for s in doc["steps"]
                                  if s["at_target"].get("peak_rss_job") is not None)),
                    "met": all(b <= 1.1 * a for _, a, b in grow)})
    r = m["image_storage_over_distinct"]
    out.append({"goal": "mixture storage <= 1.1x the distinct image bytes + the row tables",
                "measured": f"image bytes stored for both mixtures (store + embedded + `datasets` cache) "
                            f"{_gb(m['image_storage_bytes'])} = {r:.2f}x the distinct image bytes; row tables "
                            f"{_gb(m['row_table_bytes'])}",
                "met": r is not None and r <= 1.1})
    a = m["ablation_extra_over_image_bytes"]
    abl_ok = all(s["ok"] for s in doc["steps"] if s["step"] == "mix (ablation)")
    at = m["ablation_extra_at_image_size"]
    out.append({"goal": "an ablation's extra mixture < 5 % of the image bytes",
                "measured": f"{_gb(m['ablation_cache_added'])} = {100 * a:.1f} % of the image bytes (mean "
                            f"{doc['corpus']['mean_image_bytes'] / 1e3:.1f} KB per image; with 40 KB images "
                            f"{100 * at['40000']:.1f} %, with 150 KB images {100 * at['150000']:.1f} %)"
                            + ("" if abl_ok else " (the ablation's mix FAILED)"),
                "met": a is not None and a < 0.05 and abl_ok})
    out.append({"goal": "every step succeeded", "measured": ", ".join(s["step"] for s in doc["steps"] if not s["ok"])
                or "all", "met": all(s["ok"] for s in doc["steps"])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=500_000)
    ap.add_argument("--corpus-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--keep-work", action="store_true", help="keep the artifacts afterwards (default: removed)")
    ap.add_argument("--override", action="append", default=[], help="extra launch.py override for every job")
    ap.add_argument("--ablation", default="++mixture.targets={medical_multimodal:0.7,general_text:0.3}",
                    help="overrides (space-separated) of the second mixture")
    ap.add_argument("--sharded", default="images,tokens", help="stages besides ingest/hash/score run as arrays")
    ap.add_argument("--extra-stages", default="images", help="stages run before tokens when the graph has them")
    ap.add_argument("--no-filter", action="store_true", help="filter=none: no score / filter steps")
    ap.add_argument("--filter", default="model_free", help="the filter config (model_free: rules tags, no perplexity; "
                                                           "before issue 18: demo, which computes perplexity)")
    ap.add_argument("--model", default="qwen2vl_7b", help="the model config whose processor counts tokens (qwen2vl_7b: "
                                                    "the real Qwen2-VL tokenizer, rebuilt offline)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the work folder and the succeeded steps of --out; run the others")
    ap.add_argument("--report-only", action="store_true",
                    help="recompute the storage, extrapolation and goals of --out from its work folder (kept)")
    ap.add_argument("--fit-with", type=Path, default=None,
                    help="results of a run at another scale: the 4M extrapolation fits wall = a + b * samples per step")
    ap.add_argument("--no-export", dest="export", action="store_false", help="skip stage=export")
    ap.add_argument("--job-timeout", type=float, default=None, help="seconds; a job past it is stopped (FAILED)")
    ap.add_argument("--code", default=None, help="label of the code measured (default: git describe)")
    args = ap.parse_args()

    corpus = ensure_corpus(args.samples, args.images, args.corpus_root)
    corpus_doc = json.loads((corpus / "corpus.json").read_text())
    work = args.work / f"s{args.samples}-i{args.images}"
    if args.report_only:
        old = json.loads(args.out.read_text())
        for step in old["steps"]:
            for job in step["jobs"]:
                job.update(_job_record(work, job["label"]))
        doc = _write(args, corpus_doc, old["steps"], work, old["code"], time.monotonic() - old["totals"]["wall_s"],
                     partial=old.get("partial", False), date=old["date"])
        print(doc["markdown"])
        return
    done: list[dict] = []
    if args.resume and args.out.is_file():  # steps that succeeded are kept, the others (and the rest) run
        done = [s for s in json.loads(args.out.read_text())["steps"] if s["ok"]]
    else:
        shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "hf_datasets"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    base = common_overrides(corpus, work, args.override, _filter(args), args.model)
    code = args.code or subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip()[:80]
    steps_done = list(done)
    t0 = time.monotonic() - sum(s["wall_s"] for s in done)
    for step in plan(args):
        if any(s["step"] == step["name"] for s in done):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {step['name']} ...", flush=True)
        rec = run_step(step, base, work, env, args.job_timeout)
        steps_done.append(rec)
        print(f"    {_dur(rec['wall_s'])}, peak RSS {_gb(rec['peak_rss_job'])} (largest process "
              f"{_gb(rec['peak_rss_largest_process'])}), disk +{_gb(rec['disk_added_total'])}"
              f"{'' if rec['ok'] else '  FAILED: ' + ' | '.join(j.get('error_tail', [''])[-1] for j in rec['jobs'])}",
              flush=True)
        _write(args, corpus_doc, steps_done, work, code, t0, partial=True)
    doc = _write(args, corpus_doc, steps_done, work, code, t0, partial=False)
    print(doc["markdown"])
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)


def _filter(args) -> str:
    return "none" if args.no_filter else args.filter


def _write(args, corpus_doc: dict, steps: list[dict], work: Path, code: str, t0: float, partial: bool,
           date: str | None = None) -> dict:
    doc = {
        "benchmark": "the data stages end to end at scale, one launch.py job per step, arrays of 2 shards",
        "samples": args.samples, "images": args.images, "date": date or time.strftime("%Y-%m-%d %H:%M"),
        "code": code,
        "partial": partial,
        "corpus": {k: v for k, v in corpus_doc.items() if k != "files_bytes"},
        "overrides": common_overrides(Path("<corpus>"), Path("<work>"), args.override, _filter(args), args.model),
        "ablation": args.ablation, "steps": steps,
        "totals": {"wall_s": round(time.monotonic() - t0, 1), "cpu_s": round(sum(s["cpu_s"] for s in steps), 1),
                   "peak_rss_job": max((s["peak_rss_job"] for s in steps), default=0),
                   "disk_added": sum(s["disk_added_total"] for s in steps), "final_disk": disk(work)},
        "extrapolation": {"target_samples": TARGET, "factor": TARGET / args.samples,
                          "assumption": "wall, CPU and disk linear in the sample count (same images per sample); "
                                        "peak RSS as measured (the goal: independent of the sample count)"},
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_at_end": os.getloadavg(),
                    "note": "2 cores shared with other sessions: wall times are upper bounds"},
    }
    extrapolate(doc, args.fit_with)
    doc["mixture_storage"] = mixture_storage(work, corpus_doc, steps)
    doc["goals"] = goals(doc) if steps else []
    doc["markdown"] = markdown(doc) if steps else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    main()
