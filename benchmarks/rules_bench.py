"""The `rules` tagger's throughput (the model-free scorer of dry runs at scale): rules_output per sample on a
generated corpus of PubMedVision-like conversations (multi-turn questions and long answers mixing taxonomy terms,
aliases, plurals, hyphenations, look-alike words and filler), before (tests/scoring_reference.py: every keyword regex
searched on every text) and after (the first-word prefilter of aloevision.scoring.rules), with the tags checked
identical on every sample. Then the score stage's engine in the model-free mode (`filter=model_free`: rules tags,
perplexity off, images not decoded) over the same samples into a fresh score store: samples/s end to end
(tagging, parsing, records, appends).

    PYTHONPATH=src python benchmarks/rules_bench.py [--samples 20000] [--out benchmarks/results/rules.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

FILLER = ("the image shows a well defined lesion with mild surrounding edema consistent with an inflammatory process "
          "no fracture is seen there is a small nodule and the findings suggest follow up imaging of the patient "
          "examination reveals normal appearance otherwise scanned usage ray crayon cation lungfish bonehead").split()
QUESTIONS = ("What imaging modality is used?", "Where is the abnormality located?", "Is there a fracture?",
             "Describe the image.", "What does the image show?", "Which organ is affected?",
             "What is the most likely diagnosis?", "In which quadrant is the mass?")


def corpus(n: int, seed: int = 0) -> list[list[dict]]:
    from aloevision.schema import image_part, text_part, turn
    from aloevision.scoring.taxonomy import ALIASES, VOCAB

    rng = random.Random(seed)
    terms = [t for f in VOCAB for t in VOCAB[f] if t != "Other"] + [a for f in ALIASES for a in ALIASES[f]]
    styles = (str, str.lower, str.upper, lambda t: t.replace(" ", "-"), lambda t: t + "s")

    def sentence(k: int) -> str:
        words = [rng.choice(FILLER) for _ in range(k)]
        for _ in range(rng.randint(0, 4)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(styles)(rng.choice(terms)))
        return " ".join(words).capitalize() + "."

    out = []
    for _ in range(n):
        msgs = []
        for t in range(rng.choice((1, 1, 2, 3))):
            q = rng.choice(QUESTIONS) + (" " + sentence(8) if rng.random() < 0.3 else "")
            msgs.append(turn("user", *([image_part()] if t == 0 else []), text_part(q)))
            a = " ".join(sentence(rng.randint(6, 30)) for _ in range(rng.randint(1, 6)))
            if rng.random() < 0.1:
                a = rng.choice(("Yes.", "No.", "CT", "Left lower lobe."))
            msgs.append(turn("assistant", text_part(a)))
        out.append(msgs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rules.json"))
    args = ap.parse_args()

    import scoring_reference

    from aloevision.scoring import rules

    data = corpus(args.samples)
    chars = sum(len(p["text"]) for m in data for t in m for p in t["content"] if p.get("type") == "text")
    fast = rules.keyword_tags
    t0 = time.perf_counter()
    after = [rules.rules_output(m, 1) for m in data]
    t_after = time.perf_counter() - t0
    rules.keyword_tags = scoring_reference.keyword_tags_reference  # rules_output and pair_score look it up here
    try:
        t0 = time.perf_counter()
        before = [rules.rules_output(m, 1) for m in data]
        t_before = time.perf_counter() - t0
    finally:
        rules.keyword_tags = fast
    differ = sum(a != b for a, b in zip(after, before))

    import tempfile
    from types import SimpleNamespace

    from aloevision.schema import Sample
    from aloevision.scoring import open_store, score_samples

    sc = SimpleNamespace(backend="rules", tag_model=None, ppl_model="none", batch_size=256, max_new_tokens=96,
                         trust_remote_code=False)
    samples = [Sample(id=f"pubmedvision/{i}", source="pubmedvision", domain="medical", modality="multimodal",
                      messages=m, images=[f"/nonexistent/{i}.jpg"]) for i, m in enumerate(data)]
    with tempfile.TemporaryDirectory() as tmp:
        store, backend = open_store(Path(tmp), sc)
        t0 = time.perf_counter()
        n_scored = sum(1 for _ in score_samples(samples, sc, store, backend=backend))
        t_stage = time.perf_counter() - t0
    res = {"samples": args.samples, "mean_chars": round(chars / args.samples), "before_s": round(t_before, 2),
           "after_s": round(t_after, 2), "before_samples_per_s": round(args.samples / t_before),
           "after_samples_per_s": round(args.samples / t_after), "speedup": round(t_before / t_after, 1),
           "outputs_differing": differ, "model_free_score_engine_samples_per_s": round(n_scored / t_stage),
           "python": platform.python_version(), "machine": platform.machine()}
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    if differ:
        raise SystemExit(f"{differ} samples tagged differently")


if __name__ == "__main__":
    main()
