"""Score store at scale: memory and time of the filter stage's (and the cached score stage's) reads over millions of
score records, against the previous store that kept every record in a dict.

    PYTHONPATH=src python benchmarks/score_store_bench.py [--records 1000000 [4000000 ...]] [--old-records 200000]
        [--parts 8] [--skip-score-stage] [--out benchmarks/results/score_store.json]   # 4M: the paper's scale

A store of realistic records (lines as the score stage writes them, ~0.8 KB: tags, raw scorer output, details) is
generated once per size under /tmp/aloevision-score-bench: `--parts` part files (ids by shard_of), 0.5 % of the ids
re-scored (a second line), one torn line. Each measurement runs in its own child process and reports its peak RSS
(VmHWM) and resident RSS above what the process held after its imports:

- `new` (`--records`): ScoreStore.table() (the index build), then the filter stage's work on it: decisions for every
  sample (+1 % unscored samples) collecting the run's rows, review example selection per source, coverage counts.
- `score` (`--records`): the score stage over the fully cached store: score_samples (get() per sample, duplicate check).
- `old` (`--old-records`): the previous store (every line parsed into a ScoreRecord kept in a dict) with the same
  decisions and coverage counts; its bytes per record are extrapolated to `--records`.
- `new` (`--old-records`): the new path on that same small store: like for like, and its decisions, coverage counts
  and review selections are checked equal to the old computation's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # scoring_reference: the old computation, one copy
CACHE = Path(os.environ.get("ALOEVISION_BENCH_CACHE", "/tmp/aloevision-score-bench"))
FINGERPRINT = "bench0123456789ab"
SOURCES = ("pubmedvision", "medmax", "mecovqa", "medgrit", "medtrinity", "cambrian", "pmc_vqa", "roco")
WORDS = ("the scan shows a well defined lesion in the left lower lobe with mild surrounding edema consistent with "
         "an inflammatory process no fracture is seen").split()


def sample_id(i: int) -> str:
    return f"{SOURCES[i % len(SOURCES)]}/record_{i:08d}"


def make_record(i: int, version: int = 0) -> dict:
    from aloevision.scoring.taxonomy import VOCAB

    h = (i * 2654435761 + version * 97) & 0xFFFFFFFF  # cheap deterministic variety
    tags = {f: [VOCAB[f][(h >> (3 * k + n)) % len(VOCAB[f])] for n in range(1 + (h >> k) % 2)]
            for k, f in enumerate(VOCAB)}
    failed = h % 10 == 0
    score = None if failed else float(1 + (h >> 7) % 5)
    ppl = None if h % 50 == 1 else round(1.0 + ((h >> 9) % 10_000) / 97.0, 4)
    line = " ".join(f"{f}[{', '.join(t)}]" for f, t in tags.items()) + (" SQ[?]" if failed else f" SQ[{score:g}]")
    return {
        "id": sample_id(i), "source": SOURCES[i % len(SOURCES)], "score": score, "tags": tags,
        "parse_failure": "missing_sq" if failed else None,
        "parse_detail": "no SQ[n] field in the output (model stopped early)" if failed else "",
        "oov": {"MED": ["Radiotherapy"]} if h % 31 == 0 else {}, "missing_fields": [],
        "raw_output": (line + " " + " ".join(WORDS[(h + j) % len(WORDS)] for j in range(50)))[:400],
        "ppl": ppl, "nll_mean": None if ppl is None else 0.5, "n_loss_tokens": 0 if ppl is None else 40 + h % 200,
        "ppl_failure": "no_loss_tokens" if ppl is None else None, "fingerprint": FINGERPRINT,
    }


def ensure_store(n: int, parts: int) -> Path:
    """Generate once per (size, parts); a stamp file records a finished store."""
    from aloevision.scoring.store import shard_of

    root = CACHE / f"store-{n}-{parts}"
    folder = root / FINGERPRINT
    if (root / "DONE").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    files = [open(folder / f"part-{k:05d}-of-{parts:05d}.jsonl", "w", encoding="utf-8") for k in range(parts)]
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for i in range(n):
        files[shard_of(sample_id(i), parts)].write(dumps(make_record(i)) + "\n")
    for i in range(0, n, 200):  # re-scored samples: a later line for the same id
        files[shard_of(sample_id(i), parts)].write(dumps(make_record(i, version=1)) + "\n")
    files[0].write('{"id":"pubmedvision/torn","source":"pubm')  # a killed write
    for f in files:
        f.close()
    (root / "DONE").write_text("ok\n")
    size = sum(p.stat().st_size for p in folder.glob("*.jsonl"))
    print(f"generated {n} records in {parts} parts ({size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s "
          f"-> {root}", flush=True)
    return root


def proc_status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def samples(n: int):
    """The run's samples: every scored id, and 1 % that the store lacks."""
    from aloevision.schema import Sample

    for i in range(n):
        yield Sample(id=sample_id(i), source=SOURCES[i % len(SOURCES)], domain="medical", modality="multimodal",
                     messages=[])
        if i % 100 == 0:
            yield Sample(id=f"{SOURCES[i % len(SOURCES)]}/unscored_{i}", source=SOURCES[i % len(SOURCES)],
                         domain="medical", modality="multimodal", messages=[])


def filter_cfg():
    from aloevision.config import FilterConfig, ThresholdConfig

    return FilterConfig(name="bench", default=ThresholdConfig(min_score=3, min_ppl=1.5, max_ppl=80.0),
                        per_source={"medgrit": ThresholdConfig(min_score=2), "roco": ThresholdConfig(max_ppl=40.0)})


def _old_select(records: list, thr, k: int = 4) -> dict[str, list[str]]:
    """The previous review.select_examples (sorting full records; tests/scoring_reference.py), as ids."""
    from scoring_reference import select_examples_reference

    return {name: [r.id for r in g] for name, g in select_examples_reference(records, thr, k).items()}


def child_new(root: str, n: int) -> dict:
    from array import array

    import numpy as np

    from aloevision.scoring.coverage import pair_counts
    from aloevision.scoring.review import select_examples
    from aloevision.scoring.store import ScoreRows, ScoreStore
    from aloevision.scoring.thresholds import FilterReport, iter_scored_decisions, thresholds_for

    cfg = filter_cfg()
    base = proc_status("VmRSS")
    t = time.perf_counter()
    store = ScoreStore(root, FINGERPRINT)
    table = store.table()
    build_s = time.perf_counter() - t
    after_build = proc_status("VmRSS") - base
    build_peak = proc_status("VmHWM") - base

    t = time.perf_counter()
    report = FilterReport()
    run_rows, final = array("I"), array("B")
    for _, row, drop in iter_scored_decisions(samples(n), table, cfg, report):
        if row is not None:
            run_rows.append(row.row)
            final.append(drop is None)
    decisions_s = time.perf_counter() - t

    t = time.perf_counter()
    run = ScoreRows(table, np.frombuffer(run_rows, dtype=np.uint32))
    codes = run.column("source")
    selections = {}
    for source, code in sorted((table.codes.source.names[c], c) for c in np.unique(codes).tolist()):
        groups = select_examples(run.subset(codes == code), thresholds_for(cfg, source), 4)
        selections[source] = {name: [r.id for r in g] for name, g in groups.items()}
    review_s = time.perf_counter() - t

    t = time.perf_counter()
    counts = pair_counts(run.subset(np.frombuffer(final, dtype=np.bool_)))
    coverage_s = time.perf_counter() - t
    return {
        "records": len(table), "torn_lines": store.torn_lines, "build_s": build_s, "decisions_s": decisions_s,
        "review_selection_s": review_s, "coverage_s": coverage_s,
        "index_resident_mib": after_build / 2**20, "index_bytes_per_record": after_build / len(table),
        "build_peak_mib": build_peak / 2**20,
        "peak_mib": (proc_status("VmHWM") - base) / 2**20,
        "peak_bytes_per_record": (proc_status("VmHWM") - base) / len(table),
        "resident_end_mib": (proc_status("VmRSS") - base) / 2**20,
        "check": {"report": report.to_dict(), "selections": selections, "coverage": _counts_json(counts)},
    }


def _counts_json(counts: dict) -> dict:
    return {f"{a}_x_{b}": [sorted([list(k), v] for k, v in c.items()), untagged]
            for (a, b), (c, untagged) in counts.items()}


def child_old(root: str, n: int) -> dict:
    """The previous store and filter stage: every record in a dict; decisions, run records and coverage lists."""
    from aloevision.scoring.coverage import PAIRS, coverage_counts
    from aloevision.scoring.store import ScoreRecord
    from aloevision.scoring.thresholds import FilterReport, iter_decisions, thresholds_for

    cfg = filter_cfg()
    base = proc_status("VmRSS")
    t = time.perf_counter()
    records, torn = {}, 0
    for part in sorted((Path(root) / FINGERPRINT).glob("part-*.jsonl")):
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    torn += 1
                    continue
                try:
                    rec = ScoreRecord.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    torn += 1
                    continue
                records[rec.id] = rec
    load_s = time.perf_counter() - t
    after_load = proc_status("VmRSS") - base

    t = time.perf_counter()
    report = FilterReport()
    run_scores, final_records = {}, []
    for s, drop in iter_decisions(samples(n), records, cfg, report):
        rec = records.get(s.id)
        if rec is not None:
            run_scores[s.id] = rec
            if drop is None:
                final_records.append(rec)
    decisions_s = time.perf_counter() - t
    t = time.perf_counter()
    by_source: dict[str, list] = {}
    for r in run_scores.values():
        by_source.setdefault(r.source, []).append(r)
    selections = {s: _old_select(recs, thresholds_for(cfg, s)) for s, recs in sorted(by_source.items())}
    review_s = time.perf_counter() - t
    t = time.perf_counter()
    counts = {(a, b): coverage_counts(final_records, a, b) for a, b in PAIRS}
    coverage_s = time.perf_counter() - t
    peak = proc_status("VmHWM") - base
    return {
        "records": len(records), "torn_lines": torn, "load_s": load_s, "decisions_s": decisions_s,
        "review_selection_s": review_s, "coverage_s": coverage_s,
        "dict_resident_mib": after_load / 2**20, "dict_bytes_per_record": after_load / len(records),
        "peak_mib": peak / 2**20, "peak_bytes_per_record": peak / len(records),
        "check": {"report": report.to_dict(), "selections": selections, "coverage": _counts_json(counts)},
    }


def child_score(root: str, n: int) -> dict:
    """The score stage over a fully cached store: every sample found, none scored."""
    from types import SimpleNamespace

    from aloevision.scoring.score import score_samples
    from aloevision.scoring.store import ScoreStore

    base = proc_status("VmRSS")
    store = ScoreStore(root, FINGERPRINT)
    t = time.perf_counter()
    found = sum(1 for _ in score_samples((s for s in samples(n) if "/unscored_" not in s.id),
                                         SimpleNamespace(batch_size=64), store, backend=object(),
                                         image_loader=lambda ref: None))
    secs = time.perf_counter() - t
    peak = proc_status("VmHWM") - base
    return {"samples": found, "seconds": secs, "samples_per_s": found / secs, "peak_mib": peak / 2**20,
            "peak_bytes_per_record": peak / len(store)}


def run_child(mode: str, root: Path, n: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(root), str(n)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if proc.returncode:
        sys.exit(f"{mode} ({n}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--old-records", type=int, default=200_000)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--skip-score-stage", action="store_true", help="skip the cached score-stage pass")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "score_store.json"))
    ap.add_argument("--child", nargs=3, metavar=("MODE", "ROOT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, root, n = args.child
        print(json.dumps({"new": child_new, "old": child_old, "score": child_score}[mode](root, int(n))))
        return

    small = ensure_store(args.old_records, args.parts)
    old = run_child("old", small, args.old_records)
    new_small = run_child("new", small, args.old_records)
    same = old.pop("check") == new_small.pop("check")
    print(f"old, {old['records']} records: {old['dict_bytes_per_record']:.0f} B/record resident, peak "
          f"{old['peak_mib']:.0f} MiB; load {old['load_s']:.1f} s", flush=True)
    print(f"new, {new_small['records']} records: {new_small['index_bytes_per_record']:.0f} B/record resident, "
          f"peak {new_small['peak_mib']:.0f} MiB; build {new_small['build_s']:.1f} s; same results: {same}", flush=True)
    runs = {}
    for n in args.records:
        big = ensure_store(n, args.parts)
        new = run_child("new", big, n)
        new.pop("check")
        print(f"new, {new['records']} records: build {new['build_s']:.1f} s, index {new['index_resident_mib']:.0f} "
              f"MiB ({new['index_bytes_per_record']:.0f} B/record), peak {new['peak_mib']:.0f} MiB "
              f"({new['peak_bytes_per_record']:.0f} B/record); decisions {new['decisions_s']:.1f} s, review "
              f"selection {new['review_selection_s']:.1f} s, coverage {new['coverage_s']:.2f} s", flush=True)
        score = None if args.skip_score_stage else run_child("score", big, n)
        if score:
            print(f"score stage (all cached), {score['samples']} samples: {score['seconds']:.0f} s, peak "
                  f"{score['peak_mib']:.0f} MiB", flush=True)
        runs[str(n)] = {
            "store_mib": sum(p.stat().st_size for p in (big / FINGERPRINT).glob("*.jsonl")) / 2**20,
            "new": new,
            "score_stage_cached": score,
            "old_extrapolated_peak_mib": old["peak_bytes_per_record"] * n / 2**20,
            "peak_ratio_old_over_new": old["peak_bytes_per_record"] / new["peak_bytes_per_record"],
        }
    doc = {
        "benchmark": "score store at scale: index build + the filter stage's reads (decisions, review selection, "
                     "coverage counts) and the cached score stage, vs the previous dict of ScoreRecords",
        "parts": args.parts,
        "runs": runs,
        "old_at_subsample": old,
        "new_at_subsample": new_small,
        "same_results_at_subsample": same,
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "note": "2 cores shared with other jobs while measured: times are upper bounds; RSS does not "
                            "depend on load"},
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    if not same:
        sys.exit("the new path's decisions, review selections or coverage counts differ from the old computation")


if __name__ == "__main__":
    main()
