"""The demo end to end (`python launch.py`), and the demo ablation sweep followed by its report (Table 7 shape)."""

import json

import pytest

from aloevision.utils.wandb_log import find_run_log, read_run


@pytest.mark.slow
def test_demo_pipeline_end_to_end(run_launch, tmp_path):
    proc = run_launch()
    runs = sorted(tmp_path.glob("outputs/runs/demo/*_all"))
    assert len(runs) == 1
    run = runs[0]
    rec = json.loads((run / "run_record.json").read_text())
    assert rec["status"] == "finished"
    for stage in ("ingest", "mix", "train", "eval"):
        assert stage in rec["stages"], f"stage {stage} missing from the run record"
    # Planted defects are dropped with their reasons, never silently.
    drops = {r for src in rec["stages"]["ingest"].values() for r in src.get("drops", {})}
    assert {"unreadable_image", "image_too_small", "too_many_images"} <= drops, drops
    metrics = rec["metrics"]
    assert metrics["train/global_step"] > 0 and metrics["mix/samples"] > 100
    assert {"eval/demo_mcq", "eval/demo_yesno", "eval/demo_text_mcq"} <= set(metrics)
    assert (run / "report.md").is_file() and (run / "model" / "config.json").is_file()
    # The summary printed at the end names where things are.
    assert str(run) in proc.stdout.replace("\n", "") or "run folder" in proc.stdout
    # The same metrics are in the offline W&B run.
    wb = read_run(find_run_log(run))
    assert wb["summary"]["eval/demo_mcq"] == metrics["eval/demo_mcq"]
    assert wb["run"]["group"] == "demo" and wb["config"]["model"] == "tiny"


@pytest.mark.slow
def test_demo_ablation_sweep_then_table7(run_launch, tmp_path):
    run_launch("-m", "+experiment=ablation_mixture", "train.max_steps=2", "filter=none")
    jobs = sorted(tmp_path.glob("outputs/multirun/ablation_mixture/*/*/run_record.json"))
    assert len(jobs) == 3
    recs = [json.loads(p.read_text()) for p in jobs]
    assert sorted(r["choices"]["mixture"] for r in recs) == ["final", "medical_only", "multimodal_only"]
    assert all(r["status"] == "finished" and r["group"] == "ablation_mixture" for r in recs)
    assert len({r["run_id"] for r in recs}) == 3  # one W&B run per job
    # Distinct names and folders from the choice that differs; every training step from 1 in each W&B run.
    assert len({r["name"] for r in recs}) == 3 and all("mixture=" in r["name"] for r in recs)
    assert sorted(p.parent.name.split("_", 1)[1].split("+")[0] for p in jobs) == [
        "mixture-final", "mixture-medical_only", "mixture-multimodal_only"]
    for p in jobs:
        wb = read_run(find_run_log(p.parent))
        assert [h["_step"] for h in wb["history"] if "train/loss" in h] == [1, 2] and "train" in wb["run"]["job_type"]

    run_launch("stage=report", "report.group=ablation_mixture")
    tables = sorted(tmp_path.glob("outputs/runs/*/*_report/report/*table7*.md"))
    assert tables, "no Table 7 written"
    text = tables[-1].read_text()
    for row in ("final", "multimodal_only", "medical_only"):
        assert row in text.lower().replace("-", "_").replace(" ", "_")
