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
from aloevision.model.checkpoints import FINAL_MODEL_DIR, resolve_init_from  # noqa: F401


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


def deepspeed_config(cfg: DictConfig, out: Path, plan: dict[str, Any], *, write: bool) -> dict[str, Any] | None:
    """The DeepSpeed config generated from the recipe with this run's micro batch / accumulation (so the Trainer's
    consistency check agrees), validated by DeepSpeed for this world size; None for zero_stage 0 (no DeepSpeed).
    The main rank keeps the exact file in the run folder (deepspeed.json)."""
    if not cfg.model.recipe.zero_stage:
        return None
    from aloevision.training import deepspeed_config as dsc

    config = dsc.build(cfg.model.recipe, micro_batch_size=plan["micro"], gradient_accumulation_steps=plan["accum"])
    dsc.validate(config, plan["world_size"])
    if write:
        dsc.write(config, out / "deepspeed.json")
    return config


def _sft_config(cfg: DictConfig, out: Path, plan: dict[str, Any], use_cpu: bool, ds_config: dict[str, Any] | None):
    from trl import SFTConfig

    r = cfg.model.recipe
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
        # Resume = same seed, same data order: the sampler is seeded by data_seed, the checkpoint holds every
        # rank's RNG state and the Trainer skips the batches already trained (tests/test_resume.py).
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.train.num_workers,
        remove_unused_columns=False,
        report_to=[],  # our callback forwards metrics to the job's single W&B run
        use_cpu=use_cpu,
        deepspeed=ds_config,
        disable_tqdm=False,
    )


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest COMPLETE checkpoint (the Trainer writes trainer_state.json last, so a job killed while saving
    leaves a folder without it: skipped, with a warning, and overwritten when training reaches that step again)."""
    ckpts = sorted(Path(ckpt_dir).glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[-1]), reverse=True)
    for c in ckpts:
        if (c / "trainer_state.json").is_file():
            return str(c)
        log.warning("skipping incomplete checkpoint %s (no trainer_state.json: the job stopped while saving it)", c)
    return None


def partition_stats(model) -> dict[str, int]:
    """Parameter elements held by this rank vs the model's full size: under ZeRO-3 each parameter is a shard
    (`ds_tensor`) of `ds_numel` elements; without partitioning the rank holds everything."""
    local = full = 0
    for p in model.parameters():
        if hasattr(p, "ds_numel"):
            full += int(p.ds_numel)
            local += int(p.ds_tensor.numel())
        else:
            full += p.numel()
            local += p.numel()
    return {"local_numel": local, "full_numel": full}


def _main_first(dist_env, fn):
    """Run fn on rank 0 first (it builds the mixture, writing the mix stage's files once), then on the others, which
    find every artifact cached. Needs the process group (gloo/nccl), created here; the Trainer reuses it."""
    if not dist_env.distributed:
        return fn()
    import torch.distributed as dist

    if dist_env.is_main:
        out = fn()
        dist.barrier()
        return out
    dist.barrier()
    return fn()


def run(ctx) -> dict[str, Any]:
    from aloevision import distributed

    # Before torch/DeepSpeed start: export RANK/WORLD_SIZE/... (torchrun, srun or submitit) and pick the CPU
    # accelerator where there is no GPU.
    dist_env = distributed.detect()
    if dist_env.distributed:
        distributed.setup(init_process_group=True)
    else:
        # One process: export nothing (RANK/WORLD_SIZE=1 would make accelerate open a TCP store on MASTER_PORT,
        # colliding with any other job on the machine); only pick the DeepSpeed accelerator.
        distributed.use_cpu()

    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from aloevision.model.loading import checkpoint_path, load_model, load_processor_for
    from aloevision.mixture import load_mixture
    from aloevision.training.collator import DummyImageCollator, build_training_collator

    cfg = ctx.cfg
    tracker = ctx.tracker
    train_ds = _main_first(dist_env, lambda: load_mixture(ctx.results["mix"], cfg.paths.cache_dir))
    plan = batch_plan(cfg, len(train_ds), (ctx.results.get("mix") or {}).get("plan"))
    if plan["world_size"] != dist_env.world_size:
        raise ConfigError(f"train.world_size={plan['world_size']} but this job has {dist_env.world_size} ranks "
                          f"({dist_env.source}); leave train.world_size unset")
    use_cpu = not torch.cuda.is_available()
    base = resolve_init_from(cfg.train.init_from) if cfg.train.init_from else checkpoint_path(cfg.model, cfg.paths.cache_dir)
    # The processor is saved with every model we write; a foreign checkpoint without one uses the base model's.
    has_processor = Path(base, "tokenizer_config.json").is_file() or not Path(base).exists()
    processor = load_processor_for(cfg.model, base if has_processor else checkpoint_path(cfg.model, cfg.paths.cache_dir))
    ds_config = deepspeed_config(cfg, ctx.run_dir, plan, write=dist_env.is_main)
    # TrainingArguments must exist before the model under ZeRO-3: it registers the DeepSpeed config, so
    # from_pretrained partitions the weights as it loads them (zero.Init) instead of materialising them per rank.
    args = _sft_config(cfg, ctx.run_dir, plan, use_cpu, ds_config)
    if ds_config is not None and dist_env.distributed:
        import deepspeed

        # DeepSpeed's own comm layer must know the (already initialised) process group before zero.Init reads the
        # world size from it; it wraps the existing group.
        deepspeed.init_distributed(dist_backend=distributed.backend())
    ckpt_dir = ctx.run_dir / "checkpoints"
    resume = latest_checkpoint(ckpt_dir) if cfg.train.resume else None
    # Resuming: the weights come from the checkpoint through from_pretrained. transformers 5.23's
    # Trainer._load_from_checkpoint calls model.load_state_dict(strict=False) on the checkpoint's safetensors, whose
    # keys are saved in Qwen2-VL's original layout (model.embed_tokens...) while the module now has
    # model.language_model.*: nothing matches and the resumed run silently restarts from the base weights
    # (tests/test_resume.py caught it). from_pretrained applies the key conversion. Optimizer, scheduler, RNG and
    # data position still come from the Trainer's resume; its own weight load then finds nothing to change.
    model = load_model(cfg.model, resume or base, for_training=True)
    log.info("training %s from %s on rank %d/%d: %s", cfg.model.name, base, dist_env.rank, dist_env.world_size, plan)

    partition: dict[str, Any] = {}

    class ForwardToTracker(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                tracker.log({f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)

    class PartitionReport(TrainerCallback):
        """What ZeRO did to the parameters, per rank, once the engine is built (all ranks take part in the gather)."""

        def on_train_begin(self, args, state, control, model=None, **kw):
            stats = partition_stats(model)
            if dist_env.distributed:
                import torch.distributed as dist

                every: list[Any] = [None] * dist_env.world_size
                dist.all_gather_object(every, stats)
            else:
                every = [stats]
            partition.update(per_rank=every, sharded=any(s["local_numel"] < s["full_numel"] for s in every))

    collator = build_training_collator(processor, int(cfg.model.max_length))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=processor,
                         data_collator=collator, callbacks=[ForwardToTracker(), PartitionReport()])
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    final = ctx.run_dir / FINAL_MODEL_DIR
    # Every rank calls save_model: under ZeRO-3 it gathers the shards (a collective); only rank 0 writes.
    trainer.save_model(str(final))
    if dist_env.is_main:
        processor.save_pretrained(str(final))
    metrics = {f"train/{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics["train/global_step"] = trainer.state.global_step
    history = [h for h in trainer.state.log_history if "loss" in h]
    if history:
        metrics["train/first_loss"] = history[0]["loss"]
        metrics["train/last_loss"] = history[-1]["loss"]
    ds_stage = None
    if trainer.is_deepspeed_enabled:
        ds_stage = int(trainer.accelerator.deepspeed_plugin.zero_stage)
    report = {**plan, "init_from": base, "samples": len(train_ds), **metrics,
              "resumed_from": resume,
              "loss_history": [[h["step"], h["loss"]] for h in history],
              "distributed": {"world_size": dist_env.world_size, "source": dist_env.source, "zero_stage": ds_stage,
                              **partition},
              "dummy_image_batches": collator.dummy_batches if isinstance(collator, DummyImageCollator) else None}
    tracker.summary(metrics)
    tracker.stage_report("train", report)
    tracker.add_paths(model=final)
    return {"model": str(final), "plan": plan, "metrics": metrics}
