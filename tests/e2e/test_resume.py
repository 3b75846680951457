"""Requeue / resume: a training job killed mid-run and started again with the same command (same run folder)
resumes from its latest complete checkpoint and ends exactly where an uninterrupted run ends: same per-step losses,
same final weights. That needs the optimizer, scheduler, every RNG and the data position restored (the Trainer's
checkpoint + a sampler seeded by data_seed); a skipped or repeated batch would change the losses after the resume.

On SLURM the same happens without anyone re-typing the command: hydra-submitit-launcher's callable has a
`checkpoint()` that returns `submitit.helpers.DelayedSubmission(self, ...)`, so on timeout / preemption submitit
requeues the same job (up to cluster.max_num_timeout times) with the same pickled config, whose resolver cache keeps
the same `${now:...}` sweep dir: the requeued job lands in the same run folder, where train.resume=true finds the
checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = ["stage=train", "train.max_steps=6", "train.save_steps=2", "train.save_total_limit=5"]


def _cmd(run_dir: Path, shared: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "launch.py"), *STEPS, f"hydra.run.dir={run_dir}", *shared]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ALOEVISION_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _losses(run_dir: Path) -> list[list[float]]:
    return json.loads((run_dir / "run_record.json").read_text())["stages"]["train"]["loss_history"]


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_result(run_launch, tmp_path, session_root):
    from safetensors.torch import load_file

    shared = [f"paths.cache_dir={session_root / 'cache' / 'shared'}", f"paths.demo_dir={session_root / 'demo_data'}"]
    env = _env(tmp_path)

    # The uninterrupted reference (also builds the mixture once for both runs), with the very same command and
    # environment: another OMP thread count sums in another order (differences of ~1e-6 in the weights).
    ref = tmp_path / "uninterrupted"
    done = subprocess.run(_cmd(ref, shared), check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]

    # The same job, killed (SIGKILL: no clean shutdown, like a node lost to preemption) once checkpoint-2 is complete.
    run_dir = tmp_path / "requeued"
    ckpt = run_dir / "checkpoints" / "checkpoint-2"
    proc = subprocess.Popen(_cmd(run_dir, shared), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (ckpt / "trainer_state.json").is_file():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before checkpoint-2 ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no checkpoint-2 within 240 s")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert not (run_dir / "model").exists(), "the job finished before it could be killed: nothing was tested"
    killed_at = max(int(c.name.split("-")[-1]) for c in (run_dir / "checkpoints").glob("checkpoint-*")
                    if (c / "trainer_state.json").is_file())
    assert killed_at < 6

    # The requeue: the very same command.
    again = subprocess.run(_cmd(run_dir, shared), check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-6000:]
    rec = json.loads((run_dir / "run_record.json").read_text())
    report = rec["stages"]["train"]
    assert report["resumed_from"] and report["resumed_from"].endswith(f"checkpoint-{killed_at}")
    assert rec["metrics"]["train/global_step"] == 6

    # Steps 1..killed_at come from the checkpoint's state, the rest were trained after the resume: all must match.
    ref_losses, resumed_losses = _losses(ref), _losses(run_dir)
    assert [s for s, _ in ref_losses] == [s for s, _ in resumed_losses] == [1, 2, 3, 4, 5, 6]
    for (step, a), (_, b) in zip(ref_losses, resumed_losses):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), f"step {step}: {a} (uninterrupted) vs {b} (resumed)"
    w_ref, w_res = load_file(ref / "model" / "model.safetensors"), load_file(run_dir / "model" / "model.safetensors")
    assert w_ref.keys() == w_res.keys()
    for k in w_ref:
        torch.testing.assert_close(w_res[k], w_ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def _wait_for_step(proc, run_dir: Path, step: int, timeout: float = 240) -> None:
    progress = run_dir / "train_progress.json"
    deadline = time.monotonic() + timeout
    while True:
        if progress.is_file():
            try:
                if json.loads(progress.read_text())["step"] >= step:
                    return
            except (ValueError, KeyError):  # replaced while reading
                pass
        if proc.poll() is not None:
            pytest.fail(f"the job ended before step {step} ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no step {step} within {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_pre_timeout_signal_checkpoints_and_the_requeued_job_resumes(run_launch, tmp_path, session_root):
    """SLURM's pre-timeout signal (USR2: submitit's `--signal=USR2@<signal_delay_s>`) reaches the job between two
    regular checkpoints (save_steps=100: there are none): the job writes a checkpoint at the end of the current step,
    stops, and exits 128+12; the requeued job (the same command) resumes from it and ends exactly where an
    uninterrupted run ends."""
    from safetensors.torch import load_file

    shared = [f"paths.cache_dir={session_root / 'cache' / 'shared'}", f"paths.demo_dir={session_root / 'demo_data'}"]
    env = _env(tmp_path)
    steps = ["stage=train", "train.max_steps=6", "train.save_steps=100"]
    ref = tmp_path / "uninterrupted"  # the same command and environment (threads) as the signalled job
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), *steps, f"hydra.run.dir={ref}", *shared],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]

    run_dir = tmp_path / "signalled"
    cmd = [sys.executable, str(REPO / "launch.py"), *steps, f"hydra.run.dir={run_dir}", *shared]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for_step(proc, run_dir, 2)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, err[-4000:]
    saved = [c for c in (run_dir / "checkpoints").glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    assert len(saved) == 1, saved
    at = int(saved[0].name.split("-")[-1])
    assert 2 <= at < 6, f"checkpoint at step {at}"
    assert not (run_dir / "model").exists()
    stopped = json.loads((run_dir / "run_record.json").read_text())["stages"]["train"]
    assert stopped["interrupted_by"] == "SIGUSR2" and stopped["global_step"] == at

    again = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-6000:]
    rec = json.loads((run_dir / "run_record.json").read_text())
    assert rec["stages"]["train"]["resumed_from"].endswith(f"checkpoint-{at}")
    assert rec["metrics"]["train/global_step"] == 6
    ref_losses, resumed = _losses(ref), _losses(run_dir)
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
    for (step, a), (_, b) in zip(ref_losses, resumed):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), f"step {step}: {a} (uninterrupted) vs {b} (resumed)"
    w_ref, w_res = load_file(ref / "model" / "model.safetensors"), load_file(run_dir / "model" / "model.safetensors")
    for k in w_ref:
        torch.testing.assert_close(w_res[k], w_ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
