"""Evaluation-set loaders on small native-shaped fixtures: answers normalised to letters with each set's own
indexing, images resolved, malformed rows skipped and counted by reason (never a crash)."""

from __future__ import annotations

import base64
import csv
import io
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from aloevision.evalsets import LOADERS, EvalItem, LoadStats, iter_eval_images, load_benchmark


def png(color: int = 128, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, color).save(buf, format="PNG")
    return buf.getvalue()


def noisy_png(size=(48, 48)) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bench(loader: str, path, kind: str = "", split: str = "test", **options) -> dict:
    return {"name": f"t_{loader}", "loader": loader, "kind": kind, "path": str(path), "split": split,
            "options": options}


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


# ------------------------------------------------------------------------------------------------ VLMEvalKit TSV
def test_vlmevalkit_tsv(tmp_path):
    img = b64(png(10))
    two = str([b64(png(20)), b64(png(30))])
    header = ["index", "image", "question", "hint", "A", "B", "C", "D", "E", "answer", "category", "department"]
    rows = [
        [0, img, "Which organ?", "", "liver", "lung", "heart", "", "", "B", "anatomy", "Radiology"],
        [1, "0", "Same image, other question?", "a CT", "x", "y", "", "", "", "A", "anatomy", ""],  # image reference
        [2, two, "Two images?", "", "a", "b", "c", "d", "e", "E", "multi", ""],
        [3, "!!!not base64!!!", "Bad image?", "", "a", "b", "", "", "", "A", "", ""],
        [4, img, "Hidden answer?", "", "a", "b", "", "", "", "", "", ""],
        [5, img, "Answer as text?", "", "kidney", "liver", "", "", "", "liver", "", ""],
        [6, img, "One option?", "", "only", "", "", "", "", "A", "", ""],
        [7, img, "Answer not an option?", "", "a", "b", "", "", "", "F", "", ""],
        [8, "99", "Dangling reference?", "", "a", "b", "", "", "", "A", "", ""],
    ]
    f = tmp_path / "PathMMU_TEST.tsv"
    write_tsv(f, header, rows)
    with open(f, "a") as fh:  # a broken line with more fields than the header
        fh.write("9\t" + img + "\tq\t\ta\tb\t\t\t\tA\tc\td\textra\textra2\n")
    items, stats = load_benchmark(bench("vlmevalkit_tsv", f, kind="mcq"))
    by = {it.id: it for it in items}
    assert sorted(by) == ["0", "1", "2", "5"]
    assert by["0"].answer == "B" and by["0"].options == {"A": "liver", "B": "lung", "C": "heart"}
    assert by["0"].images == [base64.b64decode(img)]
    assert by["0"].meta == {"category": "anatomy", "department": "Radiology"}
    # the hint stays apart from the question: the prompt builder puts it first ("Hint: ...", VLMEvalKit)
    assert by["1"].images == by["0"].images and by["1"].meta["hint"] == "a CT"
    assert len(by["2"].images) == 2 and by["2"].answer == "E" and len(by["2"].options) == 5
    assert by["5"].answer == "B"
    assert stats.rows == 10 and stats.items == 4
    assert dict(stats.skipped) == {"bad_image_base64": 1, "no_answer": 1, "too_few_options": 1,
                                   "answer_not_in_options": 1, "bad_image_reference": 1, "bad_row": 1}
    # hashing sees the hidden-answer row too (its image still counts for leakage)
    ids = [i for i, _ in iter_eval_images(bench("vlmevalkit_tsv", f))]
    assert "4" in ids and "2#1" in ids and "3" not in ids


def test_vlmevalkit_tsv_parts_folder_and_open_rows(tmp_path):
    header = ["index", "image", "question", "A", "B", "answer"]
    write_tsv(tmp_path / "part1.tsv", header, [[1, b64(png()), "q1?", "a", "b", "A"]])
    write_tsv(tmp_path / "part2.tsv", header, [[2, b64(png()), "open <image 1>?", "", "", "42 mg"]])
    items, stats = load_benchmark(bench("vlmevalkit_tsv", tmp_path, kind="mcq"))
    # an open row (no options) becomes VLMEvalKit's two-option MMMU question: A = the reference, B = Other Answers
    assert [(i.id, i.kind, i.answer) for i in items] == [("1", "mcq", "A"), ("2", "mcq", "A")]
    assert items[1].options == {"A": "42 mg", "B": "Other Answers"} and items[1].meta["open_question"]
    assert not stats.skipped


# ------------------------------------------------------------------------------------------------ OmniMedVQA
def test_omnimedvqa_native(tmp_path):
    qa = tmp_path / "QA_information/Open-access"
    qa.mkdir(parents=True)
    (tmp_path / "Images/ACRIMA").mkdir(parents=True)
    (tmp_path / "Images/ACRIMA/a.png").write_bytes(png())
    recs = [
        {"dataset": "ACRIMA", "question_id": "ACRIMA_0", "question_type": "Disease Diagnosis", "question": "Q?",
         "gt_answer": "Glaucoma", "option_A": "Normal", "option_B": "Glaucoma", "image_path": "Images/ACRIMA/a.png",
         "modality_type": "Fundus Photography"},
        {"dataset": "ACRIMA", "question_id": "ACRIMA_1", "question": "Q?", "gt_answer": "Cataract",
         "option_A": "Normal", "option_B": "Glaucoma", "image_path": "Images/ACRIMA/a.png"},
        {"dataset": "ACRIMA", "question_id": "ACRIMA_2", "question": "Q?", "gt_answer": "Normal",
         "option_A": "Normal", "option_B": "Glaucoma", "image_path": "Images/ACRIMA/missing.png"},
    ]
    (qa / "ACRIMA.json").write_text(json.dumps(recs))
    (qa / "Broken.json").write_text("{not json")
    items, stats = load_benchmark(bench("omnimedvqa", tmp_path, kind="mcq"))
    assert [(i.id, i.answer) for i in items] == [("ACRIMA_0", "B")]
    assert items[0].images == [str(tmp_path / "Images/ACRIMA/a.png")]
    assert items[0].meta["modality"] == "Fundus Photography"
    assert dict(stats.skipped) == {"answer_not_in_options": 1, "missing_image": 1, "bad_file": 1}


# ------------------------------------------------------------------------------------------------ ProbMed
def test_probmed_pairs(tmp_path):
    (tmp_path / "img.png").write_bytes(png())
    rows = [
        {"id": 7, "image": "img.png", "qa_type": "modality", "question": "Is this a CT?", "gt_ans": "yes"},
        {"id": 7, "image": "img.png", "qa_type": "modality", "question": "Is this an MRI?", "gt_ans": "no"},
        {"id": 7, "image": "img.png", "qa_type": "abnormality", "question": "Is there a mass?", "gt_ans": "Yes."},
        {"id": 7, "image": "img.png", "qa_type": "abnormality", "question": "Is there a cyst?", "gt_ans": "no"},
        {"id": 8, "image": "img.png", "qa_type": "modality", "question": "Q?", "gt_ans": "maybe"},
        {"id": 9, "image": "nope.png", "qa_type": "modality", "question": "Q?", "gt_ans": "yes"},
        "not a record",
    ]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    items, stats = load_benchmark(bench("probmed", tmp_path, kind="probmed"))
    assert [i.answer for i in items] == ["yes", "no", "yes", "no"]
    assert [i.meta["pair_id"] for i in items] == ["7_modality_0"] * 2 + ["7_abnormality_0"] * 2
    assert all(i.kind == "probmed" for i in items)
    assert dict(stats.skipped) == {"bad_answer": 1, "missing_image": 1, "bad_row": 1}


# ------------------------------------------------------------------------------------------------ SLAKE
def _slake_rows():
    return [
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Liver",
         "q_lang": "en", "answer_type": "OPEN", "content_type": "Organ", "qid": 11},
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "哪个器官？", "answer": "肝脏", "q_lang": "zh",
         "answer_type": "OPEN", "qid": 12},
        {"img_id": 2, "img_name": "xmlab2/source.jpg", "question": "Is it normal?", "answer": "No",
         "q_lang": "en", "answer_type": "CLOSED", "qid": 13},
        {"img_id": 3, "img_name": "xmlab3/source.jpg", "question": "Missing image?", "answer": "x", "q_lang": "en",
         "qid": 14},
    ]


def test_slake_folder_and_zip(tmp_path):
    folder = tmp_path / "folder"
    for n in (1, 2):
        (folder / f"imgs/xmlab{n}").mkdir(parents=True)
        (folder / f"imgs/xmlab{n}/source.jpg").write_bytes(png(n))
    (folder / "test.json").write_text(json.dumps(_slake_rows()))
    items, stats = load_benchmark(bench("slake", folder, kind="open"))
    assert [(i.id, i.answer) for i in items] == [("11", "Liver"), ("13", "No")]
    assert items[0].images == [str(folder / "imgs/xmlab1/source.jpg")] and items[1].meta["answer_type"] == "CLOSED"
    assert dict(stats.skipped) == {"missing_image": 1}

    zipped = tmp_path / "zipped"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "imgs.zip", "w") as zf:
        for n in (1, 2):
            zf.writestr(f"imgs/xmlab{n}/source.jpg", png(n))
    (zipped / "test.json").write_text(json.dumps(_slake_rows()))
    items, stats = load_benchmark(bench("slake", zipped, kind="open", lang="all"))
    assert [i.id for i in items] == ["11", "12", "13"]
    from aloevision.images import read_image_bytes

    assert read_image_bytes(items[0].images[0]) == png(1)  # an archive reference the project's image reader opens
    assert dict(stats.skipped) == {"missing_image": 1}


# ------------------------------------------------------------------------------------------------ MMMU
def test_mmmu_parquet(tmp_path):
    img = {"bytes": png(), "path": "x.png"}
    rows = [
        {"id": "validation_Clinical_Medicine_1", "question": "<image 1> Which?", "options": "['a', 'b', 'c']",
         "answer": "C", "image_1": img, "image_2": None, "question_type": "multiple-choice", "img_type": "['CT']"},
        {"id": "validation_Clinical_Medicine_2", "question": "<image 1> <image 2> Dose?", "options": "[]",
         "answer": "5 mg", "image_1": img, "image_2": img, "question_type": "open", "img_type": "x"},
        {"id": "validation_Clinical_Medicine_3", "question": "Q?", "options": "not a list", "answer": "A",
         "image_1": img, "image_2": None, "question_type": "multiple-choice", "img_type": "x"},
        {"id": "validation_Clinical_Medicine_4", "question": "Q?", "options": "['a', 'b']", "answer": "A",
         "image_1": None, "image_2": None, "question_type": "multiple-choice", "img_type": "x"},
    ]
    (tmp_path / "Clinical_Medicine").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "Clinical_Medicine/validation-00000-of-00001.parquet")
    items, stats = load_benchmark(bench("mmmu", tmp_path, kind="mcq", split="validation",
                                        subjects=["Clinical_Medicine"]))
    assert [(i.kind, i.answer) for i in items] == [("mcq", "C"), ("mcq", "A")]  # open: MMMU's two-option rewrite
    assert items[1].options == {"A": "5 mg", "B": "Other Answers"} and items[1].meta["reference"] == "5 mg"
    assert items[0].options == {"A": "a", "B": "b", "C": "c"} and items[0].images == [png()]
    assert len(items[1].images) == 2 and items[0].meta["subject"] == "Clinical_Medicine"
    assert dict(stats.skipped) == {"bad_options": 1, "no_image": 1}
    with pytest.raises(FileNotFoundError):  # a configured subject that is not there is a config error, not a skip
        list(LOADERS["mmmu"](bench("mmmu", tmp_path, split="validation", subjects=["Pharmacy"])))


# ------------------------------------------------------------------------------------------------ CareQA-Vision
def test_careqa_vision(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.jpg").write_bytes(png())
    close = [
        {"unique_id": "c1", "category": "Nursing", "question": "Q1?", "op1": "w", "op2": "x", "op3": "y",
         "op4": "z", "cop": 1, "image": "images/a.jpg", "year": 2021},
        {"unique_id": "c2", "category": "Medicine", "question": "Q2?", "op1": "w", "op2": "x", "op3": "y",
         "op4": "z", "cop": 4, "image_path": "images/a.jpg"},
        {"unique_id": "c3", "category": "Medicine", "question": "Q3?", "op1": "w", "op2": "x", "op3": "y",
         "op4": "z", "cop": 5, "image": "images/a.jpg"},
        {"unique_id": "c4", "category": "Medicine", "question": "Q4?", "op1": "w", "op2": "x", "cop": 1,
         "image": b64(noisy_png())},  # an embedded base64 image instead of a path
    ]
    opened = [
        {"unique_id": "o1", "category": "Medicine", "question": "Describe.", "answer": "A mass.",
         "image": "images/a.jpg"},
        {"unique_id": "o2", "category": "Nursing", "question": "Describe.", "answer": "A cyst.",
         "image": "images/missing.jpg"},
    ]
    (tmp_path / "CareQA-Vis_close.json").write_text(json.dumps(close))
    (tmp_path / "CareQA-Vis_open.json").write_text(json.dumps(opened))
    items, stats = load_benchmark(bench("careqa_vision", tmp_path))
    assert [(i.id, i.kind, i.answer) for i in items] == [("c1", "mcq", "A"), ("c2", "mcq", "D"),
                                                         ("c4", "mcq", "A"), ("o1", "open", "A mass.")]
    assert items[0].meta["category"] == "Nursing" and items[3].meta["format"] == "open"
    assert items[2].images == [noisy_png()]
    assert dict(stats.skipped) == {"bad_answer": 1, "missing_image": 1}
    only_open, _ = load_benchmark(bench("careqa_vision", tmp_path, subset="open"))
    assert [i.id for i in only_open] == ["o1"]


# ------------------------------------------------------------------------------------------------ text MCQ
def test_text_mcq_indexing(tmp_path):
    (tmp_path / "medmcqa.jsonl").write_text(
        json.dumps({"id": "m1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0}) + "\n"
        + "{broken json\n"
        + json.dumps({"id": "m2", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4}) + "\n"
        + json.dumps({"id": "m3", "question": "Q?", "opa": "a", "opb": "", "opc": "c", "opd": "d", "cop": 1}) + "\n"
    )
    items, stats = load_benchmark(bench("medmcqa", tmp_path / "medmcqa.jsonl", split="validation"))
    assert [(i.id, i.answer, i.kind) for i in items] == [("m1", "A", "text_mcq")]
    assert dict(stats.skipped) == {"bad_json": 1, "bad_answer": 1, "too_few_options": 1}

    (tmp_path / "careqa.json").write_text(json.dumps([
        {"unique_id": "k1", "question": "Q?", "op1": "a", "op2": "b", "op3": "c", "op4": "d", "cop": 1,
         "category": "Medicine", "exam_id": 1, "year": 2020},
        {"unique_id": "k2", "question": "", "op1": "a", "op2": "b", "op3": "c", "op4": "d", "cop": 2},
    ]))
    items, stats = load_benchmark(bench("careqa", tmp_path / "careqa.json"))
    assert [(i.id, i.answer) for i in items] == [("k1", "A")] and dict(stats.skipped) == {"no_question": 1}

    (tmp_path / "medqa.jsonl").write_text(
        json.dumps({"id": "q1", "sent1": "Q?", "ending0": "a", "ending1": "b", "ending2": "c", "ending3": "d",
                    "label": 2}) + "\n"
        + json.dumps({"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "D"}) + "\n"
    )
    items, _ = load_benchmark(bench("medqa", tmp_path / "medqa.jsonl"))
    assert [i.answer for i in items] == ["C", "D"]

    (tmp_path / "pubmedqa.json").write_text(json.dumps({
        "12345": {"QUESTION": "Does X cause Y?", "CONTEXTS": ["c1", "c2"], "final_decision": "maybe"},
        "67890": {"QUESTION": "Q?", "CONTEXTS": [], "final_decision": "perhaps"},
    }))
    items, stats = load_benchmark(bench("pubmedqa", tmp_path / "pubmedqa.json"))
    assert [(i.answer, i.options["C"]) for i in items] == [("C", "maybe")] and "c1\nc2" in items[0].question
    assert dict(stats.skipped) == {"answer_not_in_options": 1}


def test_mmlu_subject_folders(tmp_path):
    for subj, ans in (("anatomy", 3), ("virology", 0)):
        (tmp_path / subj).mkdir()
        pq.write_table(pa.Table.from_pylist([
            {"question": "Q?", "subject": subj, "choices": ["a", "b", "c", "d"], "answer": ans},
            {"question": "Q?", "subject": subj, "choices": ["a", "b", "c", "d"], "answer": 9},
        ]), tmp_path / subj / "test-00000-of-00001.parquet")
    items, stats = load_benchmark(bench("mmlu", tmp_path, subjects=["anatomy"]))
    assert [(i.answer, i.meta["subject"]) for i in items] == [("D", "anatomy")]
    assert dict(stats.skipped) == {"bad_answer": 1}


# ------------------------------------------------------------------------------------------------ registry + demo
def test_registry_and_errors(tmp_path):
    assert {"vlmevalkit_tsv", "omnimedvqa", "probmed", "slake", "mmmu", "careqa_vision", "careqa", "medmcqa",
            "medqa", "pubmedqa", "mmlu"} <= set(LOADERS)
    with pytest.raises(KeyError, match="not registered"):
        load_benchmark(bench("nope", tmp_path))
    with pytest.raises(FileNotFoundError):
        list(LOADERS["medmcqa"](bench("medmcqa", tmp_path / "absent.jsonl")))
    # a caller-supplied LoadStats receives the counts (the eval stage reports them)
    (tmp_path / "m.jsonl").write_text('{"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}\n')
    stats = LoadStats("x")
    assert list(LOADERS["medmcqa"](bench("medmcqa", tmp_path / "m.jsonl"), stats=stats)) == []
    assert stats.as_dict()["skipped"] == {"no_answer": 1} and stats.rows == 1
    kept = list(LOADERS["medmcqa"](bench("medmcqa", tmp_path / "m.jsonl"), require_answer=False))
    assert [(i.answer, i.kind) for i in kept] == [("", "text_mcq")] and isinstance(kept[0], EvalItem)


def test_demo_eval_config_loads_every_demo_set(demo_dir):
    conf = Path(__file__).resolve().parents[2] / "conf/eval/demo.yaml"
    cfg = OmegaConf.merge(OmegaConf.create({"paths": {"demo_dir": str(demo_dir)}}),
                          {"eval": OmegaConf.load(conf)})
    expected_kinds = {"demo_mcq": {"mcq"}, "demo_yesno": {"probmed"}, "demo_open": {"open"},
                      "demo_text_mcq": {"text_mcq"}, "careqa_vision_mcq": {"mcq"}, "careqa_vision_open": {"open"},
                      "demo_text_mcq_lm_eval": {"text_mcq"}}
    assert set(cfg.eval.benchmarks) == set(expected_kinds)
    for key, b in cfg.eval.benchmarks.items():
        items, stats = load_benchmark(b)
        assert 20 <= len(items) <= 60 or key == "careqa_vision_open", (key, len(items))
        assert not stats.skipped, (key, dict(stats.skipped))
        assert {i.kind for i in items} == expected_kinds[key]
        assert len({i.id for i in items}) == len(items), f"{key}: duplicate item ids"
        if b.kind in ("mcq", "text_mcq"):
            assert all(i.answer in i.options for i in items)
        if b.kind == "probmed":
            pairs = {}
            for i in items:
                pairs.setdefault(i.meta["pair_id"], []).append(i.answer)
            assert all(sorted(v) == ["no", "yes"] for v in pairs.values())
        n_img = sum(1 for _ in iter_eval_images(b))
        assert n_img == (0 if b.kind == "text_mcq" else len(items))


def test_paper_eval_config_keys():
    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/eval/paper.yaml")
    assert {"pathmmu", "gmai_mmbench", "omnimedvqa", "probmed", "slake", "mmmu", "multimedqa", "mmlu",
            "careqa_vision_mcq", "careqa_vision_open"} == set(conf.benchmarks)
    harness = {k: v.harness for k, v in conf.benchmarks.items()}
    assert harness["multimedqa"] == harness["mmlu"] == "lm_eval"
    # the multimodal sets run in the project's engine with VLMEvalKit's protocol (no harness value skips them)
    assert {harness[k] for k in ("pathmmu", "gmai_mmbench", "omnimedvqa", "mmmu", "slake")} == {"builtin"}
    assert harness["probmed"] == harness["careqa_vision_mcq"] == "builtin"
    assert all(v.loader in LOADERS for v in conf.benchmarks.values())
