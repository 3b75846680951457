"""A real SLURM on localhost (tests/slurm_fixture.py): srun steps, torch.distributed from SLURM variables, and
submitit job arrays through the SLURM executor. Marker `cluster`; skipped with a reason where SLURM cannot run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster

ALLREDUCE = (
    "import torch, torch.distributed as dist; from aloevision import distributed as d; "
    "e = d.setup(init_process_group=True); t = torch.tensor([float(e.rank + 1)]); dist.all_reduce(t); "
    "print(f'{e.source} {e.rank} {e.local_rank} {e.world_size} {e.master_addr} {t.item()}', flush=True); "
    "dist.destroy_process_group()"
)

def test_node_is_idle_with_this_machines_cpus(slurm_cluster):
    out = subprocess.run(["sinfo", "-h", "-o", "%P %T %D"], capture_output=True, text=True, timeout=10).stdout
    assert slurm_cluster.partition in out
    assert slurm_cluster.cpus == os.cpu_count()
    assert slurm_cluster.mem_mb > 0

def test_srun_two_tasks(slurm_cluster):
    proc = slurm_cluster.srun(2, "hostname")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [slurm_cluster.node] * 2 or len(proc.stdout.split()) == 2

def test_srun_tasks_build_torch_distributed_from_slurm(slurm_cluster):
    """Two srun tasks, no torchrun: each reads SLURM_* and they all-reduce over gloo (1 + 2 = 3)."""
    proc = slurm_cluster.srun(2, sys.executable, "-c", ALLREDUCE, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = sorted(line.split() for line in proc.stdout.splitlines() if line.startswith("srun "))
    assert [r[1:4] for r in rows] == [["0", "0", "2"], ["1", "1", "2"]], proc.stdout
    assert {r[5] for r in rows} == {"3.0"}

def _square_with_ids(x: int):
    import os as _os
    import socket

    return x * x, _os.environ.get("SLURM_ARRAY_TASK_ID"), socket.gethostname()

def test_submitit_array_of_two_jobs(slurm_cluster, tmp_path):
    ex = slurm_cluster.executor(tmp_path / "submitit" / "%j", slurm_array_parallelism=2)
    fn = _by_value(_square_with_ids)
    jobs = ex.map_array(fn, [3, 4])
    results = [job.result() for job in jobs]
    assert [r[0] for r in results] == [9, 16]
    assert sorted(r[1] for r in results) == ["0", "1"]
    array_id = jobs[0].job_id.split("_")[0]
    sacct = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", array_id],
                           capture_output=True, text=True, timeout=10)
    assert sacct.returncode == 0, sacct.stderr
    assert {f"{array_id}_0|COMPLETED", f"{array_id}_1|COMPLETED"} <= {
        "|".join(line.split("|")[:2]) for line in sacct.stdout.splitlines()}

def _allreduce_task():
    import torch
    import torch.distributed as dist

    from aloevision import distributed as d

    env = d.setup(init_process_group=True)
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return env.source, env.rank, env.world_size, t.item()

def test_submitit_two_tasks_one_job_is_one_process_group(slurm_cluster, tmp_path):
    """submitit starts one task per (GPU) slot; each builds its rank from the submitit/SLURM environment."""
    ex = slurm_cluster.executor(tmp_path / "submitit" / "%j", tasks_per_node=2)
    job = ex.submit(_by_value(_allreduce_task))
    results = sorted(job.results())
    assert results == [("submitit", 0, 2, 3.0), ("submitit", 1, 2, 3.0)]

def _by_value(fn):
    """Pickle `fn` by value (test modules are not importable inside the job)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
    return fn

ZERO3_SCRIPT = r'''
import dataclasses, json, sys
from aloevision import distributed
env = distributed.setup(deepspeed=True)  # before the model: transformers builds it inside deepspeed.zero.Init
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForImageTextToText, AutoTokenizer, Trainer, TrainingArguments
from aloevision.training import deepspeed_config as dc
recipe = OmegaConf.create({"global_batch_size": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                           "gpus": 2, "bf16": False, "zero_stage": 3})
ds = dc.for_run(recipe, {}, world_size=env.world_size)
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
args = TrainingArguments(output_dir=sys.argv[2], per_device_train_batch_size=2, gradient_accumulation_steps=1,
                         max_steps=2, learning_rate=1e-3, use_cpu=True, deepspeed=ds, report_to=[],
                         save_strategy="no", logging_steps=1, disable_tqdm=True)
model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
texts = ["hello world this is a test", "another short line", "the quick brown fox", "jumps over the lazy dog"]
class Rows(torch.utils.data.Dataset):
    def __len__(self): return 8
    def __getitem__(self, i):
        ids = tok(texts[i % 4], max_length=12, padding="max_length", truncation=True, return_tensors="pt").input_ids[0]
        return {"input_ids": ids, "labels": ids}
trainer = Trainer(model=model, args=args, train_dataset=Rows())
out = trainer.train()
params = sum(p.ds_numel for p in model.parameters())  # ZeRO-3: the full size; each rank holds a shard
shard = sum(p.ds_tensor.numel() for p in model.parameters())
print("RESULT " + json.dumps({"rank": env.rank, "world": env.world_size, "source": env.source,
      "stage": trainer.accelerator.state.deepspeed_plugin.zero_stage, "loss": round(out.training_loss, 5),
      "steps": out.global_step, "params": params, "shard": shard}), flush=True)
# A clean teardown: a rank that exits while the other's gloo threads still run can abort at exit.
import torch.distributed as dist
dist.barrier()
dist.destroy_process_group()
'''

@pytest.mark.slow
def test_srun_two_task_zero3_training_on_cpu(slurm_cluster, tmp_path):
    """Two srun tasks train the tiny Qwen2-VL with ZeRO-3 on CPU (gloo) with the recipe's DeepSpeed config: same
    loss on both ranks, parameters sharded. First run on a machine JIT-builds DeepSpeed's CPU comm op (~1-2 min)."""
    import dataclasses
    import json

    from aloevision.config import TinySpec
    from aloevision.model.tiny import ensure_tiny

    model = ensure_tiny(tmp_path / "cache", dataclasses.asdict(TinySpec()))  # built once, before the ranks start
    script = tmp_path / "zero3.py"
    script.write_text(ZERO3_SCRIPT)
    proc = slurm_cluster.srun(2, sys.executable, str(script), str(model), str(tmp_path / "out"), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rows = sorted((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")),
                  key=lambda r: r["rank"])
    assert [(r["rank"], r["world"], r["source"], r["stage"], r["steps"]) for r in rows] == [
        (0, 2, "srun", 3, 2), (1, 2, "srun", 3, 2)]
    assert rows[0]["loss"] == rows[1]["loss"]
    assert rows[0]["shard"] < rows[0]["params"]  # each rank holds part of the model
