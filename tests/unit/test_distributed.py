"""Each rank's torch.distributed environment from SLURM (srun / submitit), torchrun, or a single process."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from aloevision import distributed as d
from aloevision.config import nodes_for, register_configs

SRUN_RANK5 = {  # rank 5 of an 8-task step on two 4-GPU nodes, as srun sets it
    "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
    "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_STEP_NODELIST": "as01r[3-4]", "SLURM_JOB_NODELIST": "as01r[3-4]", "SLURM_JOB_NUM_NODES": "2",
}


def test_env_from_srun_variables():
    env = d.detect(SRUN_RANK5)
    assert (env.source, env.rank, env.local_rank, env.world_size, env.local_world_size) == ("srun", 5, 1, 8, 4)
    assert env.master_addr == "as01r3"
    assert 20000 <= env.master_port <= 60000
    assert d.detect({**SRUN_RANK5, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}).master_port \
        == env.master_port  # every task agrees on the port
    assert d.detect({**SRUN_RANK5, "MASTER_PORT": "29400"}).master_port == 29400
    exported: dict[str, str] = {}
    d.export(env, exported)
    assert exported == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                        "MASTER_ADDR": "as01r3", "MASTER_PORT": str(env.master_port)}


def test_batch_script_alone_is_a_single_process():
    """sbatch -n 8 runs the script once (no step variables): it must not wait for 7 peers."""
    env = d.detect({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8"})
    assert (env.source, env.world_size, env.rank) == ("single", 1, 0)


def test_env_from_torchrun_variables():
    env = d.detect({"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
                    "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29501"})
    assert (env.source, env.rank, env.local_rank, env.world_size, env.master_port) == ("torchrun", 1, 1, 2, 29501)
    assert not env.is_main and env.distributed


def test_torchrun_nested_in_submitit_is_refused():
    with pytest.raises(d.DistributedEnvError, match="torchrun inside a submitit task"):
        d.detect({"TORCHELASTIC_RUN_ID": "x", "SUBMITIT_EXECUTOR": "slurm", "RANK": "0", "LOCAL_RANK": "0",
                  "WORLD_SIZE": "2", **SRUN_RANK5})


def test_single_process_default():
    env = d.detect({})
    assert (env.source, env.rank, env.world_size, env.is_main, env.distributed) == ("single", 0, 1, True, False)


def test_submitit_task_uses_submitit_environment(monkeypatch):
    for key, value in {**SRUN_RANK5, "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    env = d.detect()
    assert (env.source, env.rank, env.local_rank, env.world_size, env.local_world_size) == ("submitit", 5, 1, 8, 4)
    assert env.master_addr == "as01r3"


def test_bad_slurm_values_fail_clearly():
    with pytest.raises(d.DistributedEnvError, match="SLURM_PROCID"):
        d.detect({**SRUN_RANK5, "SLURM_PROCID": "oops"})
    with pytest.raises(d.DistributedEnvError, match="outside a step of 8 tasks"):
        d.detect({**SRUN_RANK5, "SLURM_PROCID": "8"})
    with pytest.raises(d.DistributedEnvError, match="tasks-per-node"):
        d.tasks_per_node("4x2")


def test_slurm_list_parsers():
    assert d.expand_nodelist("gpu[001-003,007],login1") == ["gpu001", "gpu002", "gpu003", "gpu007", "login1"]
    assert d.tasks_per_node("2(x3),1") == [2, 2, 2, 1]


def test_nodes_resolver_and_world_size():
    register_configs()
    register_configs()  # idempotent
    cfg = OmegaConf.create({"model": {"recipe": {"gpus": 100}},
                            "cluster": {"kind": "slurm", "gpus_per_node": 4,
                                        "nodes": "${aloe.nodes:${model.recipe.gpus},${cluster.gpus_per_node}}"}})
    assert cfg.cluster.nodes == 25
    assert d.planned_world_size(cfg.cluster) == 100
    assert nodes_for(32, 4) == 8 and nodes_for(6, 4) == 2 and nodes_for(2, 0) == 1
    assert d.planned_world_size({"kind": "local", "gpus_per_node": 0}) == 1


# -- cluster configs: one source of truth (cluster.*) for the submitit SLURM launcher ----------------------------------
def _compose_cluster(overrides, tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    register_configs()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", return_hydra_config=True,
                       overrides=[f"paths.root={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", *overrides])


def _sbatch_text(cfg, tmp_path) -> str:
    """The sbatch script the submitit SLURM launcher would submit for `cfg` (its own parameter mapping).

    submitit's SlurmExecutor refuses to exist without `srun` on PATH: every test that calls this requests the
    `slurm_cluster` fixture (installs and starts the local SLURM, or skips with its reason), so the tests pass on a
    fresh machine, not only on one where an earlier run left SLURM installed."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import SlurmExecutor

    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    ex = SlurmExecutor(folder=tmp_path / "submitit", max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    conv = {"timeout_min": "time", "tasks_per_node": "ntasks_per_node", "cpus_per_task": "cpus_per_task",
            "gpus_per_node": "gpus_per_node", "mem_gb": "mem", "nodes": "nodes", "name": "job_name",
            "stderr_to_stdout": "stderr_to_stdout"}
    slurm_params = {}
    for key, value in params.items():
        if key in base:
            slurm_params[conv[key]] = f"{value}GB" if key == "mem_gb" and value is not None else value
        else:
            slurm_params[key] = value
    ex.update_parameters(**slurm_params)
    return ex._make_submission_file_text("python -m job", "uid")


@pytest.mark.parametrize("cluster,model,nodes,cpus,qos,extra", [
    ("marenostrum5", "qwen2vl_72b", 25, 20, "acc_bscls", []),
    ("marenostrum5", "qwen2vl_7b", 8, 20, "acc_bscls", []),
    ("leonardo", "qwen2vl_7b", 8, 8, "normal", ["#SBATCH --partition=boost_usr_prod"]),
])
@pytest.mark.cluster
def test_gpu_cluster_configs_make_one_task_per_gpu(cluster, model, nodes, cpus, qos, extra, tmp_path, monkeypatch,
                                                  slurm_cluster):
    monkeypatch.setenv("SLURM_ACCOUNT", "proj42")
    monkeypatch.delenv("SLURM_QOS", raising=False)
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    cfg = _compose_cluster([f"cluster={cluster}", f"model={model}"], tmp_path)
    assert cfg.cluster.kind == "slurm" and cfg.cluster.nodes == nodes
    assert d.planned_world_size(cfg.cluster) == cfg.model.recipe.gpus  # 8 x 4 = 32, 25 x 4 = 100
    text = _sbatch_text(cfg, tmp_path)
    for line in [f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:4",
                 f"#SBATCH --cpus-per-task={cpus}", "#SBATCH --account=proj42", f"#SBATCH --qos={qos}",
                 "#SBATCH --mem=480GB", f"export OMP_NUM_THREADS={cpus}", *extra]:
        assert line in text, f"{line!r} not in\n{text}"
    assert "torchrun" not in text


@pytest.mark.cluster
@pytest.mark.parametrize("cluster", ["marenostrum5", "leonardo"])
def test_gpu_cluster_data_and_eval_jobs_take_one_task_on_one_node(cluster, tmp_path, monkeypatch, slurm_cluster):
    """Job-array shards of the data stages (and eval / report jobs) must not ask for the training job's 8 nodes x 4
    tasks each: every stage but all/train gets one task on one node, keeping the node's GPUs."""
    monkeypatch.setenv("SLURM_ACCOUNT", "proj42")
    for stage in ("hash", "score", "leakage", "eval", "report", "plan"):
        cfg = _compose_cluster([f"cluster={cluster}", "model=qwen2vl_7b", f"stage={stage}",
                                "cluster.data_shard=3"], tmp_path)
        text = _sbatch_text(cfg, tmp_path)
        for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:4"):
            assert line in text, f"stage={stage}: {line!r} not in\n{text}"
    cfg = _compose_cluster([f"cluster={cluster}", "model=qwen2vl_7b", "stage=train"], tmp_path)
    assert "#SBATCH --nodes=8" in _sbatch_text(cfg, tmp_path) and "#SBATCH --ntasks-per-node=4" in _sbatch_text(
        cfg, tmp_path)


def test_cluster_overrides_flow_into_the_launcher(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    cfg = _compose_cluster(["cluster=leonardo", "model=qwen2vl_7b", "cluster.qos=boost_qos_dbg",
                            "cluster.timeout_min=30", "cluster.nodes=2"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["qos"], launcher["timeout_min"], launcher["nodes"], launcher["account"]) == (
        "boost_qos_dbg", 30, 2, None)
    with pytest.raises(Exception, match="nodez"):  # the cluster block is schema-checked (ClusterConfig)
        _compose_cluster(["cluster=leonardo", "cluster.nodez=2"], tmp_path)


@pytest.mark.cluster
def test_slurm_local_config(tmp_path, slurm_cluster):
    cfg = _compose_cluster(["cluster=slurm_local"], tmp_path)
    text = _sbatch_text(cfg, tmp_path)
    assert "#SBATCH --partition=local" in text and "#SBATCH --ntasks-per-node=1" in text
    assert "gres" not in text and "export DS_ACCELERATOR=cpu" in text
