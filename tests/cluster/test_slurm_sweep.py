"""launch.py on a real SLURM (tests/slurm_fixture.py): sweeps through the Hydra submitit SLURM launcher and a 2-task
ZeRO-3 training of the real entry point, through srun and through the launcher's tasks_per_node (one task per GPU on
a cluster).

- A 2-job plan sweep (`-m cluster=slurm_local mixture=final,medical_only stage=plan`): both jobs are SLURM array
  tasks, each is one W&B run in the sweep's group, every output sits under the sweep folder.
- A 2-job sweep that needs the same upstream artifacts, run in parallel (`+experiment=ablation_filtering
  stage=hash`): the ArtifactStore lock makes each ingest / hash artifact built by exactly one job.
- A tiny training sweep (`stage=train train.max_steps=1,2`): the mixture is built once, both jobs train from it.
- ZeRO-3 with 2 ranks from SLURM: world size 2 and parameters partitioned in the stage report.

Every launch gets a unique SLURM job name and is `scancel`ed by name afterwards, so a failed or timed-out test leaves
no job behind. The first ZeRO-3 run on a machine JIT-builds DeepSpeed's CPU comm op (~2 min, cached in
~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from aloevision.utils.wandb_log import find_run_log, read_run

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
TABLE1 = REPO / "src" / "aloevision" / "data" / "paper_table1.csv"
BUILT = re.compile(r"built (\w+) artifact (\S+)")


def _job_name() -> str:
    return f"aloe-test-{uuid.uuid4().hex[:8]}"


def _scancel(name: str) -> None:
    subprocess.run(["scancel", f"--name={name}"], capture_output=True, text=True, timeout=30, check=False)


def _env(cluster, root: Path) -> dict[str, str]:
    # session_root (requested by every test here) has put W&B offline, inside the session's temp dir.
    return cluster.env(ALOEVISION_ROOT=str(root), PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu")


def _sweep(cluster, tmp_path: Path, *overrides: str, timeout: int = 300) -> Path:
    """`python launch.py -m cluster=slurm_local ...` (the submitit SLURM launcher waits for its jobs); returns the
    sweep folder. A launch that fails or times out has its jobs cancelled by name (a finished one has none left: the
    launcher returned every job's result; cancelling then would only mark a COMPLETING job CANCELLED)."""
    sweep_dir = tmp_path / "sweep"
    name = _job_name()
    cmd = [sys.executable, str(REPO / "launch.py"), "-m", *cluster.hydra_overrides(), f"hydra.launcher.name={name}",
           f"hydra.sweep.dir={sweep_dir}", *overrides]
    ok = False
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=_env(cluster, tmp_path), capture_output=True, text=True,
                              timeout=timeout, check=False)
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"sweep did not finish in {timeout}s: {' '.join(overrides)}\n{_submitit_logs(sweep_dir)[-4000:]}")
    finally:
        if not ok:
            _scancel(name)
    assert proc.returncode == 0, (f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}\n"
                                  f"{_submitit_logs(sweep_dir)[-4000:]}")
    return sweep_dir


def _submitit_logs(sweep_dir: Path) -> str:
    return "\n".join(f"== {p}\n{p.read_text(errors='replace')}"
                     for p in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def _slurm_jobs(sweep_dir: Path, n: int) -> list[str]:
    """The SLURM ids of the sweep's n jobs (array tasks `A_i`; a 1-job sweep is a plain job), each seen starting in
    its own submitit log and COMPLETED by SLURM."""
    # An array also has a folder `A` holding the submission script only.
    pattern = r"\d+_\d+" if n > 1 else r"\d+"
    folders = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(pattern, p.name))
    assert len(folders) == n, folders
    if n > 1:
        array = {f.split("_")[0] for f in folders}
        assert len(array) == 1, f"one job array expected, got {folders}"
        assert folders == sorted(f"{next(iter(array))}_{i}" for i in range(n))
    for job_id in folders:
        out = (sweep_dir / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
        assert f"Starting with JobEnvironment(job_id={job_id}," in out, out[:2000]
    # The repo's sacct stand-in answers from squeue (no slurmdbd here; MinJobAge keeps finished jobs listed). A job
    # whose result is in is still RUNNING / COMPLETING for a moment while the task exits and slurmd reaps it.
    deadline = time.monotonic() + 30
    while True:
        sacct = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", ",".join(folders)],
                               capture_output=True, text=True, timeout=10, check=False)
        assert sacct.returncode == 0, sacct.stderr
        states = dict(line.split("|")[:2] for line in sacct.stdout.splitlines()[1:] if "|" in line)
        if any(states.get(j) in ("RUNNING", "COMPLETING") for j in folders) and time.monotonic() < deadline:
            time.sleep(1)
            continue
        assert all(states.get(j) == "COMPLETED" for j in folders), sacct.stdout
        break
    return folders


def _job_dir(sweep_dir: Path, i: int) -> Path:
    """Job i's folder: `<i>` or `<i>_<choices that differ>` (e.g. `0_train.max_steps-1`)."""
    from aloevision.tracking import sweep_job_dirs

    return sweep_job_dirs(sweep_dir)[i]


def _records(sweep_dir: Path, n: int) -> list[dict]:
    recs = [json.loads((_job_dir(sweep_dir, i) / "run_record.json").read_text()) for i in range(n)]
    for i, rec in enumerate(recs):
        assert rec["status"] == "finished", rec
        assert Path(rec["paths"]["run_dir"]) == _job_dir(sweep_dir, i)  # every job's outputs under the sweep folder
    return recs


def _check_wandb(sweep_dir: Path, recs: list[dict], group: str, job_type: str) -> None:
    """Each job is one offline W&B run, all in the sweep's group."""
    ids = []
    for i, rec in enumerate(recs):
        assert rec["group"] == group
        run = read_run(find_run_log(_job_dir(sweep_dir, i)))
        assert run["run"]["group"] == group and run["run"]["job_type"] == job_type
        assert rec["run_id"] and rec["wandb"]["id"] == rec["run_id"]
        ids.append(rec["run_id"])
        assert len(list((_job_dir(sweep_dir, i) / "wandb").glob("offline-run-*"))) == 1
    assert len(set(ids)) == len(ids)


def _built(sweep_dir: Path) -> Counter:
    """(stage, artifact path) -> how many jobs built it, from the jobs' logs."""
    return Counter(m.groups() for m in BUILT.finditer(_submitit_logs(sweep_dir)))


def test_plan_sweep_through_the_submitit_slurm_launcher(slurm_cluster, session_root, tmp_path):
    sweep = _sweep(slurm_cluster, tmp_path, "mixture=final,medical_only", "stage=plan", f"plan.stats={TABLE1}",
                   "group=slurm_plan_sweep", timeout=180)
    _slurm_jobs(sweep, 2)
    recs = _records(sweep, 2)
    assert [r["choices"]["mixture"] for r in recs] == ["final", "medical_only"]
    assert all(r["choices"]["cluster"] == "slurm_local" and r["job_type"] == "plan" for r in recs)
    _check_wandb(sweep, recs, "slurm_plan_sweep", "plan")
    plans = [json.loads((_job_dir(sweep, i) / "plan.json").read_text()) for i in range(2)]
    # Paper Table 1 stats: the medical-only ablation is smaller, and still trains the final mixture's steps.
    assert plans[1]["samples"] < plans[0]["samples"]
    assert plans[1]["training"]["total_steps"] >= plans[0]["training"]["total_steps"]


def test_parallel_sweep_jobs_build_each_shared_artifact_once(slurm_cluster, session_root, demo_dir, tmp_path):
    """The two filtering-ablation jobs hash the same images: they start together (two array tasks, one CPU each)
    and every ingest / hash artifact is built by one of them while the other waits on the lock and reuses it."""
    cache = tmp_path / "cache"  # fresh: nothing cached before this sweep
    sweep = _sweep(slurm_cluster, tmp_path, "+experiment=ablation_filtering", "stage=hash",
                   f"paths.cache_dir={cache}", f"paths.demo_dir={demo_dir}", timeout=240)
    _slurm_jobs(sweep, 2)
    recs = _records(sweep, 2)
    assert sorted(r["choices"]["filter"] for r in recs) == ["none", "paper"]
    _check_wandb(sweep, recs, "ablation_filtering", "hash")

    hashes = [r["stages"]["hash"] for r in recs]
    parts = [(side, name) for side in ("train", "eval") for name in hashes[0][side]]
    assert len(parts) >= 8
    for side, name in parts:
        a, b = (h[side][name] for h in hashes)
        assert a["dir"] == b["dir"], (side, name)  # the same artifact ...
        assert sorted([a["cached"], b["cached"]]) == [False, True], (side, name, a, b)  # ... built by one job only
    built = _built(sweep)
    assert built and all(n == 1 for n in built.values()), built
    assert {p for (stage, p) in built if stage == "hash"} == {hashes[0][s][n]["dir"] for s, n in parts}
    ingest_dirs = [p for p in (cache / "ingest").iterdir() if p.is_dir()]
    assert {p for (stage, p) in built if stage == "ingest"} == {str(p) for p in ingest_dirs}
    assert not list(cache.glob("*/.tmp-*"))  # no half-built leftovers


@pytest.mark.slow
def test_training_sweep_through_the_submitit_slurm_launcher(slurm_cluster, session_root, demo_dir, tiny_path,
                                                            tmp_path):
    """Two training jobs under SLURM from one fresh cache: the mixture is built by one job, both train from it."""
    cache = tmp_path / "cache"
    sweep = _sweep(slurm_cluster, tmp_path, "stage=train", "train.max_steps=1,2", "group=slurm_train_sweep",
                   f"paths.cache_dir={cache}", f"paths.demo_dir={demo_dir}", timeout=400)
    _slurm_jobs(sweep, 2)
    recs = _records(sweep, 2)
    _check_wandb(sweep, recs, "slurm_train_sweep", "train")
    trains = [r["stages"]["train"] for r in recs]
    for i, t in enumerate(trains):
        assert t["distributed"]["source"] == "submitit" and t["distributed"]["world_size"] == 1
        assert recs[i]["metrics"]["train/global_step"] == i + 1
        assert (_job_dir(sweep, i) / "model").is_dir() or any((_job_dir(sweep, i)).glob("checkpoints/*"))
    # Same seed, same mixture: the same first step.
    assert trains[0]["loss_history"][0] == trains[1]["loss_history"][0]
    assert recs[0]["stages"]["mix"]["artifact"] == recs[1]["stages"]["mix"]["artifact"]
    built = _built(sweep)
    assert built[("mix", recs[0]["stages"]["mix"]["artifact"])] == 1, built
    assert all(n == 1 for n in built.values()), built


# -- ZeRO-3 with 2 ranks from SLURM, the real entry point ---------------------------------------------------------------
ZERO3 = ["stage=train", "model.recipe.zero_stage=3", "model.recipe.gpus=2", "model.recipe.micro_batch_size=2",
         "train.max_steps=2"]


def _check_zero3(run_dir: Path, source: str) -> None:
    rec = json.loads((run_dir / "run_record.json").read_text())
    assert rec["status"] == "finished"
    dist = rec["stages"]["train"]["distributed"]
    assert dist["world_size"] == 2 and dist["source"] == source and dist["zero_stage"] == 3
    assert len(dist["per_rank"]) == 2 and dist["sharded"]
    full = dist["per_rank"][0]["full_numel"]
    # Each rank holds about half of every parameter (ZeRO-3 pads each tensor to a multiple of the world size).
    assert all(r["full_numel"] == full and r["local_numel"] <= full // 2 + 1024 for r in dist["per_rank"])
    assert rec["stages"]["train"]["global_batch"] == 8 and rec["metrics"]["train/global_step"] == 2
    assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3


@pytest.mark.slow
def test_srun_two_task_zero3_training_through_launch(slurm_cluster, session_root, demo_dir, tiny_path, tmp_path):
    """`srun -n 2 python launch.py stage=train model.recipe.zero_stage=3 ...`: both tasks read their rank from SLURM,
    share one fixed run folder (Hydra's timestamped default could differ by a second between them)."""
    run_dir = tmp_path / "zero3"
    name = _job_name()
    ok = False
    try:
        proc = slurm_cluster.srun(2, f"--job-name={name}", sys.executable, str(REPO / "launch.py"), *ZERO3,
                                  f"hydra.run.dir={run_dir}", f"paths.cache_dir={session_root / 'cache' / 'shared'}",
                                  f"paths.demo_dir={demo_dir}", timeout=480, cwd=tmp_path,
                                  env=_env(slurm_cluster, tmp_path))
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        pytest.fail("2-task ZeRO-3 srun did not finish in 480 s (hang?)")
    finally:
        if not ok:  # a killed srun leaves its allocation behind
            _scancel(name)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    _check_zero3(run_dir, "srun")


@pytest.mark.slow
def test_submitit_launcher_two_tasks_per_node_zero3_training(slurm_cluster, session_root, demo_dir, tiny_path,
                                                             tmp_path):
    """How the cluster configs launch training: the submitit SLURM launcher starts one task per GPU slot
    (tasks_per_node=2 here), each task builds torch.distributed from submitit's SLURM environment."""
    sweep = _sweep(slurm_cluster, tmp_path, "hydra.launcher.tasks_per_node=2", *ZERO3, "group=slurm_zero3",
                   f"paths.cache_dir={session_root / 'cache' / 'shared'}", f"paths.demo_dir={demo_dir}", timeout=480)
    (job_id,) = _slurm_jobs(sweep, 1)
    # Both tasks of the one SLURM job logged, as global ranks 0 and 1.
    for task in (0, 1):
        out = (sweep / ".submitit" / job_id / f"{job_id}_{task}_log.out").read_text()
        assert f"global_rank={task}(2)" in out, out[:1500]
    _check_zero3(_job_dir(sweep, 0), "submitit")
    _check_wandb(sweep, _records(sweep, 1), "slurm_zero3", "train")
