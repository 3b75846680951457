"""Token statistics throughput: the fast path (template render + one tokenizer pass + header-only image sizes) vs
the naive path (decode every image, run the processor and the training collator per sample), on the same samples,
single core. Counts must be identical.

    PYTHONPATH=src python benchmarks/tokens_bench.py [--samples 2000] [--naive-samples 150] [--out benchmarks/results/tokens.json]

Uses the offline Qwen2-VL-7B processor (real tokenizer, the 7B recipe's pixel bounds) and JPEG/PNG files on disk
with sizes typical of the medical sources (256-1400 px sides).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: the figure is samples/s/core
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def make_samples(n: int, image_dir: Path, seed: int = 0) -> list[dict]:
    from PIL import Image

    from aloevision.schema import image_part, text_part, turn

    rng = random.Random(seed)
    words = ("the lesion shows a well defined mass in the left lower lobe with no pleural effusion; findings are "
             "consistent with pneumonia. MRI T2 hyperintense signal 3.5 cm").split()
    pool = []  # a pool of distinct image files, reused across samples as real sources reuse figures
    for i in range(40):
        w, h = rng.randint(256, 1400), rng.randint(256, 1400)
        p = image_dir / f"im{i}.{'jpg' if i % 3 else 'png'}"
        Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(p, quality=85)
        pool.append(str(p))

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    out = []
    for i in range(n):
        kind = i % 4  # single image VQA, multi-image, multi-turn, text-only
        n_img = {0: 1, 1: rng.randint(2, 3), 2: 1, 3: 0}[kind]
        images = [rng.choice(pool) for _ in range(n_img)]
        msgs = [turn("user", *[image_part()] * n_img, text_part(text(rng.randint(8, 40)) + "?")),
                turn("assistant", text_part(text(rng.randint(20, 250))))]
        if kind == 2:
            msgs += [turn("user", text_part(text(15))), turn("assistant", text_part(text(80)))]
        out.append({"id": f"bench/{i}", "source": "bench", "messages": msgs, "images": images})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--naive-samples", type=int, default=150)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tokens.json"))
    ap.add_argument("--cache", default=str(REPO / "outputs" / "cache" / "shared" / "models"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from aloevision.images import open_image, to_rgb
    from aloevision.model.processor import load_processor
    from aloevision.model.qwen_tokenizer import ensure_processor_dir
    from aloevision.tokens import TokenCounter, collator_counts

    processor = load_processor(str(ensure_processor_dir(args.cache)), min_pixels=3136, max_pixels=1003520)
    with tempfile.TemporaryDirectory() as d:
        samples = make_samples(args.samples, Path(d))
        counter = TokenCounter(processor, max_length=4096)
        counter.count_many(samples[:8])  # warm-up (template compile)

        t0 = time.perf_counter()
        fast = []
        for i in range(0, len(samples), 256):
            fast += counter.count_many(samples[i:i + 256])
        fast_s = time.perf_counter() - t0

        naive_rows = samples[: args.naive_samples]
        t0 = time.perf_counter()
        naive = []
        for row in naive_rows:  # what a per-sample processor + collator call costs, image decoding included
            decoded = {**row, "images": [to_rgb(open_image(ref)) for ref in row["images"]]}
            naive += collator_counts(processor, [decoded])
        naive_s = time.perf_counter() - t0

    identical = fast[: len(naive)] == naive
    fast_rate, naive_rate = len(samples) / fast_s, len(naive_rows) / naive_s
    result = {
        "benchmark": "token statistics, samples/s on one core",
        "processor": "offline Qwen2-VL-7B (real tokenizer), min_pixels=3136, max_pixels=1003520",
        "samples": len(samples),
        "naive_samples": len(naive_rows),
        "mix": "1/4 single-image VQA, 1/4 2-3 images, 1/4 multi-turn, 1/4 text-only; images 256-1400 px JPEG/PNG",
        "fast_samples_per_s": round(fast_rate, 1),
        "naive_samples_per_s": round(naive_rate, 2),
        "speedup": round(fast_rate / naive_rate, 1),
        "counts_identical": identical,
        "mean_total_tokens": round(sum(r.total for r in fast) / len(fast), 1),
        "mean_loss_tokens": round(sum(r.loss for r in fast) / len(fast), 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not identical:
        raise SystemExit("fast and naive counts differ")


if __name__ == "__main__":
    main()
