"""Parquet sources decode only the columns their adapter reads: the Magpie adapter over a Magpie-like parquet file
(long `conversation` column + metadata + a 1,024-float `embedding` column the adapter never reads), all columns
(before) vs the adapter's columns (after). Each read runs in its own child process: wall time of reading every
sample, peak RSS above the process's imports, and pyarrow's peak allocation.

    PYTHONPATH=src python benchmarks/parquet_columns_bench.py [--rows 25000] \
        [--out benchmarks/results/parquet_columns.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CHILD = r"""
import json, sys, time, resource
import pyarrow as pa
from aloevision.config import SourceConfig
from aloevision.sources import magpie, read_source
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
base = rss()
if sys.argv[2] == "all":
    magpie.COLUMNS = None
cfg = SourceConfig(name="magpie", adapter="magpie", domain="general", modality="text", path=sys.argv[1])
pool = pa.default_memory_pool()
t = time.perf_counter()
n = sum(1 for _ in read_source(cfg))
print(json.dumps({"samples": n, "s": time.perf_counter() - t, "peak_rss_mib": (rss() - base) / 2**20,
                  "arrow_peak_mib": pool.max_memory() / 2**20}))
"""


def make(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    words = "the patient presented with a cough and the answer explains the likely causes in detail".split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    batch = []
    writer = None
    for i in range(rows):
        conv = [{"role": "user", "content": text(40)}, {"role": "assistant", "content": text(300)}]
        batch.append({"conversation": conv,
                      "difficulty": "easy", "quality": "good", "primary_tag": "Reasoning", "model_name": "llama",
                      "id": f"m{i}", "embedding": [rng.random() for _ in range(1024)]})
        if len(batch) == 5000 or i == rows - 1:
            t = pa.Table.from_pylist(batch, schema=pa.schema([
                ("conversation", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                ("difficulty", pa.string()), ("quality", pa.string()), ("primary_tag", pa.string()),
                ("model_name", pa.string()), ("id", pa.string()), ("embedding", pa.list_(pa.float32()))]))
            writer = writer or pq.ParquetWriter(path, t.schema)
            writer.write_table(t)
            batch = []
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=25000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "parquet_columns.json"))
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "data").mkdir()
        f = Path(d) / "data" / "train-00000-of-00001.parquet"
        make(f, args.rows)
        res = {"rows": args.rows, "file_mib": round(f.stat().st_size / 2**20, 1)}
        for mode in ("all", "adapter"):
            out = subprocess.run([sys.executable, "-c", CHILD, d, mode], env=env, capture_output=True, text=True,
                                 check=True).stdout
            res[mode] = {k: round(v, 2) if isinstance(v, float) else v for k, v in json.loads(out).items()}
    res["speedup"] = round(res["all"]["s"] / res["adapter"]["s"], 1)
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores (shared)"
    print(json.dumps(res, indent=1))
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
