"""The adversarial stage (AR set from the demo FracAtlas source, counted per attack), the second SFT stage from a
stage-1 checkpoint through `+experiment=demo_ar`, and the HEART evaluation in the Table 4 layout."""

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import compose

TABLE4 = [f"heart/classification/{c}" for c in ("base", "cap", "pmt", "syc")] + \
         [f"heart/detection/{c}" for c in ("base", "cap", "pmt", "syc", "leg")]


def _record(root: Path, pattern: str) -> tuple[Path, dict]:
    runs = sorted(root.glob(f"outputs/runs/*/{pattern}"))
    assert runs, f"no run folder {pattern} under {root}"
    return runs[-1], json.loads((runs[-1] / "run_record.json").read_text())


def _demo_fracatlas_numbers(demo_dir: Path) -> tuple[int, int, int]:
    """Images, fractured images and fracture instances, read from the demo source's own files."""
    root = demo_dir / "fracatlas"
    with open(root / "dataset.csv") as f:
        rows = list(csv.DictReader(f))
    coco = json.loads((root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json").read_text())
    return len(rows), sum(int(r["fractured"]) for r in rows), len(coco["annotations"])


def test_ar_set_through_launch_counts_every_attack(run_launch, tmp_path, demo_dir):
    from aloevision.adversarial.ar_set import ar_set_counts

    run_launch("stage=adversarial", "adversarial.enabled=true", "+source@adversarial.source=fracatlas")
    run_dir, rec = _record(tmp_path, "*_adversarial")
    assert rec["status"] == "finished"
    rep = rec["stages"]["adversarial"]
    n_img, n_frac, n_inst = _demo_fracatlas_numbers(demo_dir)
    assert rep["counts"] == ar_set_counts(n_img, n_frac, n_inst) == rep["expected"]
    assert rep["counts"]["detection/legends"] > 0 and rep["counts"]["classification/captions"] == n_img
    assert rep["paper_scale"]["total"] == 17_254  # how the paper's 17.2K is reached at FracAtlas' real size

    # The artifact the mix stage trains on: unified Samples whose attack labels give the same table.
    folder = Path(rep["artifact"])
    samples = [json.loads(line) for line in open(folder / "samples.jsonl")]
    seen = Counter(f"{s['meta']['task']}/{s['meta']['attack']}" for s in samples)
    assert {**seen, "total": len(samples)} == rep["counts"]
    assert all(s["source"] == "fracatlas_ar" and Path(s["images"][0]).is_file() for s in samples)
    assert all(s["messages"][1]["role"] == "assistant" for s in samples)
    md = (run_dir / "adversarial" / "report.md").read_text()
    assert "17,254" in md and "detection/legends" in md


def test_init_from_is_required_and_heart_refuses_the_ar_source(tmp_path):
    from aloevision.config import ConfigError
    from aloevision.stages.adversarial import check_config
    from aloevision.evaluation.heart_eval import check_heart_config

    with pytest.raises(ConfigError, match=r"train.init_from=<stage-1 run folder>"):
        check_config(compose(["+experiment=demo_ar"], root=tmp_path))
    check_config(compose(["+experiment=demo_ar", "train.init_from=/some/run"], root=tmp_path))  # stage 2 given
    check_config(compose(["+experiment=demo_ar", "stage=adversarial"], root=tmp_path))  # no training: fine
    with pytest.raises(ConfigError, match="adversarial.source is not set"):
        check_config(compose(["stage=adversarial", "adversarial.enabled=true"], root=tmp_path))

    with pytest.raises(ConfigError, match="AR training source"):
        check_heart_config(compose(["+experiment=demo_ar", "+eval.heart.sources.fracatlas=demo"], root=tmp_path))
    inside = tmp_path / "outputs" / "demo_data" / "fracatlas" / "items.jsonl"  # a file inside FracAtlas' folder
    inside.parent.mkdir(parents=True)
    inside.write_text("")
    with pytest.raises(ConfigError, match="inside the AR training source"):
        check_heart_config(compose(["+experiment=demo_ar", f"+eval.heart.sources.bones={inside}"], root=tmp_path))
    with pytest.raises(ConfigError, match="sources is empty"):
        check_heart_config(compose(["eval=paper", "eval.heart.enabled=true"], root=tmp_path))


def test_stage2_from_a_stage1_checkpoint(run_launch, tmp_path):
    run_launch("stage=train", "train.max_steps=2")
    stage1, _ = _record(tmp_path, "*_train")
    run_launch("+experiment=demo_ar", f"train.init_from={stage1}", "train.max_steps=2")
    run_dir, rec = _record(tmp_path, "*_all")
    assert rec["status"] == "finished" and rec["group"] == "demo_ar"
    st = rec["stages"]
    assert st["train"]["init_from"] == str(stage1 / "model")
    ar_total = st["adversarial"]["counts"]["total"]
    assert st["train"]["samples"] == ar_total  # stage 2 trains on the AR set only
    assert (run_dir / "model" / "config.json").is_file()
    assert all(k in rec["metrics"] for k in (f"eval/{c}" for c in TABLE4))  # HEART ran in the eval stage
    assert (run_dir / "eval" / "heart" / "table4.md").is_file()


def test_run_heart_on_the_demo_returns_every_table4_column(session_root, tmp_path, tiny_path):
    from aloevision.adversarial.attacks import COLUMN
    from aloevision.artifacts import ArtifactStore
    from aloevision.model.loading import load_model, load_processor_for
    from aloevision.pipeline import RunContext
    from aloevision.evaluation.heart_eval import run_heart
    from aloevision.tracking import Tracker

    cfg = compose(["+experiment=demo_ar", "stage=eval", f"paths.cache_dir={session_root / 'cache' / 'shared'}"],
                  root=tmp_path)
    run_dir = tmp_path / "run"
    tracker = Tracker(run_dir, config={}, choices={}, overrides=[], wandb_cfg={"mode": "disabled"}, group="t",
                      job_type="eval")
    ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, store=ArtifactStore(cfg.paths.cache_dir))
    model = load_model(cfg.model, tiny_path).eval()
    scores = run_heart(ctx, model, load_processor_for(cfg.model, tiny_path))
    assert list(scores) == TABLE4 and all(0.0 <= v <= 100.0 for v in scores.values())

    out = run_dir / "eval" / "heart"
    preds = [json.loads(line) for line in open(out / "predictions.jsonl")]
    counts = json.loads((out / "scores.json").read_text())["counts"]
    assert len(preds) == sum(c["n"] for c in counts.values()) == 72  # 8 cls x 4 + 8 det x 5
    assert {c["n"] for c in counts.values()} == {8}
    # The scores are the per-item verdicts aggregated (nothing is invented between the two files).
    for key, c in counts.items():
        task, col = key.split("/")[1:]
        rows = [p for p in preds if p["task"] == task and COLUMN[p["attack"]] == col]
        assert c["correct"] == sum(p["correct"] for p in rows)
    assert all(p["image"].startswith(str(session_root)) and Path(p["image"]).is_file() for p in preds)
    table = (out / "table4.md").read_text()
    assert "Aloe-Vision-7B-S2 (paper)" in table and "demo_ar (tiny) (measured)" in table
    assert tracker.record["stages"]["eval_heart"]["samples"] == 72
