"""Demo evaluation sets in the native formats of the paper's benchmarks (under `<demo>/eval/`):

- `mcq/DemoMCQ.tsv`           VLMEvalKit MCQ TSV: index, image (base64), question, A..D, answer (letter), category
- `probmed/test.json`         ProbMed-like yes/no with paired adversarial questions (+ `images/`)
- `slake/test.json` + `imgs/` SLAKE-like open-ended (img_name, question, answer, answer_type, q_lang, qid, ...)
- `medmcqa/validation.jsonl`  MedMCQA-like text MCQ (question, opa..opd, cop 0-indexed)
- `careqa_vision/CareQA-Vis_close.json`, `CareQA-Vis_open.json` + `images/`: CareQA-Vision-like (closed MCQ with
  1-indexed `cop`, open-ended), category nursing | medicine

All items come from the same scene generator as the training data. The image-dependent sets (DemoMCQ, the ProbMed
and SLAKE-like sets) ask for the MODALITY of held-out scans, balanced over the four modalities (chance: 25 % for MCQ
and open answers, 50 % per yes/no question, 25 % per ProbMed pair), worded as the demo training questions
(aloevision.demo.qa.modality_questions). DemoMCQ lists its options in the fixed order of MODALITY_OPTIONS, so a
constant letter scores 25 %; CareQA-Vision's closed items shuffle them (the items the demo leaks into MedMax).
"""

from __future__ import annotations

import base64

from aloevision.demo.context import BuildContext
from aloevision.demo.images import encode
from aloevision.demo.qa import (
    MCQ_MODALITY_QUESTION, MODALITY_OPTIONS, OPEN_MODALITY_QUESTION, TEXT_FACTS, random_scene, yesno_modality_question,
)
from aloevision.demo.vocabulary import MODALITIES
from aloevision.evaluation.protocol import build_prompt

LETTERS = "ABCD"


def _shuffled(rng, correct: str, pool: list[str]) -> list[str]:
    opts = [correct] + [p for p in pool if p != correct][:3]
    return [opts[i] for i in rng.permutation(len(opts))]


def build_mcq(ctx: BuildContext, n: int = 48) -> None:
    header = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
    rows = []
    opts = list(MODALITY_OPTIONS.values())
    for i in range(n):
        rng = ctx.rng("eval", "mcq", i)
        s = random_scene(rng, modality=MODALITIES[i % 4], p_normal=0.0)
        jpg = encode(s.scan.image, "JPEG", quality=92)
        b64 = base64.b64encode(jpg).decode()
        # VLMEvalKit convention: a row may reference another row's image by its index (short digit string).
        if i == n - 1:
            b64 = str(n - 5)  # same modality (i % 4), so the classes stay balanced
            jpg = ctx.eval_images[f"mcq/{n - 5}"]["bytes"]
        else:
            ctx.eval_images[f"mcq/{i}"] = {"benchmark": "demo_mcq", "id": str(i), "file": None, "bytes": jpg}
        rows.append([i, b64, MCQ_MODALITY_QUESTION, *opts, LETTERS[opts.index(s.modality)], "modality"])
    ctx.write_tsv("eval/mcq/DemoMCQ.tsv", header, rows)


def build_probmed(ctx: BuildContext, n_images: int = 24) -> None:
    items = []
    for i in range(n_images):
        rng = ctx.rng("eval", "probmed", i)
        s = random_scene(rng, modality=MODALITIES[i % 4], p_normal=0.0)
        name = f"images/probmed_{i:04d}.jpg"
        data = encode(s.scan.image, "JPEG", quality=92)
        ctx.write_bytes(f"eval/probmed/{name}", data)
        ctx.eval_images[f"probmed/{i}"] = {
            "benchmark": "demo_yesno", "id": str(i), "file": f"eval/probmed/{name}", "bytes": data}
        wrong_mod = [m for m in MODALITIES if m != s.modality][int(rng.integers(3))]
        pair_id = f"{i}_modality"
        for m, ans, adversarial in ((s.modality, "yes", False), (wrong_mod, "no", True)):
            items.append(
                {
                    "id": i,
                    "image": name,
                    "image_type": s.modality,
                    "qa_type": "modality",
                    "question": yesno_modality_question(m),
                    "gt_ans": ans,
                    "pair_id": pair_id,
                    "adversarial": adversarial,
                }
            )
    ctx.write_json("eval/probmed/test.json", items)


def build_slake(ctx: BuildContext, n_images: int = 40) -> None:
    items, qid = [], 0
    for i in range(n_images):
        rng = ctx.rng("eval", "slake", i)
        s = random_scene(rng, modality=MODALITIES[i % 4], p_normal=0.25)
        img_name = f"xmlab{i}/source.jpg"
        data = encode(s.scan.image, "JPEG", quality=92)
        ctx.write_bytes(f"eval/slake/imgs/{img_name}", data)
        ctx.eval_images[f"slake/{i}"] = {
            "benchmark": "demo_open", "id": str(i), "file": f"eval/slake/imgs/{img_name}", "bytes": data}
        qid += 1
        items.append(
            {
                "img_id": i,
                "img_name": img_name,
                "question": OPEN_MODALITY_QUESTION,
                "answer": s.modality,
                "q_lang": "en",
                "location": s.organ.capitalize(),
                "modality": s.modality,
                "answer_type": "OPEN",
                "base_type": "vqa",
                "content_type": "Modality",
                "triple": ["vhead", "_", "_"],
                "qid": qid,
            }
        )
        if i < 2:  # SLAKE is bilingual; the loader keeps q_lang == "en" by default
            qid += 1
            items.append(
                {
                    "img_id": i, "img_name": img_name, "question": "这是什么成像方式？", "answer": s.modality,
                    "q_lang": "zh", "location": s.organ, "modality": s.modality, "answer_type": "OPEN",
                    "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": qid,
                }
            )
    ctx.write_json("eval/slake/test.json", items)


def build_text_mcq(ctx: BuildContext) -> None:
    rows = []
    for rep in range(2):
        for j, (q, correct, distractors, expl) in enumerate(TEXT_FACTS):
            rng = ctx.rng("eval", "medmcqa", rep, j)
            opts = _shuffled(rng, correct, distractors)
            rows.append(
                {
                    "id": f"demo-medmcqa-{rep}-{j}",
                    "question": q if rep == 0 else "Question: " + q,
                    "opa": opts[0], "opb": opts[1], "opc": opts[2], "opd": opts[3],
                    "cop": opts.index(correct),
                    "choice_type": "single",
                    "exp": expl,
                    "subject_name": "Radiology" if j < 4 else "Anatomy",
                    "topic_name": None,
                }
            )
    ctx.write_jsonl("eval/medmcqa/validation.jsonl", rows)


def build_careqa_vision(ctx: BuildContext, n_close: int = 24, n_open: int = 16) -> None:
    close, open_ = [], []
    for i in range(n_close + n_open):
        rng = ctx.rng("eval", "careqa_vision", i)
        s = random_scene(rng, modality=MODALITIES[i % 4], p_normal=0.0)
        name = f"images/careqa_v_{i:04d}.jpg"
        data = encode(s.scan.image, "JPEG", quality=92)
        ctx.write_bytes(f"eval/careqa_vision/{name}", data)
        ctx.eval_images[f"careqa_vision/{i}"] = {
            "benchmark": "careqa_vision", "id": str(i), "file": f"eval/careqa_vision/{name}", "bytes": data}
        category = "nursing" if i % 3 == 0 else "medicine"
        year = 2020 + i % 5
        if i < n_close:
            q, correct = MCQ_MODALITY_QUESTION, s.modality
            opts = _shuffled(rng, correct, MODALITIES)
            ctx.eval_questions.setdefault("careqa_vision_mcq", []).append(
                {"id": f"cqv-close-{i:03d}", "prompt": build_prompt("mcq", q, dict(zip(LETTERS, opts))),
                 "answer": LETTERS[opts.index(correct)], "bytes": data})
            close.append(
                {
                    "unique_id": f"cqv-close-{i:03d}",
                    "exam_id": year,
                    "year": year,
                    "category": category,
                    "question": q,
                    "op1": opts[0], "op2": opts[1], "op3": opts[2], "op4": opts[3],
                    "cop": opts.index(correct) + 1,
                    "image": name,
                }
            )
        else:
            open_.append(
                {
                    "unique_id": f"cqv-open-{i:03d}",
                    "exam_id": year,
                    "year": year,
                    "category": category,
                    "question": "Describe the finding and where it is located.",
                    "answer": f"There is a {s.finding} in the {s.position} region of this {s.modality} image.",
                    "image": name,
                }
            )
    ctx.write_json("eval/careqa_vision/CareQA-Vis_close.json", close)
    ctx.write_json("eval/careqa_vision/CareQA-Vis_open.json", open_)


def build_all(ctx: BuildContext) -> None:
    build_mcq(ctx)
    build_probmed(ctx)
    build_slake(ctx)
    build_text_mcq(ctx)
    build_careqa_vision(ctx)
