"""One source of truth for the training arguments: every `model.recipe` field (paper Table 6) and every train.*
override is resolved ONCE here (`resolve`) and handed to both TRL's `SFTConfig` and the DeepSpeed config, so the
HF Trainer's DeepSpeed consistency check (`HfTrainerDeepSpeedConfig.fill_match`) can never find them apart.

`RECIPE_ROUTES` says where each recipe field goes; tests/unit/test_deepspeed_config.py checks it covers every field of
`RecipeConfig` and that SFTConfig and DeepSpeed agree for the 7B and 72B recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aloevision.training import deepspeed_config as dsc

# recipe field -> (the SFTConfig argument, the DeepSpeed config key); None where that side does not take it.
RECIPE_ROUTES: dict[str, tuple[str | None, str | None]] = {
    "global_batch_size": (None, "train_batch_size"),  # checked = micro x accumulation x world (planning); DS "auto"
    "micro_batch_size": ("per_device_train_batch_size", "train_micro_batch_size_per_gpu"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "gradient_accumulation_steps"),
    "gpus": (None, None),  # the world size: planning (nodes) and the batch check
    "learning_rate": ("learning_rate", None),  # no DS optimizer block: the Trainer builds the optimizer
    "optimizer": ("optim", None),
    "lr_scheduler_type": ("lr_scheduler_type", None),
    "warmup_ratio": ("warmup_steps", None),  # transformers 5: a float in [0, 1) is a ratio of the total steps
    "epochs": ("max_steps", None),  # -> steps by planning.run_schedule (fractional epochs, Appendix D)
    "weight_decay": ("weight_decay", None),
    "bf16": ("bf16", "bf16.enabled"),
    "gradient_checkpointing": ("activation_checkpointing", None),
    "zero_stage": (None, "zero_optimization.stage"),
    "zero_offload": (None, "zero_optimization.offload_optimizer"),
    "max_grad_norm": ("max_grad_norm", "gradient_clipping"),
    "gpu_hours_estimate": (None, None),  # the plan's display only
    "samples_per_gpu_second": (None, None),  # the plan's throughput assumption only
}


def _r(cfg: Any, key: str) -> Any:
    return getattr(cfg.model.recipe, key)


def resolve(cfg: Any, schedule: dict[str, Any], *, use_cpu: bool) -> dict[str, Any]:
    """The values both SFTConfig and DeepSpeed get. `schedule` is planning.run_schedule's result.
    bf16 follows the recipe on a GPU; a CPU run (tests, the demo) trains in fp32 in both places."""
    t = cfg.train
    return {
        "micro": int(schedule["micro"]),
        "accum": int(schedule["accum"]),
        "max_steps": int(schedule["max_steps"]),
        "learning_rate": float(t.learning_rate or _r(cfg, "learning_rate")),
        "max_grad_norm": float(_r(cfg, "max_grad_norm")),
        "bf16": bool(_r(cfg, "bf16")) and not use_cpu,
        "zero_stage": int(_r(cfg, "zero_stage")),
        "zero_offload": str(_r(cfg, "zero_offload")),
    }


def deepspeed(cfg: Any, values: dict[str, Any], *, world_size: int) -> dict[str, Any] | None:
    """The DeepSpeed config from the resolved values, validated by DeepSpeed for `world_size`; None for ZeRO 0."""
    if not values["zero_stage"]:
        return None
    config = dsc.build(cfg.model.recipe, micro_batch_size=values["micro"], gradient_accumulation_steps=values["accum"],
                       max_grad_norm=values["max_grad_norm"], bf16=values["bf16"], offload=values["zero_offload"])
    dsc.validate(config, world_size)
    return config


def dataloader_kwargs(train: Any, *, use_cpu: bool) -> dict[str, Any]:
    """Worker processes collate batches in parallel with the GPU step (collating 16 real rows took 1.8 s on one core:
    synchronous, that stalls every step); per cluster through `train.num_workers` (conf/cluster/*)."""
    workers = int(train.num_workers)
    return {
        "dataloader_num_workers": workers,
        "dataloader_pin_memory": bool(train.pin_memory) and not use_cpu,
        "dataloader_persistent_workers": workers > 0,
        "dataloader_prefetch_factor": 2 if workers > 0 else None,
    }


def sft_config(cfg: Any, out: Path, values: dict[str, Any], *, use_cpu: bool, ds_config: dict[str, Any] | None):
    from trl import SFTConfig

    r = cfg.model.recipe
    t = cfg.train
    return SFTConfig(
        output_dir=str(Path(out) / "checkpoints"),
        per_device_train_batch_size=values["micro"],
        gradient_accumulation_steps=values["accum"],
        max_steps=values["max_steps"],
        learning_rate=values["learning_rate"],
        lr_scheduler_type=r.lr_scheduler_type,
        warmup_steps=float(r.warmup_ratio),
        weight_decay=float(r.weight_decay),
        optim=r.optimizer,
        max_grad_norm=values["max_grad_norm"],
        bf16=values["bf16"],
        activation_checkpointing=bool(r.gradient_checkpointing),
        # Non-reentrant checkpointing: the variant that works with ZeRO-3's parameter gathering and frozen inputs.
        activation_checkpointing_kwargs={"use_reentrant": False} if r.gradient_checkpointing else None,
        max_length=int(cfg.model.max_length),
        assistant_only_loss=True,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # Resume = same seed, same data order: the sampler is seeded by data_seed, the checkpoint holds every
        # rank's RNG state and the Trainer skips the batches already trained (tests/e2e/test_resume.py).
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        report_to=[],  # our callback forwards metrics to the job's single W&B run
        use_cpu=use_cpu,
        deepspeed=ds_config,
        disable_tqdm=False,
        **dataloader_kwargs(t, use_cpu=use_cpu),
    )
