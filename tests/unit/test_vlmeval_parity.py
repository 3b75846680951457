"""Parity with VLMEvalKit (Qwen2-VL entry) and ProbMed's scorer: the prompts the project builds and the answers it
extracts, on the rows and replies of tests/data/vlmeval_vectors.json (made by running VLMEvalKit's own functions;
tests/data/README.md). Items are built by the project's real loaders from TSVs written in VLMEvalKit's layout."""

import base64
import json
from pathlib import Path

import pytest

import eval_fixtures
from aloevision.evalsets import load_benchmark
from aloevision.evaluation.answers import extract_exact, score_item
from aloevision.evaluation.generation import item_prompt
from aloevision.evaluation.protocol import probmed_score_binary, yorn_extraction
from aloevision.evaluation.runner import prompt_style

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "data" / "vlmeval_vectors.json").read_text())


def _tsv_item(tmp_path, dataset, row, kind="mcq"):
    n = int(row.get("n_images") or 1)
    imgs = [base64.b64encode(eval_fixtures.png(k)).decode() for k in range(n)]
    cols = [c for c in row if c not in ("n_images",)]
    values = ["" if row[c] is None else row[c] for c in cols]
    eval_fixtures.write_tsv(tmp_path / "x.tsv", cols + ["image"], [values + [imgs[0] if n == 1 else str(imgs)]])
    bench = {"name": dataset, "kind": kind, "loader": "vlmevalkit_tsv", "path": str(tmp_path / "x.tsv"),
             "split": "test", "options": {}}
    items, stats = load_benchmark(bench)
    assert len(items) == 1, stats.as_dict()
    return items[0], bench


def _check_mcq(tmp_path, vec):
    item, bench = _tsv_item(tmp_path, vec["dataset"], vec["row"])
    assert item_prompt(item, prompt_style(bench)) == vec["prompt"]["text"]
    assert len(item.images) == vec["prompt"]["images"]
    for s in vec["scores"]:
        got = extract_exact(item, s["reply"]).answer or "Z"
        assert got == s["opt"], (s["reply"], got, s["opt"])
        assert score_item(item, s["reply"]) == float(s["hit"]), s["reply"]


@pytest.mark.parametrize("vec", VECTORS["mcq"], ids=lambda v: f"{v['dataset']}-{v['row']['index']}")
def test_mcq_prompt_and_exact_matching(tmp_path, vec):
    _check_mcq(tmp_path, vec)


@pytest.mark.parametrize("vec", VECTORS["mmmu"], ids=lambda v: f"mmmu-{v['row']['index']}")
def test_mmmu_prompt_and_two_option_rewrite(tmp_path, vec):
    _check_mcq(tmp_path, vec)


def test_mmmu_hf_parquet_row_prompts_like_the_tsv(tmp_path):
    """The HF MMMU layout (what the paper config reads) gives the same prompt and rewrite as VLMEvalKit's TSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    open_vec = next(v for v in VECTORS["mmmu"] if v["row"]["A"] is None)
    mcq_vec = next(v for v in VECTORS["mmmu"] if v["row"]["A"] is not None and v["prompt"]["images"] == 1)
    rows = []
    for n, vec in enumerate((mcq_vec, open_vec)):
        r = vec["row"]
        is_open = r["A"] is None
        opts = [r[k] for k in "ABCDEFGHI" if r.get(k) is not None]
        rows.append({"id": f"validation_Clinical_Medicine_{n + 1}", "question": r["question"].replace("", ""),
                     "options": str(opts), "image_1": {"bytes": eval_fixtures.png(1), "path": None},
                     "answer": r["answer"], "question_type": "open" if is_open else "multiple-choice"})
    (tmp_path / "Clinical_Medicine").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "Clinical_Medicine" / "validation-00000-of-00001.parquet")
    bench = {"name": "MMMU_DEV_VAL", "kind": "mcq", "loader": "mmmu", "path": str(tmp_path), "split": "validation",
             "options": {"subjects": ["Clinical_Medicine"]}}
    items, _ = load_benchmark(bench)
    for item, vec in zip(items, (mcq_vec, open_vec)):
        assert item_prompt(item, prompt_style(bench)) == vec["prompt"]["text"]
        for s in vec["scores"]:
            assert (extract_exact(item, s["reply"]).answer or "Z") == s["opt"], s["reply"]


@pytest.mark.parametrize("vec", VECTORS["yorn"], ids=lambda v: v["dataset"])
def test_yes_no_prompt_and_scorers(tmp_path, vec):
    from aloevision.evalsets.base import EvalItem

    item = EvalItem("1", vec["dataset"], "probmed", vec["row"]["question"], "yes", images=["x"])
    assert item_prompt(item) == vec["prompt"]["text"]
    for s in vec["scores"]:
        assert yorn_extraction(s["reply"]) == s["yorn_extraction"], s["reply"]
        assert probmed_score_binary(s["reply"], "yes") == s["probmed_yes"], s["reply"]
        assert probmed_score_binary(s["reply"], "no") == s["probmed_no"], s["reply"]
        assert score_item(item, s["reply"]) == float(s["probmed_yes"])


@pytest.mark.parametrize("vec", VECTORS["vqa"], ids=lambda v: v["dataset"])
def test_open_question_prompt(vec):
    from aloevision.evalsets.base import EvalItem

    item = EvalItem("1", vec["dataset"], "open", vec["row"]["question"], vec["row"]["answer"], images=["x"])
    assert item_prompt(item) == vec["prompt"]["text"]


def test_lenient_matching_is_a_different_named_option():
    """`matching=lenient` is kept beside the exact default; on these replies it differs where a reply names a letter
    that is not an option ("A and C" with options A/B: lenient A, VLMEvalKit Z)."""
    from aloevision.evalsets.base import EvalItem
    from aloevision.evaluation.answers import score_result

    vec = next(v for v in VECTORS["mcq"] if v["dataset"] == "OmniMedVQA")
    item = EvalItem("1", "OmniMedVQA", "mcq", vec["row"]["question"], "A", {"A": "normal", "B": "abnormal"})
    r = score_result(item, "A and C are both plausible.")
    assert r.extracted is None and r.score == 0.0 and r.rule == "can_infer_failed"
    assert r.meta["extracted_lenient"] == "A" and r.meta["score_lenient"] == 1.0
    r = score_result(item, "A and C are both plausible.", matching="lenient")
    assert r.extracted == "A" and r.score == 1.0 and r.meta["extracted_exact"] is None
