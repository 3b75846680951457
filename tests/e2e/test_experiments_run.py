"""Every experiment file in conf/experiment/ runs tiny (the tiny model on the demo data, in this process's launcher).

- The three ablation presets, launched the way users type them (`launch.py -m +experiment=<ablation>`), expand to one
  job per row of their paper table, all in the experiment's group, each planned on the measured demo data; the
  smaller mixtures of the mixture ablation train at least as many optimizer steps as the final one.
- The full recipes (7B, 72B) plan the demo mixture with their filter / eval choices.
- The AR second stages train one step from a first-stage model (`train.init_from`) on the AR set only.
A new experiment file without a tiny run here fails `test_every_experiment_file_has_a_tiny_run`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))

# experiment -> (swept group, its values in job order (paper Tables 7-9), extra overrides for a tiny run)
SWEEPS = {
    "ablation_mixture": ("mixture", ["final", "multimodal_only", "medical_only"], []),
    "ablation_leakage": ("leakage", ["phash", "off"], ["mixture=demo"]),
    "ablation_filtering": ("filter", ["paper", "none"], ["mixture=demo"]),
}
# experiment -> (choices it must keep under model=tiny, extra overrides)
RECIPES = {
    "aloe_vision_7b": ({"filter": "paper", "eval": "paper"}, ["mixture=demo"]),
    "aloe_vision_72b": ({"filter": "paper", "eval": "paper"}, ["mixture=demo"]),
}
AR = ["aloe_vision_7b_ar", "demo_ar"]


def _records(folder: Path, n: int) -> list[dict]:
    from aloevision.tracking import sweep_job_dirs

    jobs = sweep_job_dirs(folder)  # `0_mixture-final`, ...: named by the choice that differs
    assert len(jobs) == n, f"{len(jobs)} jobs in {folder}, expected {n}"
    return [json.loads((d / "run_record.json").read_text()) for d in jobs]


def test_every_experiment_file_has_a_tiny_run():
    assert EXPERIMENTS, "no experiment files found"
    assert set(SWEEPS) | set(RECIPES) | set(AR) == set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", sorted(SWEEPS))
def test_ablation_sweep_expands_to_its_rows_and_runs(experiment, run_launch, tmp_path):
    key, values, extra = SWEEPS[experiment]
    sweep = tmp_path / "sweep"
    run_launch("-m", f"+experiment={experiment}", "model=tiny", "stage=plan", *extra, f"hydra.sweep.dir={sweep}")
    recs = _records(sweep, len(values))
    assert [r["choices"][key] for r in recs] == values
    assert all(r["status"] == "finished" and r["group"] == experiment and r["choices"]["model"] == "tiny"
               for r in recs)
    from aloevision.tracking import sweep_job_dirs

    plans = [json.loads((d / "plan.json").read_text()) for d in sweep_job_dirs(sweep)]
    assert all(p["samples"] > 0 and p["training"]["total_steps"] > 0 for p in plans)
    cfgs = [r["config"] for r in recs]
    if experiment == "ablation_leakage":
        assert [c["leakage"]["enabled"] for c in cfgs] == [True, False]
    if experiment == "ablation_filtering":
        assert [c["filter"]["enabled"] for c in cfgs] == [True, False]
        assert len({json.dumps(p["sources"], sort_keys=True) for p in plans}) == 1  # same data, only the filter differs
    if experiment == "ablation_mixture":
        assert len({p["samples"] for p in plans}) == 3  # three different mixtures of the demo data
        final_steps = plans[0]["training"]["total_steps"]
        for p in plans[1:]:  # paper: smaller mixtures train at least as long as the final one
            assert p["training"]["reference_steps"] == final_steps
            assert p["training"]["total_steps"] >= final_steps


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_recipe_experiment_plans_tiny(experiment, run_launch, tmp_path):
    keep, extra = RECIPES[experiment]
    run_dir = tmp_path / "run"
    run_launch(f"+experiment={experiment}", "model=tiny", "stage=plan", *extra, f"hydra.run.dir={run_dir}")
    rec = json.loads((run_dir / "run_record.json").read_text())
    assert rec["status"] == "finished" and rec["group"] == experiment
    assert rec["choices"]["model"] == "tiny" and rec["choices"]["experiment"] == experiment
    assert {k: rec["choices"][k] for k in keep} == keep
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["samples"] > 0 and plan["training"]["total_steps"] > 0


@pytest.mark.parametrize("experiment", AR)
def test_ar_experiment_trains_one_step_from_a_first_stage_model(experiment, run_launch, tiny_path, tmp_path):
    run_dir = tmp_path / "run"
    run_launch(f"+experiment={experiment}", "model=tiny", "stage=train", "train.max_steps=1",
               f"train.init_from={tiny_path}", f"hydra.run.dir={run_dir}")
    rec = json.loads((run_dir / "run_record.json").read_text())
    assert rec["status"] == "finished" and rec["group"] == experiment and rec["choices"]["mixture"] == "ar"
    order = [s for s in rec["stages"] if s in ("adversarial", "tokens", "mix", "train")]
    assert order == ["adversarial", "tokens", "mix", "train"]  # the graph builds the AR set before counting it
    assert rec["stages"]["upstream"]["adversarial"]["built"] + rec["stages"]["upstream"]["adversarial"]["reused"] > 0
    assert Path(rec["stages"]["train"]["init_from"]) == Path(tiny_path)
    assert rec["metrics"]["train/global_step"] == 1
    # Stage 2 trains on the AR set only, one epoch.
    comp = [c for c in rec["stages"]["mix"]["composition"] if c["level"] == "source"]
    assert [c["source"] for c in comp] == ["fracatlas_ar"] and comp[0]["samples"] > 0
    assert rec["stages"]["mix"]["training"]["epochs"] == 1.0


def test_ar_experiment_without_a_first_stage_model_stops_at_start_up(run_launch, tmp_path):
    proc = run_launch("+experiment=demo_ar", "model=tiny", "stage=train", "train.max_steps=1",
                      f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode != 0
    assert "Config error" in proc.stderr and "train.init_from=" in proc.stderr, proc.stderr[-2000:]
