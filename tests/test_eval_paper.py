"""`stage=eval eval=paper` end to end: the real conf/eval/paper.yaml, pointed (by overrides only) at tiny copies of
every benchmark in its release layout (tests/eval_fixtures.py), scored with the tiny model; judges: the rules judge
(no judge model offline) and the tiny model itself."""

import json

import pytest

import eval_fixtures

PAPER_KEYS = ["pathmmu", "gmai_mmbench", "omnimedvqa", "probmed", "slake", "mmmu", "multimedqa", "mmlu",
              "careqa_vision_mcq", "careqa_vision_open"]


def _paper_args(data, tiny_path, *extra):
    # the tiny model on CPU: its own pixel bounds and a short answer budget instead of VLMEvalKit's 2048 tokens
    return ("stage=eval", "eval=paper", f"paths.data_dir={data}", f"eval.model={tiny_path}", "eval.judges=[rules,self]",
            "eval.judge_backend=transformers", "eval.min_pixels=null", "eval.max_pixels=null",
            "eval.max_new_tokens=8", *extra)


@pytest.mark.slow
def test_eval_paper_scores_every_benchmark(run_launch, tmp_path, tiny_path):
    data = eval_fixtures.build(tmp_path / "data")
    run_launch(*_paper_args(data, tiny_path))
    run = sorted(tmp_path.glob("outputs/runs/*/*_eval"))[-1]
    rec = json.loads((run / "run_record.json").read_text())
    assert rec["status"] == "finished", rec.get("error")
    metrics = rec["metrics"]
    for key in PAPER_KEYS:
        assert isinstance(metrics.get(f"eval/{key}"), float), (key, sorted(metrics))
        assert 0.0 <= metrics[f"eval/{key}"] <= 100.0
    report = rec["stages"]["eval"]
    assert report["scored"] == PAPER_KEYS and report["failed"] == [] and report["skipped"] == []
    # every benchmark's own result file, and the per-item predictions with both matchers logged
    for key in PAPER_KEYS:
        entry = json.loads((run / "eval" / f"{key}.result.json").read_text())
        assert entry["status"] == "scored"
    rows = [json.loads(x) for x in (run / "eval" / "pathmmu.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("extracted_lenient" in r["meta"] for r in rows)
    assert "eval_lenient/pathmmu" in metrics
    # the item counts of the fixtures: MMMU all 30 subjects, OmniMedVQA 3 parts without the _local twin
    assert report["load_stats"]["mmmu"]["items"] == 30 and report["load_stats"]["omnimedvqa"]["items"] == 3
    # lm-eval: the full groups, every subtask scored from the local HF-layout copies
    assert sum(k.startswith("eval/mmlu/mmlu_") for k in metrics) >= 57
    assert "eval/multimedqa/pubmedqa" in metrics and "eval/multimedqa/medqa_4options" in metrics
    # ProbMed: the official score and the alternatives side by side; CareQA-Vision Table 10 cells
    assert {"eval/probmed/official", "eval/probmed/question", "eval/probmed/official_gt"} <= set(metrics)
    assert {"eval/careqa_vision/nursing_mcq", "eval/careqa_vision/medicine_open"} <= set(metrics)


@pytest.mark.slow
def test_a_failing_benchmark_keeps_the_others(run_launch, tmp_path, tiny_path):
    data = eval_fixtures.build(tmp_path / "data")
    # a benchmark whose every row is broken fails alone; the text groups are left out to keep this test short
    (data / "eval" / "pathmmu" / "PathMMU_TEST.tsv").write_text("index\tquestion\n1\t\n")
    run_launch(*_paper_args(data, tiny_path, "~eval.benchmarks.multimedqa", "~eval.benchmarks.mmlu"))
    run = sorted(tmp_path.glob("outputs/runs/*/*_eval"))[-1]
    rec = json.loads((run / "run_record.json").read_text())
    report = rec["stages"]["eval"]
    assert report["failed"] == ["pathmmu"]
    assert "no items" in report["benchmarks"]["pathmmu"]["error"]
    assert isinstance(rec["metrics"]["eval/gmai_mmbench"], float) and "eval/pathmmu" not in rec["metrics"]


def test_missing_benchmark_file_is_a_startup_error(run_launch, tmp_path):
    proc = run_launch("stage=eval", "eval=paper", f"paths.data_dir={tmp_path / 'nowhere'}", check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "benchmark pathmmu" in err and "PathMMU_TEST.tsv" in err and "aloevision.evalsets.fetch" in err
    assert "benchmark mmlu" in err and "cais/mmlu" in err
