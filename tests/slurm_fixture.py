"""A real single-node SLURM for the `cluster` tests: started once per session by scripts/slurm/local_cluster.sh (which
installs slurm-wlm + munge if needed), or reused when one already answers; stopped at the end only if this session
started it. Skips with the script's reason where SLURM cannot be installed or run (not root, no apt-get, ...).

Import it from conftest.py:  `from slurm_fixture import slurm_cluster  # noqa: F401`

The fixture returns a `SlurmCluster` with what later tests need:
  - `env()`: an environment for subprocesses / submitit (src on PYTHONPATH, the sacct stand-in first in PATH,
    one thread per task, DeepSpeed's CPU accelerator)
  - `srun(n, *cmd)`: run a command as an n-task step and return the CompletedProcess
  - `hydra_overrides()`: the launch.py overrides for a sweep through the submitit SLURM launcher on this cluster
  - `executor(folder, **params)`: a submitit.AutoExecutor(cluster="slurm") on this cluster's partition
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm" / "local_cluster.sh"
SHIM_BIN = REPO / "scripts" / "slurm" / "bin"
STATE = Path(os.environ.get("ALOE_SLURM_STATE", "/tmp/aloevision-slurm"))


@dataclass
class SlurmCluster:
    partition: str
    node: str
    cpus: int
    mem_mb: int
    started_here: bool
    state_dir: Path = STATE
    log: str = field(default="", repr=False)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{SHIM_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # A step started from inside another job would inherit that job's SLURM_* ids.
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
            del env[key]
        env.update(extra)
        return env

    def srun(self, ntasks: int, *cmd: str, timeout: int = 120, cpus_per_task: int = 1,
             **run_kwargs) -> subprocess.CompletedProcess:
        args = ["srun", f"--partition={self.partition}", f"--ntasks={ntasks}", f"--cpus-per-task={cpus_per_task}",
                "--nodes=1", f"--time={max(1, timeout // 60 + 1)}", "--kill-on-bad-exit=1", *cmd]
        return subprocess.run(args, env=run_kwargs.pop("env", None) or self.env(), capture_output=True, text=True,
                              timeout=timeout, **run_kwargs)

    def hydra_overrides(self) -> list[str]:
        return ["cluster=slurm_local", f"cluster.partition={self.partition}"]

    def executor(self, folder: str | Path, **params):
        import submitit

        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        ex.update_parameters(**{"slurm_partition": self.partition, "cpus_per_task": 1, "mem_gb": 1,
                                "timeout_min": 5, **params})
        return ex


def _sinfo_node() -> tuple[str, str] | None:
    """(node, state) of this machine's node, or None when no controller answers (quickly)."""
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%T|%P"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return None
    for line in out.stdout.splitlines():
        node, state, _ = line.split("|")
        if state.rstrip("*~#$@").lower() in ("idle", "mixed", "allocated"):
            return node, state
    return None


def _describe(node: str) -> tuple[str, int, int]:
    out = subprocess.run(["scontrol", "show", "node", node, "-o"], capture_output=True, text=True, timeout=10).stdout
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    part = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%R"], capture_output=True, text=True,
                          timeout=10).stdout.split()
    return (part[0] if part else "local"), int(fields.get("CPUTot", 1)), int(fields.get("RealMemory", 1))


def start_cluster() -> SlurmCluster:
    """Reuse a running local SLURM or start one; pytest.skip with the reason where that cannot work here."""
    found = _sinfo_node()
    started, log = False, ""
    if found is None:
        if sys.platform != "linux":
            pytest.skip("local SLURM needs Linux")
        if os.geteuid() != 0 and not shutil.which("slurmd"):
            pytest.skip("SLURM is not installed and installing it (apt-get install slurm-wlm munge) needs root")
        proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
        log = proc.stdout + proc.stderr
        if proc.returncode == 3:  # the script's "cannot install/run SLURM here"
            pytest.skip(f"SLURM cannot be installed or run here: {log.strip().splitlines()[-1] if log else ''}")
        if proc.returncode != 0:
            raise RuntimeError(f"local_cluster.sh start failed ({proc.returncode}):\n{log}")
        started = True
        found = _sinfo_node()
        if found is None:
            raise RuntimeError(f"local_cluster.sh start returned but no node is idle:\n{log}")
    partition, cpus, mem = _describe(found[0])
    return SlurmCluster(partition=partition, node=found[0], cpus=cpus, mem_mb=mem, started_here=started, log=log)


def stop_cluster(cluster: SlurmCluster) -> None:
    if cluster.started_here and os.environ.get("ALOE_SLURM_KEEP") != "1":
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM cluster on localhost for the whole session (ALOE_SLURM_KEEP=1 leaves one this session started)."""
    cluster = start_cluster()
    # submitit polls job states with `sacct` from this process, and its jobs inherit this environment (sbatch
    # exports it): the sacct stand-in and src/ must be on the paths here too, for the session.
    saved = {k: os.environ.get(k) for k in ("PATH", "PYTHONPATH")}
    os.environ["PATH"] = f"{SHIM_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    try:
        yield cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_cluster(cluster)
