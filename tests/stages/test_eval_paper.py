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
    run_launch(*_paper_args(data, tiny_path, "group=paper_suite"))
    run = sorted(tmp_path.glob("outputs/runs/paper_suite/*_eval"))[-1]
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

    # stage=report rebuilds Table 3 and Table 10 from this run: a number in every paper column
    run_launch("stage=report", "report.group=paper_suite")
    reports = sorted(tmp_path.glob("outputs/runs/*/*_report/report"))
    assert reports, "no report written"
    import csv

    from aloevision.report.tables import TABLE3_COLUMNS, TABLE10_COLUMNS

    for table, columns in (("table3", TABLE3_COLUMNS), ("table10", TABLE10_COLUMNS)):
        csvs = sorted(reports[-1].glob(f"*{table}*.csv"))
        assert csvs, f"no {table} CSV in {reports[-1]}: {sorted(p.name for p in reports[-1].iterdir())}"
        rows = list(csv.DictReader(open(csvs[-1])))
        measured = {r["benchmark"] for r in rows if r.get("measured") not in (None, "")}
        assert set(columns) <= measured, (table, set(columns) - measured)


@pytest.mark.slow
def test_a_failing_benchmark_keeps_the_others(run_launch, tmp_path, tiny_path):
    data = eval_fixtures.build(tmp_path / "data")
    # a benchmark whose every row is broken fails alone; the text groups are left out to keep this test short
    (data / "eval" / "pathmmu" / "PathMMU_TEST.tsv").write_text("index\tquestion\n1\t\n")
    # a row whose image is valid base64 but not an image: that item is dropped and counted, GMAI still scores
    import base64

    junk = base64.b64encode(b"these bytes are not an image at all").decode()
    with open(data / "eval" / "gmai_mmbench" / "GMAI-MMBench_VAL.tsv", "a") as f:
        f.write(f"999\tBad image?\t\ta\tb\tc\td\tA\t{junk}\tx\n")
    run_launch(*_paper_args(data, tiny_path, "~eval.benchmarks.multimedqa", "~eval.benchmarks.mmlu"))
    run = sorted(tmp_path.glob("outputs/runs/*/*_eval"))[-1]
    rec = json.loads((run / "run_record.json").read_text())
    report = rec["stages"]["eval"]
    assert report["failed"] == ["pathmmu"]
    assert "no items" in report["benchmarks"]["pathmmu"]["error"]
    assert isinstance(rec["metrics"]["eval/gmai_mmbench"], float) and "eval/pathmmu" not in rec["metrics"]
    assert report["load_stats"]["gmai_mmbench"]["skipped"]["undecodable_image"] == 1
    assert report["benchmarks"]["gmai_mmbench"]["dropped"] == 1 and report["benchmarks"]["gmai_mmbench"]["items"] == 4


def test_missing_benchmark_file_is_a_startup_error(run_launch, tmp_path):
    # stage=all: the eval stage's check fails the job before ingest (not after hours of training)
    proc = run_launch("stage=all", "eval=paper", "mixture=demo", f"paths.data_dir={tmp_path / 'nowhere'}",
                      check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "benchmark pathmmu" in err and "PathMMU_TEST.tsv" in err and "aloevision.evalsets.fetch" in err
    assert "benchmark mmlu" in err and "cais/mmlu" in err
    assert "== stage ingest" not in err


def test_ablation_presets_evaluate_on_the_paper_suite_with_a_real_model():
    from conftest import compose

    for exp in ("ablation_mixture", "ablation_leakage", "ablation_filtering"):
        assert compose([f"+experiment={exp}"]).eval.name == "demo"  # the tiny model: the demo sets
        for model in ("qwen2vl_7b", "qwen2vl_72b"):
            cfg = compose([f"+experiment={exp}", f"model={model}"])
            assert cfg.eval.name == "paper" and len(cfg.eval.benchmarks) == 10
        # an explicit choice still wins
        assert compose([f"+experiment={exp}", "model=qwen2vl_7b", "eval=demo"]).eval.name == "demo"


def test_fetch_plan_covers_every_paper_path(tmp_path):
    """The fetch command writes where conf/eval/paper.yaml reads (builtin sets) and every lm-eval dataset repo."""
    from conftest import compose

    from aloevision.evalsets.fetch import plan
    from aloevision.evaluation.lm_eval_task import task_datasets

    cfg = compose(["eval=paper", f"paths.data_dir={tmp_path}"])
    dests = [str(tmp_path / "eval" / s.dest) for sources in plan().values() for s in sources]
    for key, bench in cfg.eval.benchmarks.items():
        if bench.harness == "lm_eval":
            for repo in task_datasets(list(bench.options.tasks)):
                assert str(tmp_path / "eval" / "hf" / repo) in dests, (key, repo)
        else:
            assert any(str(bench.path).startswith(d) for d in dests), (key, bench.path)
