"""The torch.distributed environment of this process: from submitit, srun, torchrun, or a single process.

On SLURM every rank is its own task (`srun`, or submitit's `tasks_per_node = GPUs per node`), so each task builds
RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the SLURM variables itself; torchrun is never nested
inside a SLURM or submitit task. Locally, torchrun's variables are used as they are; without any, one process.

    env = distributed.setup()          # detect, export the env:// variables, pick the device / DeepSpeed accelerator
    env.rank, env.world_size, env.is_main
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

_PORT_RANGE = (20000, 60000)  # the range submitit's TorchDistributedEnvironment draws from


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    source: str  # submitit | srun | torchrun | env | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def as_env(self) -> dict[str, str]:
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
                "LOCAL_WORLD_SIZE": str(self.local_world_size), "MASTER_ADDR": self.master_addr,
                "MASTER_PORT": str(self.master_port)}


class DistributedEnvError(RuntimeError):
    """The environment describes an impossible or unsupported launch (the message says which variables)."""


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError) as exc:
        raise DistributedEnvError(f"{key}={env.get(key)!r} must be an integer") from exc


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ("gpu[001-003,007],login1") as host names, in order."""
    try:  # submitit's parser is pure Python and handles every form SLURM emits
        from submitit.slurm.slurm import _parse_node_list

        return list(_parse_node_list(nodelist))
    except ImportError:  # pragma: no cover - submitit is a dependency; scontrol is the fallback on a compute node
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()


def tasks_per_node(spec: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE ("4(x8)", "2(x3),1") as one count per node."""
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise DistributedEnvError(f"cannot parse SLURM tasks-per-node {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def master_port_for(job_id: str) -> int:
    """Same port on every task of a job, different across jobs sharing a node; the formula submitit uses."""
    return random.Random(job_id).randint(*_PORT_RANGE)


def _from_torchrun(env: Mapping[str, str]) -> DistEnv:
    """torchrun's children (or variables exported by hand / by an earlier export())."""
    world = _int(env, "WORLD_SIZE")
    return DistEnv(rank=_int(env, "RANK"), local_rank=_int(env, "LOCAL_RANK"), world_size=world,
                   local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
                   master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=int(env.get("MASTER_PORT", 29500)),
                   source="torchrun" if "TORCHELASTIC_RUN_ID" in env else "env")


def _from_submitit() -> DistEnv:
    from submitit.helpers import TorchDistributedEnvironment

    t = TorchDistributedEnvironment()
    return DistEnv(rank=t.rank, local_rank=t.local_rank, world_size=t.world_size,
                   local_world_size=t.local_world_size, master_addr=t.master_addr, master_port=t.master_port,
                   source="submitit")


def _from_srun(env: Mapping[str, str]) -> DistEnv:
    world = _int(env, "SLURM_STEP_NUM_TASKS")
    rank = _int(env, "SLURM_PROCID")
    local_rank = _int(env, "SLURM_LOCALID")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise DistributedEnvError("srun task without SLURM_STEP_NODELIST / SLURM_JOB_NODELIST")
    hosts = expand_nodelist(nodelist)
    counts = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or str(world))
    node = int(env.get("SLURM_NODEID", 0))
    local_world = counts[node] if node < len(counts) else counts[-1]
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise DistributedEnvError(f"SLURM_PROCID={rank} / SLURM_LOCALID={local_rank} outside a step of {world} tasks "
                                  f"({local_world} on this node)")
    port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else master_port_for(
        env.get("SLURM_JOB_ID", "0") + "." + env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", "0")))
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, local_world_size=local_world,
                   master_addr=hosts[0], master_port=port, source="srun")


def detect(env: Mapping[str, str] | None = None) -> DistEnv:
    """Where the ranks come from, in order: torchrun (its variables are authoritative for its children), a submitit
    task (SUBMITIT_EXECUTOR), an srun step (SLURM_STEP_NUM_TASKS; a batch script alone is not a step), else one
    process. Pass `env` to read a mapping instead of os.environ (submitit always reads os.environ)."""
    live = env is None
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env
                                        and "SLURM_STEP_NUM_TASKS" not in env and "SUBMITIT_EXECUTOR" not in env):
        if "SUBMITIT_EXECUTOR" in env and "TORCHELASTIC_RUN_ID" in env:
            raise DistributedEnvError("torchrun inside a submitit task: submitit already starts one task per GPU; "
                                      "run the function directly (tasks_per_node = GPUs per node)")
        return _from_torchrun(env)
    if env.get("SUBMITIT_EXECUTOR") and live:
        return _from_submitit()
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        return _from_srun(env)
    return DistEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, master_addr="127.0.0.1",
                   master_port=int(env.get("MASTER_PORT", 29500)), source="single")


def export(dist_env: DistEnv, environ: MutableMapping[str, str] | None = None) -> None:
    """Write the env:// variables (torch.distributed, accelerate, DeepSpeed and the HF Trainer read them)."""
    environ = os.environ if environ is None else environ
    environ.update(dist_env.as_env())


def use_cpu(environ: MutableMapping[str, str] | None = None) -> bool:
    """No CUDA here: DeepSpeed must use its CPU accelerator (set before deepspeed is imported) and gloo."""
    import torch

    environ = os.environ if environ is None else environ
    if torch.cuda.is_available():
        return False
    environ.setdefault("DS_ACCELERATOR", "cpu")
    return True


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def setup(*, init_process_group: bool = False, deepspeed: bool = False, timeout_s: int = 1800) -> DistEnv:
    """Detect the ranks, export them, pick this rank's GPU (or the CPU accelerator for DeepSpeed); optionally
    initialise the default process group.

    deepspeed=True initialises DeepSpeed's communication layer as well. Needed for ZeRO-3 before the model is
    loaded: transformers builds the model inside deepspeed.zero.Init, whose config check reads the world size from
    deepspeed.comm (1 when only torch.distributed is up: "train_batch_size is not equal to ... world_size"), and on
    CPU (`use_cpu=True`) accelerate does not initialise DeepSpeed's layer itself."""
    import datetime

    dist_env = detect()
    export(dist_env)
    if not use_cpu():
        import torch

        torch.cuda.set_device(dist_env.local_rank % torch.cuda.device_count())
    timeout = datetime.timedelta(seconds=timeout_s)
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend(), auto_mpi_discovery=False, timeout=timeout,
                            rank=dist_env.rank, world_size=dist_env.world_size)
    elif init_process_group and dist_env.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend=backend(), init_method="env://", rank=dist_env.rank,
                                    world_size=dist_env.world_size, timeout=timeout)
    return dist_env


# -- cluster arithmetic ----------------------------------------------------------------------------------------------
def planned_world_size(cluster: Any) -> int:
    """Ranks a job on `cluster` will have: nodes x GPUs per node on SLURM (one task per GPU), else 1."""
    get = (lambda k, d=None: cluster.get(k, d)) if isinstance(cluster, Mapping) else (
        lambda k, d=None: getattr(cluster, k, d))
    if get("kind", "local") != "slurm" or int(get("gpus_per_node", 0) or 0) == 0:
        return 1
    return int(get("nodes", 1)) * int(get("gpus_per_node"))
