"""The DeepSpeed config is generated from the recipe (Table 6) and DeepSpeed's own parser accepts it offline; bad keys,
bad values and wrong batch arithmetic fail before anything is submitted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from aloevision.config import ConfigError  # noqa: E402
from aloevision.training import deepspeed_config as dc  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def recipe(name: str):
    return OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml").recipe


@pytest.mark.parametrize("name,world,global_batch,micro,accum", [("qwen2vl_7b", 32, 1024, 16, 2),
                                                                  ("qwen2vl_72b", 100, 2000, 4, 5)])
def test_table6_configs_validate_with_deepspeed(name, world, global_batch, micro, accum):
    r = recipe(name)
    assert dc.check_batch(r, r.gpus) == global_batch
    config = dc.build(r)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_optimizer" not in config["zero_optimization"]  # Table 6: no offload
    assert config["bf16"] == {"enabled": True}
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (micro, accum)
    assert config["train_batch_size"] == "auto"
    parsed = dc.validate(config, world)
    assert parsed.zero_config.stage == 3
    assert parsed.bfloat16_config.enabled
    assert parsed.train_batch_size == global_batch
    assert parsed.gradient_clipping == 1.0


def test_tiny_recipe_has_no_deepspeed_and_stage3_tiny_validates():
    r = recipe("tiny")
    assert dc.build(r) is None  # zero_stage 0: plain single process / DDP
    r.zero_stage = 3
    config = dc.build(r)
    parsed = dc.validate(config, world_size=1)
    assert parsed.zero_config.stage == 3 and not parsed.bfloat16_config.enabled
    assert parsed.train_batch_size == 8


def test_offload_cpu_is_configurable_and_valid():
    config = dc.build(recipe("qwen2vl_72b"), offload="cpu")
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert config["zero_force_ds_cpu_optimizer"] is False
    parsed = dc.validate(config, 100)
    assert parsed.zero_config.offload_optimizer.device == "cpu"
    with pytest.raises(ConfigError, match="offload"):
        dc.build(recipe("qwen2vl_7b"), offload="gpu")
    with pytest.raises(ConfigError, match="nvme_path"):
        dc.build(recipe("qwen2vl_7b"), offload="nvme")


def test_hf_trainer_integration_fills_autos_and_catches_disagreement():
    """The Trainer's own DeepSpeed glue accepts the config, fills the autos, and notices args != recipe."""
    from types import SimpleNamespace

    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    def args(micro):
        return SimpleNamespace(world_size=32, per_device_train_batch_size=micro, gradient_accumulation_steps=2,
                               max_grad_norm=1.0, learning_rate=3.75e-5, adam_beta1=0.9, adam_beta2=0.999,
                               adam_epsilon=1e-8, weight_decay=0.0, save_on_each_node=False, fp16=False,
                               fp16_full_eval=False, bf16=True, bf16_full_eval=False)

    hf = HfTrainerDeepSpeedConfig(dc.build(recipe("qwen2vl_7b")))
    hf.trainer_config_process(args(16))
    assert hf.config["train_batch_size"] == 1024 and hf.mismatches == []
    hf = HfTrainerDeepSpeedConfig(dc.build(recipe("qwen2vl_7b")))
    hf.trainer_config_process(args(8))
    assert any("train_micro_batch_size_per_gpu" in m for m in hf.mismatches)


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c.__setitem__("zero_optimizaton", {"stage": 3}), r"top-level key\(s\) \['zero_optimizaton'\]"),
    (lambda c: c["zero_optimization"].__setitem__("stage3_prefetch_bucket", 10), "stage3_prefetch_bucket"),
    (lambda c: c["zero_optimization"].__setitem__("stage", 7), "stage"),
    (lambda c: c["bf16"].__setitem__("enabled", "sometimes"), "enabled"),
    (lambda c: c["zero_optimization"].__setitem__("offload_param", {"device": "tpu"}), "device"),
    (lambda c: c.__setitem__("train_micro_batch_size_per_gpu", 0), "has to be greater than 0"),
    (lambda c: c.__setitem__("train_batch_size", 1000), "1000 != 16 \\* 2 \\* 32"),
])
def test_bad_keys_and_values_are_rejected_by_deepspeed(mutate, match):
    config = dc.build(recipe("qwen2vl_7b"))
    mutate(config)
    with pytest.raises(ConfigError, match=match):
        dc.validate(config, 32)


def test_check_batch_message_shows_the_three_factors():
    r = recipe("qwen2vl_72b")
    with pytest.raises(ConfigError) as err:
        dc.check_batch(r, 96)  # 24 nodes x 4 instead of 25
    msg = str(err.value)
    assert "micro batch 4 x gradient accumulation 5 x world size 96 = 1920 ≠ configured global batch 2000" in msg
    with pytest.raises(ConfigError, match="micro batch 8 x gradient accumulation 2 x world size 32 = 512 ≠ configured"
                                          " global batch 1024"):
        dc.check_batch(recipe("qwen2vl_7b"), 32, micro_batch_size=8)
    with pytest.raises(ConfigError, match="= 64 ≠ configured global batch 100"):
        dc.check_batch(recipe("qwen2vl_7b"), 2, 100)
    with pytest.raises(ConfigError, match="world size must be >= 1"):
        dc.check_batch(r, 0)


def test_for_run_uses_train_overrides_and_write_round_trips(tmp_path):
    train = OmegaConf.create({"micro_batch_size": 8, "gradient_accumulation_steps": 4})
    config = dc.for_run(recipe("qwen2vl_7b"), train, world_size=32)
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["gradient_accumulation_steps"] == 4
    path = dc.write(config, tmp_path / "run" / "deepspeed.json")
    assert json.loads(path.read_text()) == config
    with pytest.raises(ConfigError, match="world size 16 = 512"):
        dc.for_run(recipe("qwen2vl_7b"), train, world_size=16)
    with pytest.raises(ConfigError, match="zero_stage=5"):
        bad = recipe("qwen2vl_7b")
        bad.zero_stage = 5
        dc.build(bad)


# Architecture of the real checkpoints (their config.json), for the Trainer's "auto" bucket sizes: no weights needed.
QWEN2VL_TEXT = {"qwen2vl_7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                   intermediate_size=18944, vocab_size=152064),
                "qwen2vl_72b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                                    intermediate_size=29568, vocab_size=152064)}


@pytest.mark.parametrize("name", ["qwen2vl_7b", "qwen2vl_72b"])
def test_sftconfig_and_deepspeed_agree_on_every_recipe_field(tmp_path, name):
    """What the train stage builds for the Table 6 recipes: SFTConfig + DeepSpeed config from one set of resolved
    values; the HF Trainer's own consistency check (trainer_config_process at SFTConfig creation, then
    trainer_config_finalize as at engine start) finds no mismatch, and each recipe field sits where RECIPE_ROUTES says.
    The values are resolved as on a GPU node (bf16 on); SFTConfig gets use_cpu=True only so that it can be
    constructed on this CPU machine."""
    import dataclasses
    from types import SimpleNamespace

    from conftest import compose
    from transformers import Qwen2VLConfig

    from aloevision.config import RecipeConfig
    from aloevision.planning import run_schedule
    from aloevision.training import arguments as targs

    cfg = compose([f"model={name}", "cluster=marenostrum5"], root=tmp_path)
    r = cfg.model.recipe
    assert set(targs.RECIPE_ROUTES) == {f.name for f in dataclasses.fields(RecipeConfig)}, "a recipe field has no route"
    schedule = run_schedule(3_571_622, r, cfg.train, world_size=int(r.gpus))
    values = targs.resolve(cfg, schedule, use_cpu=False)
    ds = targs.deepspeed(cfg, values, world_size=int(r.gpus))
    args = targs.sft_config(cfg, tmp_path, values, use_cpu=True, ds_config=ds)

    hf = args.hf_deepspeed_config
    assert hf.mismatches == []
    model = SimpleNamespace(config=Qwen2VLConfig(text_config=QWEN2VL_TEXT[name]))
    hf.trainer_config_finalize(args, model, schedule["max_steps"])  # raises on any mismatch
    assert hf.config["zero_optimization"]["reduce_bucket_size"] == QWEN2VL_TEXT[name]["hidden_size"] ** 2

    def ds_value(key):
        node = ds
        for part in key.split("."):
            node = node[part]
        return node

    expected = {"micro_batch_size": r.micro_batch_size, "gradient_accumulation_steps": r.gradient_accumulation_steps,
                "learning_rate": r.learning_rate, "optimizer": r.optimizer, "lr_scheduler_type": r.lr_scheduler_type,
                "warmup_ratio": r.warmup_ratio, "epochs": schedule["max_steps"], "weight_decay": r.weight_decay,
                "bf16": r.bf16, "gradient_checkpointing": r.gradient_checkpointing, "zero_stage": r.zero_stage,
                "max_grad_norm": r.max_grad_norm}
    for field, (sft_name, ds_key) in targs.RECIPE_ROUTES.items():
        if sft_name and field in expected:
            assert getattr(args, sft_name) == expected[field], f"{field} -> SFTConfig.{sft_name}"
        if ds_key and field in expected:
            assert ds_value(ds_key) == expected[field], f"{field} -> DeepSpeed {ds_key}"
    assert ds["train_batch_size"] == "auto" and schedule["global_batch"] == r.global_batch_size
    assert "offload_optimizer" not in ds["zero_optimization"] and r.zero_offload == "none"
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}

    # The check is live: a clipping value that reaches only one side is caught by the Trainer.
    other = dict(values, max_grad_norm=0.5)
    bad = targs.sft_config(cfg, tmp_path, other, use_cpu=True, ds_config=ds)
    with pytest.raises(ValueError, match="gradient_clipping"):
        bad.hf_deepspeed_config.trainer_config_finalize(bad, model, schedule["max_steps"])


def test_cluster_dataloader_settings_reach_sftconfig(tmp_path):
    from conftest import compose

    from aloevision.planning import run_schedule
    from aloevision.training import arguments as targs

    for cluster, workers in (("marenostrum5", 8), ("leonardo", 4), ("local", 0)):
        cfg = compose(["model=qwen2vl_7b", f"cluster={cluster}"], root=tmp_path)
        assert cfg.train.num_workers == workers
        schedule = run_schedule(100_000, cfg.model.recipe, cfg.train, world_size=32)
        values = targs.resolve(cfg, schedule, use_cpu=True)
        args = targs.sft_config(cfg, tmp_path, values, use_cpu=True, ds_config=None)
        assert args.dataloader_num_workers == workers
        assert args.dataloader_persistent_workers == (workers > 0)
        if cluster != "local":
            launcher = OmegaConf.load(REPO / "conf" / "cluster" / f"{cluster}.yaml").hydra.launcher
            assert cfg.train.save_interval_min == 120 and launcher.signal_delay_s >= 600
            assert cfg.wandb.mode == os.environ.get("WANDB_MODE", "offline")
