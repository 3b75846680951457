"""Tiny copies of every benchmark of `eval=paper` in its real release layout, for the end-to-end evaluation test.

Layouts (what `python -m aloevision.evalsets.fetch` downloads, docs/evaluation.md):
- pathmmu/PathMMU_TEST.tsv, gmai_mmbench/GMAI-MMBench_VAL.tsv: VLMEvalKit TSVs (index, question, hint, A-E, answer,
  base64 image; a row may reuse another row's image by its index)
- omnimedvqa/omnimedbench_part_{1,2,10}.tsv plus a `_local` twin of part 1 (VLMEvalKit's localised copy)
- probmed/test.json + images/: ProbMed rows (id, image, image_type, qa_type, question, gt_ans) with the official
  qa_type names (modality / body_part pairs, abnormality, entity_gt_k / entity_hallu_k, grounding_gt_k / _hallu_k)
- slake/test.json + imgs.zip (bilingual rows; English kept)
- mmmu/<Subject>/validation-00000-of-00001.parquet for all 30 subjects (HF MMMU/MMMU), one open question among them
- careqa_vision/CareQA-Vis_close.json, CareQA-Vis_open.json + images/
- hf/<owner>/<name>: lm-eval's datasets as downloaded repos: cais/mmlu (README configs, 57 subjects, test + dev),
  openlifescienceai/medmcqa, GBaker/MedQA-USMLE-4-options-hf (README configs, data/*.parquet), bigbio/pubmed_qa as
  its Parquet export (<config>/<split>/0000.parquet, no README)
"""

from __future__ import annotations

import base64
import csv
import io
import json
import zipfile
from pathlib import Path

MMLU_SUBJECTS = [
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions"]


def png(seed: int, size: int = 28) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def b64(seed: int) -> str:
    return base64.b64encode(png(seed)).decode()


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def mcq_tsv(path: Path, n: int, seed: int, with_hint: bool = True, reuse_image: bool = False) -> None:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "image", "category"]
    rows = []
    for i in range(n):
        image = str(seed) if (reuse_image and i > 0) else b64(seed + i)
        rows.append([seed + i, f"Which tissue is shown ({i})?", "A stained section" if with_hint and i % 2 else "",
                     "Epithelium", "Muscle", "Nerve", "Connective tissue", "ABCD"[i % 4], image, "tissue"])
    write_tsv(path, header, rows)


def build(root: Path) -> Path:
    """Every paper benchmark under root/eval/... (root is what paths.data_dir points at)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ev = root / "eval"
    mcq_tsv(ev / "pathmmu" / "PathMMU_TEST.tsv", 3, 100)
    mcq_tsv(ev / "gmai_mmbench" / "GMAI-MMBench_VAL.tsv", 3, 200, reuse_image=True)
    for part in (1, 2, 10):
        mcq_tsv(ev / "omnimedvqa" / f"omnimedbench_part_{part}.tsv", 1, 300 + part, with_hint=False)
    # VLMEvalKit's localised twin of part 1 (same rows, images as paths): must not be read twice
    write_tsv(ev / "omnimedvqa" / "omnimedbench_part_1_local.tsv",
              ["index", "question", "A", "B", "answer", "image_path"], [[301, "dup?", "x", "y", "A", "nowhere.png"]])

    pm = ev / "probmed"
    (pm / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for img_id in range(2):
        name = f"images/pm_{img_id}.png"
        (pm / name).write_bytes(png(400 + img_id))
        qs = [("modality", "Is this a CT scan?", "yes"), ("modality", "Is this an MRI scan?", "no"),
              ("body_part", "Is this the chest?", "yes"), ("body_part", "Is this the brain?", "no"),
              ("abnormality", "Is there any abnormality?", "yes"),
              ("entity_gt_0", "Is there a nodule?", "yes"), ("entity_hallu_0", "Is there a fracture?", "no"),
              ("grounding_gt_0", "Is the nodule in the left lung?", "yes"),
              ("grounding_hallu_0", "Is the nodule in the right lung?", "no")]
        for qa_type, q, a in qs:
            rows.append({"id": img_id, "image": name, "image_type": "ct_chest", "qa_type": qa_type, "question": q,
                         "gt_ans": a})
    (pm / "test.json").write_text(json.dumps(rows))

    sl = ev / "slake"
    sl.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(sl / "imgs.zip", "w") as zf:
        for i in range(2):
            zf.writestr(f"imgs/xmlab{i}/source.jpg", png(500 + i))
    slake = []
    for i in range(2):
        slake.append({"img_id": i, "img_name": f"xmlab{i}/source.jpg", "question": "Which organ is shown?",
                      "answer": "Lung", "q_lang": "en", "answer_type": "OPEN", "qid": 2 * i})
        slake.append({"img_id": i, "img_name": f"xmlab{i}/source.jpg", "question": "图中是哪个器官？",
                      "answer": "肺", "q_lang": "zh", "answer_type": "OPEN", "qid": 2 * i + 1})
    (sl / "test.json").write_text(json.dumps(slake, ensure_ascii=False))

    from aloevision.evalsets.vlm import MMMU_SUBJECTS

    for k, subj in enumerate(MMMU_SUBJECTS):
        is_open = k == 0
        row = {"id": f"validation_{subj}_1", "question": "What does <image 1> show?",
               "options": "[]" if is_open else str(["a cell", "a tissue", "an organ", "a system"]),
               "explanation": "", "image_1": {"bytes": png(600 + k), "path": None}, "image_2": None,
               "img_type": "['Photographs']", "answer": "12" if is_open else "ABCD"[k % 4],
               "topic_difficulty": "Easy", "question_type": "open" if is_open else "multiple-choice",
               "subfield": "x"}
        for j in range(3, 8):
            row[f"image_{j}"] = None
        d = ev / "mmmu" / subj
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([row]), d / "validation-00000-of-00001.parquet")

    cq = ev / "careqa_vision"
    (cq / "images").mkdir(parents=True, exist_ok=True)
    close, open_ = [], []
    for i in range(2):
        name = f"images/cqv_{i}.png"
        (cq / name).write_bytes(png(700 + i))
        cat = "nursing" if i == 0 else "medicine"
        close.append({"unique_id": f"c{i}", "exam_id": 2023, "year": 2023, "category": cat,
                      "question": "What modality is this?", "op1": "CT", "op2": "MRI", "op3": "X-ray",
                      "op4": "Ultrasound", "cop": 1 + i, "image": name})
        open_.append({"unique_id": f"o{i}", "exam_id": 2023, "year": 2023, "category": cat,
                      "question": "Describe the finding.", "answer": "A nodule in the left lung.", "image": name})
    (cq / "CareQA-Vis_close.json").write_text(json.dumps(close))
    (cq / "CareQA-Vis_open.json").write_text(json.dumps(open_))

    build_hf(ev / "hf")
    return root


def _readme(configs: dict[str, dict[str, str]]) -> str:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    return "\n".join(lines + ["---", ""])


def build_hf(hf: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)

    mmlu = hf / "cais" / "mmlu"
    for s in MMLU_SUBJECTS:
        rows = [{"question": f"{s} question {i}?", "subject": s, "choices": ["w", "x", "y", "z"], "answer": i % 4}
                for i in range(2)]
        write(mmlu / s / "test-00000-of-00001.parquet", rows)
        write(mmlu / s / "dev-00000-of-00001.parquet", rows[:1])
    (mmlu / "README.md").write_text(_readme({s: {"test": f"{s}/test-*", "dev": f"{s}/dev-*"}
                                             for s in MMLU_SUBJECTS}))

    med = hf / "openlifescienceai" / "medmcqa"
    rows = [{"id": f"m{i}", "question": f"Which drug {i}?", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
             "cop": i % 4, "choice_type": "single", "exp": "", "subject_name": "Pharmacology", "topic_name": ""}
            for i in range(3)]
    for split in ("train", "validation", "test"):
        write(med / "data" / f"{split}-00000-of-00001.parquet", rows)
    (med / "README.md").write_text(_readme({"default": {sp: f"data/{sp}-*" for sp in ("train", "validation",
                                                                                        "test")}}))

    mq = hf / "GBaker" / "MedQA-USMLE-4-options-hf"
    rows = [{"id": f"q{i}", "sent1": f"A patient {i}?", "sent2": "", "ending0": "a", "ending1": "b", "ending2": "c",
             "ending3": "d", "label": i % 4} for i in range(3)]
    for split in ("train", "validation", "test"):
        write(mq / "data" / f"{split}-00000-of-00001.parquet", rows)
    (mq / "README.md").write_text(_readme({"default": {sp: f"data/{sp}-*" for sp in ("train", "validation",
                                                                                       "test")}}))

    pub = hf / "bigbio" / "pubmed_qa" / "pubmed_qa_labeled_fold0_source"
    rows = [{"QUESTION": f"Does X help {i}?", "CONTEXTS": ["ctx one", "ctx two"], "LABELS": ["A", "B"],
             "MESHES": ["m"], "YEAR": "2000", "reasoning_required_pred": "yes", "reasoning_free_pred": "yes",
             "final_decision": ["yes", "no", "maybe"][i % 3], "LONG_ANSWER": "long"} for i in range(3)]
    for split in ("train", "validation", "test"):
        write(pub / split / "0000.parquet", rows)
