"""What a user sees in W&B and in the run record after real runs of `launch.py` (offline W&B, read back from its
binary log): every training step from 1 on one axis, names and job types from the choices, SIGTERM recorded as
`interrupted`, and a rerun of the same folder continuing the same W&B run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aloevision.utils.wandb_log import read_run

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["stage=train", "train.max_steps=12", "train.save_steps=3", "filter=none"]


def _wandb_logs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_sigterm_is_interrupted_and_a_rerun_continues_the_same_wandb_run(tmp_path, session_root):
    shared = [f"paths.cache_dir={session_root / 'cache' / 'shared'}", f"paths.demo_dir={session_root / 'demo_data'}"]
    run_dir = tmp_path / "job"
    cmd = [sys.executable, str(REPO / "launch.py"), *TRAIN, f"hydra.run.dir={run_dir}", *shared]
    env = {**os.environ, "ALOEVISION_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not ckpt.is_file():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before checkpoint-3 ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint-3 within 300 s")
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # scancel / preemption
    out, err = proc.communicate(timeout=120)
    first = json.loads((run_dir / "run_record.json").read_text())
    assert not (run_dir / "model").exists(), "training finished before the signal: nothing was tested"
    assert proc.returncode != 0 and first["status"] == "interrupted", (first["status"], err[-3000:])
    assert "SIGTERM" in first["error"] and "interrupted" in out

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-6000:]
    rec = json.loads((run_dir / "run_record.json").read_text())
    assert rec["status"] == "finished" and rec["attempts"] == 2 and rec["run_id"] == first["run_id"]
    assert rec["previous_attempts"][0]["status"] == "interrupted" and "error" not in rec
    logs = _wandb_logs(run_dir)
    assert len(logs) == 2 and {p.name for p in logs} == {f"run-{rec['run_id']}.wandb"}  # one W&B run, resumed
    runs = [read_run(p) for p in logs]
    steps = [h["_step"] for r in runs for h in r["history"] if "train/loss" in h]
    assert sorted(steps) == list(range(1, 13)) and len(set(steps)) == 12  # every step once, across both attempts
    assert {r["run"]["job_type"] for r in runs} == {"train"} and {r["run"]["group"] for r in runs} == {"custom"}
    assert rec["metrics"]["train/logged_steps"] == 12  # whole-run train_loss over all 12 steps


@pytest.mark.slow
def test_demo_run_curve_is_complete_and_named(run_launch, tmp_path):
    """The demo's shape (all stages) at a few steps: the W&B curve has every step from 1 even though the data stages
    log tables and images before training and eval logs tables after it."""
    proc = run_launch("train.max_steps=8")
    (run,) = sorted(tmp_path.glob("outputs/runs/demo/*_train.max_steps-8_all"))
    (log,) = _wandb_logs(run)
    wb = read_run(log)
    steps = [h["_step"] for h in wb["history"] if "train/loss" in h]
    assert steps == list(range(1, 9))
    assert max(h["_step"] for h in wb["history"]) == 8  # tables/images never advanced the axis
    assert wb["run"]["group"] == "demo" and wb["run"]["job_type"].startswith("ingest+")
    assert "train" in wb["run"]["job_type"]
    assert "stage=all" in wb["run"]["tags"]
    rec = json.loads((run / "run_record.json").read_text())
    assert rec["name"] == "train.max_steps=8 · all"
    # The console: full paths, one per line; no per-step dicts (they are in the log file).
    assert f"run folder: {run}" in " ".join(proc.stdout.split()) or str(run) in proc.stdout
    assert "{'loss'" not in proc.stdout and "'loss':" in (run / "launch.log").read_text()
    assert rec["summary"][0].startswith("aloevision · group demo · stage all · finished")


@pytest.mark.slow
def test_no_planted_secret_reaches_any_file(tmp_path, session_root):
    """Secrets planted in the environment, in a config value (a cluster setup line) and in an override: none appears
    in any file of the sweep folder (Hydra's files, the run record, the log, W&B's files and its binary log), nor on
    the console; a multirun so that Hydra's multirun.yaml and its "Launching" line are covered too."""
    env_secret, cfg_secret, ovr_secret = "hf_" + "Q" * 34, "cfg-secret-value-77", "ovr-secret-value-88"
    env = {**os.environ, "ALOEVISION_ROOT": str(tmp_path), "HF_TOKEN": env_secret, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "-m", "stage=plan", "model=qwen2vl_7b", "mixture=final,medical_only",
         f"plan.stats={REPO / 'src/aloevision/data/paper_table1.csv'}",
         f"cluster.setup=[\"export HF_TOKEN={env_secret}\",\"export MY_SERVICE_KEY={cfg_secret}\"]",
         f"+mixture.sources.aloe_text.options.api_key={ovr_secret}", "eval.max_new_tokens=48"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "multirun.yaml" for p in files)
    assert any(p.name == "hydra.yaml" for p in files) and any(p.suffix == ".log" for p in files)
    for p in files:
        data = p.read_bytes()
        for s in (env_secret, cfg_secret, ovr_secret):
            assert s.encode() not in data, f"{s} in {p}"
    for s in (env_secret, cfg_secret, ovr_secret):
        assert s not in proc.stdout and s not in proc.stderr
    (rec_path, *_) = sorted((tmp_path / "outputs").rglob("run_record.json"))
    rec = json.loads(rec_path.read_text())
    assert rec["config"]["eval"]["max_new_tokens"] == 48  # settings named *token* are left alone
    assert "api_key=***" in " ".join(rec["overrides"]) and rec["group"] == "sweep"
