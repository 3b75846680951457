"""lm-evaluation-harness for real, offline: the repo's `demo_medmcqa` task on the tiny Qwen2-VL through HFLM, checked
against log-likelihoods computed here directly with torch."""

import dataclasses
import json
import os

import pytest

from aloevision.evaluation.lm_eval_task import (
    TASKS_DIR,
    benchmark_tasks,
    harness_available,
    harness_status,
    make_hflm,
    metrics_from_results,
    offline_env,
    run_benchmark,
    run_lm_eval,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from aloevision.config import TinySpec
    from aloevision.model.tiny import ensure_tiny

    path = ensure_tiny(tmp_path_factory.mktemp("cache"), dataclasses.asdict(TinySpec()))
    model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k, v in offline_env().items():
        monkeypatch.setenv(k, v)


def _direct_loglik(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenised as lm-eval does (whole string, continuation = the tail)."""
    import torch

    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_demo_medmcqa_on_tiny_model_matches_direct_loglikelihood(tiny):
    model, tok = tiny
    results = run_lm_eval(make_hflm(model, tok, batch_size=4), ["demo_medmcqa"], log_samples=True)
    row = results["results"]["demo_medmcqa"]
    samples = results["samples"]["demo_medmcqa"]
    assert row["sample_len"] == 12 and len(samples) == 12

    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_medmcqa_utils", TASKS_DIR / "demo_medmcqa" / "utils.py")
    task_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task_utils)
    doc_to_text = task_utils.doc_to_text  # the task's own prompt function
    correct = 0
    for s in samples:
        ctx = doc_to_text(s["doc"])
        direct = [_direct_loglik(model, tok, ctx, " " + letter) for letter in "ABCD"]
        harness = [r[0][0] for r in s["resps"]]
        assert harness == pytest.approx(direct, abs=1e-3)
        pred = max(range(4), key=lambda i: direct[i])
        assert s["acc"] == float(pred == s["doc"]["cop"])
        correct += pred == s["doc"]["cop"]
    assert row["acc,none"] == pytest.approx(correct / 12)
    assert metrics_from_results(results) == {"demo_medmcqa": pytest.approx(100 * correct / 12)}
    renamed = metrics_from_results(results, {"multimedqa": "demo_medmcqa"})
    assert renamed == {"multimedqa": pytest.approx(100 * correct / 12)}


def test_task_reads_another_data_file_from_metadata(tiny, tmp_path):
    model, tok = tiny
    data = tmp_path / "three.jsonl"
    rows = [{"question": f"Q{i}?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": i % 4} for i in range(3)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    results = run_lm_eval(make_hflm(model, tok), ["demo_medmcqa"], metadata={"data_file": str(data)})
    assert results["results"]["demo_medmcqa"]["sample_len"] == 3

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4}))
    with pytest.raises(ValueError, match="cop=4"):
        run_lm_eval(make_hflm(model, tok), ["demo_medmcqa"], metadata={"data_file": str(bad)})


def test_unknown_task_is_a_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="does not know task"):
        run_lm_eval(make_hflm(model, tok), ["demo_medmcqa_nope"], include_path=TASKS_DIR, include_defaults=False)


def test_harness_status_is_honest():
    assert harness_status("builtin") == "built-in"
    assert harness_status("lm_eval").startswith("installed (lm_eval 0.4.")
    for name, module in (("vlmevalkit", "vlmeval"), ("lmms_eval", "lmms_eval")):
        import importlib.util

        status = harness_status(name)
        assert status.startswith("not installed" if importlib.util.find_spec(module) is None else "installed")
    with pytest.raises(ValueError, match="unknown harness"):
        harness_status("helm")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_run_benchmark_from_a_benchmark_config(tiny, tmp_path):
    from aloevision.config import BenchmarkConfig

    model, tok = tiny
    bench = BenchmarkConfig(name="demo_medmcqa", kind="text_mcq", harness="lm_eval", loader="none",
                            path=str(TASKS_DIR / "demo_medmcqa" / "demo_medmcqa.jsonl"), max_samples=5)
    scores = run_benchmark(model, tok, "multimedqa", bench, out_dir=tmp_path)
    assert set(scores) == {"multimedqa"} and 0.0 <= scores["multimedqa"] <= 100.0
    saved = json.loads((tmp_path / "lm_eval_multimedqa.json").read_text())
    assert saved["results"]["demo_medmcqa"]["sample_len"] == 5
    assert harness_available("lm_eval") and harness_available("builtin")
    mmlu = BenchmarkConfig(name="mmlu", kind="text_mcq", loader="mmlu", path="cais/mmlu",
                           options={"tasks": ["mmlu"], "subjects": ["anatomy"]})
    assert benchmark_tasks("mmlu", mmlu) == ["mmlu_anatomy"]
    assert benchmark_tasks("multimedqa", BenchmarkConfig(name="x", kind="text_mcq", loader="m", path="p",
                                                         options={"task": "multimedqa"})) == ["multimedqa"]


def test_run_benchmark_several_tasks_is_their_sample_weighted_mean(tiny):
    from aloevision.config import BenchmarkConfig

    model, tok = tiny
    bench = BenchmarkConfig(name="demo", kind="text_mcq", harness="lm_eval", loader="none", path="none",
                            options={"tasks": ["demo_medmcqa", "demo_medmcqa_text"]}, max_samples=4)
    scores = run_benchmark(model, tok, "demo", bench)
    a, b = scores["demo/demo_medmcqa"], scores["demo/demo_medmcqa_text"]
    assert scores["demo"] == pytest.approx((a + b) / 2)  # 4 samples each


def test_benchmark_tasks_from_the_composed_paper_config():
    """The composed node (a ListConfig of tasks) gives lm-eval task names, not the string "['multimedqa']"."""
    from conftest import compose

    from aloevision.evaluation.lm_eval_task import benchmark_tasks

    cfg = compose(["eval=paper"])
    assert benchmark_tasks("multimedqa", cfg.eval.benchmarks.multimedqa) == ["multimedqa"]
    assert benchmark_tasks("mmlu", cfg.eval.benchmarks.mmlu) == ["mmlu"]  # the full group, not 6 subjects


def test_group_datasets_and_the_local_redirect(tmp_path):
    import datasets

    import eval_fixtures
    from aloevision.evaluation.lm_eval_task import local_datasets, task_dataset_configs

    pairs = task_dataset_configs(["multimedqa"])
    assert ("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source") in pairs and ("cais/mmlu", "anatomy") in pairs
    assert len(task_dataset_configs(["mmlu"])) == 57
    eval_fixtures.build_hf(tmp_path)
    with local_datasets(tmp_path):
        # a repo with README configs, and a Parquet export without README
        assert datasets.load_dataset("cais/mmlu", "anatomy")["test"].num_rows == 2
        assert datasets.load_dataset("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source")["test"].num_rows == 3
    assert datasets.load_dataset is not None and getattr(datasets.load_dataset, "__name__", "") == "load_dataset"
