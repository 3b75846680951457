"""Cost of the ingest cache key's data stamp (`aloevision.utils.fingerprint.data_stamp`: every file's name, size and
mtime) on a source folder of many files, against the old stamp (which walked the tree but kept only 5,000 files).

    PYTHONPATH=src python benchmarks/stamp_bench.py [--files 1000000] [--out benchmarks/results/stamp.json]

The folder (1,000 subfolders of empty files, like an extracted image tree) is generated once under
/tmp/aloevision-stamp-bench. Page-cache state: the timings are warm (the metadata was just written or walked);
a cold walk over network storage costs more, see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def old_stamp(path: str, limit: int = 5000) -> list:
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file())[:limit]
    return [[str(f.relative_to(p.parent)), f.stat().st_size, int(f.stat().st_mtime)] for f in files]


def build(root: Path, n: int) -> None:
    marker = root / f".complete-{n}"
    if marker.exists():
        return
    per = max(1, n // 1000)
    made = 0
    for d in range(1000):
        sub = root / f"images_{d:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for k in range(per):
            if made >= n:
                break
            open(sub / f"img_{d:04d}_{k:05d}.png", "wb").close()
            made += 1
    marker.touch()


def main() -> None:
    from aloevision.utils.fingerprint import data_stamp

    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stamp.json"))
    a = ap.parse_args()
    root = Path(os.environ.get("ALOEVISION_STAMP_BENCH", "/tmp/aloevision-stamp-bench")) / str(a.files)
    t = time.perf_counter()
    build(root, a.files)
    built = time.perf_counter() - t
    res = {"files": a.files, "build_s": round(built, 1), "machine": platform.node(), "cpus": os.cpu_count()}
    for name, fn in (("new_stamp", data_stamp), ("old_stamp_5000", old_stamp)):
        times = []
        for _ in range(2):
            t = time.perf_counter()
            out = fn(str(root))
            times.append(time.perf_counter() - t)
        res[name] = {"seconds": [round(x, 2) for x in times], "key_json_bytes": len(json.dumps(out))}
    res["new_stamp"]["files_seen"] = data_stamp(str(root))[1]
    print(json.dumps(res, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
