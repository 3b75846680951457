"""Stage `train`: SFT of Qwen2-VL with TRL's SFTTrainer on the mixture (TRL `messages` + `images` rows), loss on
assistant tokens only (the label mask of `aloevision.model.masking`).

Hyper-parameters come from `model.recipe` (paper Table 6); `train.*` holds run-level switches and overrides. A
second stage (`train.init_from=<run folder or checkpoint>`) starts from a first-stage model. Checkpoints live in the
run folder; a re-run of the same folder resumes from the latest one (optimizer, scheduler, RNG, data position).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aloevision.config import ConfigError

log = logging.getLogger(__name__)
FINAL_MODEL_DIR = "model"


def resolve_init_from(value: str) -> str:
    """A run folder (its final model, else its latest checkpoint) or a checkpoint path / Hub id."""
    p = Path(value)
    if p.is_dir():
        if (p / FINAL_MODEL_DIR / "config.json").is_file():
            return str(p / FINAL_MODEL_DIR)
        if (p / "config.json").is_file():
            return str(p)
        ckpts = sorted((p / "checkpoints").glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[-1]))
        if ckpts:
            return str(ckpts[-1])
        raise ConfigError(f"train.init_from={value}: no model found (expected {p}/{FINAL_MODEL_DIR}/ or checkpoints/)")
    if value.startswith(("/", ".")):
        raise ConfigError(f"train.init_from={value}: path does not exist")
    return value  # a Hub id


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_plan(cfg: DictConfig, n_samples: int, mix_plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Micro batch, accumulation and steps for this run, checked against the recipe's global batch.

    Steps: what the mix stage's plan says (`mix_plan["training"]`, `aloevision.planning`: the recipe's epochs, or
    fractional epochs reaching the reference mixture's steps, paper Appendix D). When this run's global batch differs
    from the plan's (a local run of a cluster recipe), the plan's epochs are kept and the steps follow this batch.
    Without a plan (a mixture built elsewhere), the same rule from `mixture.reference_steps`. `train.max_steps`
    overrides everything."""
    r = cfg.model.recipe
    micro = cfg.train.micro_batch_size or r.micro_batch_size
    accum = cfg.train.gradient_accumulation_steps or r.gradient_accumulation_steps
    ws = cfg.train.world_size or world_size()
    global_batch = micro * accum * ws
    if cfg.train.micro_batch_size is None and cfg.train.gradient_accumulation_steps is None and ws == r.gpus:
        if global_batch != r.global_batch_size:
            raise ConfigError(
                f"model.recipe: micro batch {micro} x accumulation {accum} x world size {ws} = {global_batch}, "
                f"but global_batch_size is {r.global_batch_size}; fix one of the three factors"
            )
    steps_per_epoch = max(1, n_samples // global_batch)
    tr = (mix_plan or {}).get("training")
    if tr:
        epochs = float(tr["epochs"])
        if global_batch == tr["global_batch_size"]:
            total, source = int(tr["total_steps"]), "plan"
        else:
            total, source = math.ceil(round(epochs * steps_per_epoch, 6)), "plan epochs x this run's steps/epoch"
    else:
        epochs, source = float(r.epochs), "recipe"
        ref = cfg.mixture.reference_steps
        if ref and steps_per_epoch * epochs < ref:
            # Paper Appendix D: smaller mixtures train proportionally longer (fractional epochs, as the planner).
            epochs, source = ref / steps_per_epoch, "mixture.reference_steps"
        total = math.ceil(round(epochs * steps_per_epoch, 6))
    if cfg.train.max_steps:
        total, source = int(cfg.train.max_steps), "train.max_steps"
    return dict(micro=micro, accum=accum, world_size=ws, global_batch=global_batch,
                steps_per_epoch=steps_per_epoch, epochs=epochs, max_steps=total, steps_from=source)


def _sft_config(cfg: DictConfig, out: Path, plan: dict[str, Any], use_cpu: bool):
    from trl import SFTConfig

    r = cfg.model.recipe
    ds_config = None
    if r.zero_stage and not use_cpu or (r.zero_stage and os.environ.get("DS_ACCELERATOR") == "cpu"):
        from aloevision.training.deepspeed_config import build_deepspeed_config

        ds_config = build_deepspeed_config(r)
    return SFTConfig(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=plan["micro"],
        gradient_accumulation_steps=plan["accum"],
        max_steps=plan["max_steps"],
        learning_rate=cfg.train.learning_rate or r.learning_rate,
        lr_scheduler_type=r.lr_scheduler_type,
        warmup_steps=float(r.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=r.weight_decay,
        optim=r.optimizer,
        bf16=bool(r.bf16) and not use_cpu,
        gradient_checkpointing=bool(r.gradient_checkpointing),
        max_length=int(cfg.model.max_length),
        assistant_only_loss=True,
        logging_steps=cfg.train.logging_steps,
        save_strategy="steps",
        save_steps=cfg.train.save_steps,
        save_total_limit=cfg.train.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.train.num_workers,
        remove_unused_columns=False,
        report_to=[],  # our callback forwards metrics to the job's single W&B run
        use_cpu=use_cpu,
        deepspeed=ds_config,
        disable_tqdm=False,
    )


def run(ctx) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from aloevision.model.loading import checkpoint_path, load_model, load_processor_for
    from aloevision.stages.mix import load_mixture

    cfg = ctx.cfg
    train_ds = load_mixture(ctx)
    plan = batch_plan(cfg, len(train_ds), (ctx.results.get("mix") or {}).get("plan"))
    use_cpu = not torch.cuda.is_available()
    base = resolve_init_from(cfg.train.init_from) if cfg.train.init_from else checkpoint_path(cfg.model, cfg.paths.cache_dir)
    processor = load_processor_for(cfg.model, checkpoint_path(cfg.model, cfg.paths.cache_dir) if cfg.train.init_from and not Path(base, "tokenizer_config.json").is_file() else base)
    model = load_model(cfg.model, base, for_training=True)
    log.info("training %s from %s: %s", cfg.model.name, base, plan)

    tracker = ctx.tracker

    class ForwardToTracker(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                tracker.log({f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)

    args = _sft_config(cfg, ctx.run_dir, plan, use_cpu)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=processor, callbacks=[ForwardToTracker()])
    resume = None
    ckpt_dir = ctx.run_dir / "checkpoints"
    if cfg.train.resume and any(ckpt_dir.glob("checkpoint-*")):
        resume = True
        log.info("resuming from the latest checkpoint in %s", ckpt_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    final = ctx.run_dir / FINAL_MODEL_DIR
    trainer.save_model(str(final))
    processor.save_pretrained(str(final))
    metrics = {f"train/{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics["train/global_step"] = trainer.state.global_step
    history = [h for h in trainer.state.log_history if "loss" in h]
    if history:
        metrics["train/first_loss"] = history[0]["loss"]
        metrics["train/last_loss"] = history[-1]["loss"]
    tracker.summary(metrics)
    tracker.stage_report("train", {**plan, "init_from": base, "samples": len(train_ds), **metrics})
    tracker.add_paths(model=final)
    return {"model": str(final), "plan": plan, "metrics": metrics}
