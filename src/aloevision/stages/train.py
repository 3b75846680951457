"""Stage `train`: SFT of Qwen2-VL with TRL's SFTTrainer on the mixture (TRL `messages` + `images` rows), loss on
assistant tokens only (the label mask of `aloevision.model.masking`). The mixture's Arrow row files are memory-mapped
(no copy); its images are keys into the image store, read and decoded by the collator batch by batch.

Hyper-parameters come from `model.recipe` (paper Table 6); `train.*` holds run-level switches and overrides. A
second stage (`train.init_from=<run folder or checkpoint>`) starts from a first-stage model. Checkpoints live in the
run folder; a re-run of the same folder resumes from the latest one (optimizer, scheduler, RNG, data position).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aloevision.config import ConfigError

log = logging.getLogger(__name__)
PROGRESS_FILE = "train_progress.json"  # step, elapsed, throughput: the plan's measured rate (plan.measured)
from aloevision.model.checkpoints import FINAL_MODEL_DIR, resolve_init_from  # noqa: F401


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_plan(cfg: DictConfig, n_samples: int, mix_plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Micro batch, accumulation and steps for this run: the planner's rule (`planning.run_schedule`), fed with the
    mix stage's plan (`mix_plan["training"]`) when there is one, else `mixture.reference_steps`."""
    from aloevision.planning import run_schedule

    return run_schedule(n_samples, cfg.model.recipe, cfg.train, world_size=cfg.train.world_size or world_size(),
                        planned=(mix_plan or {}).get("training"), reference_steps=cfg.mixture.reference_steps)


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


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
    from aloevision.mixture import image_store_of, load_mixture
    from aloevision.training import arguments as targs
    from aloevision.training import deepspeed_config as dsc
    from aloevision.training.interrupt import CheckpointOnSignal
    from aloevision.training.collator import DummyImageCollator, build_training_collator

    cfg = ctx.cfg
    tracker = ctx.tracker
    # The mixture's row files, memory-mapped in place (no copy); its images are image-store keys the collator reads.
    train_ds = _main_first(dist_env, lambda: load_mixture(ctx.results["mix"]))
    plan = batch_plan(cfg, len(train_ds), (ctx.results.get("mix") or {}).get("plan"))
    if plan["world_size"] != dist_env.world_size:
        raise ConfigError(f"train.world_size={plan['world_size']} but this job has {dist_env.world_size} ranks "
                          f"({dist_env.source}); leave train.world_size unset")
    use_cpu = not torch.cuda.is_available()
    base = resolve_init_from(cfg.train.init_from) if cfg.train.init_from else checkpoint_path(cfg.model, cfg.paths.cache_dir)
    # The processor is saved with every model we write; a foreign checkpoint without one uses the base model's.
    has_processor = Path(base, "tokenizer_config.json").is_file() or not Path(base).exists()
    processor = load_processor_for(cfg.model, base if has_processor else checkpoint_path(cfg.model, cfg.paths.cache_dir))
    # Every recipe field resolved once, for SFTConfig and DeepSpeed alike (training/arguments.py).
    values = targs.resolve(cfg, plan, use_cpu=use_cpu)
    ds_config = targs.deepspeed(cfg, values, world_size=plan["world_size"])
    if ds_config is not None and dist_env.is_main:
        dsc.write(ds_config, ctx.run_dir / "deepspeed.json")
    # TrainingArguments must exist before the model under ZeRO-3: it registers the DeepSpeed config, so
    # from_pretrained partitions the weights as it loads them (zero.Init) instead of materialising them per rank.
    args = targs.sft_config(cfg, ctx.run_dir, values, use_cpu=use_cpu, ds_config=ds_config)
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
    # (tests/e2e/test_resume.py caught it). from_pretrained applies the key conversion. Optimizer, scheduler, RNG and
    # data position still come from the Trainer's resume; its own weight load then finds nothing to change.
    interval = cfg.train.save_interval_min
    on_signal = CheckpointOnSignal(interval_s=float(interval) * 60 if interval else None,
                                   distributed=dist_env.distributed).install()
    model = load_model(cfg.model, resume or base, for_training=True)
    log.info("training %s from %s on rank %d/%d: %s", cfg.model.name, base, dist_env.rank, dist_env.world_size, plan)

    partition: dict[str, Any] = {}

    started: dict[str, Any] = {"t": time.monotonic(), "step": None}

    class ForwardToTracker(TrainerCallback):
        """Metrics to the job's W&B run; the measured throughput to the run folder (what `plan.measured` reads)."""

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs:
                return
            if started["step"] is None:  # the first step includes start-up (engine build, first batch): skip it
                started.update(t=time.monotonic(), step=state.global_step)
            steps = state.global_step - started["step"]
            elapsed = time.monotonic() - started["t"]
            logs = dict(logs)
            if steps > 0 and elapsed > 0:
                sps = steps * plan["global_batch"] / elapsed
                logs.update(samples_per_second=sps, samples_per_gpu_second=sps / plan["world_size"])
            tracker.log({f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)
            if dist_env.is_main:
                progress = {"step": state.global_step, "max_steps": plan["max_steps"], "elapsed_s": elapsed,
                            "world_size": plan["world_size"], "global_batch": plan["global_batch"],
                            "model": cfg.model.name, "samples_per_gpu_second": logs.get("samples_per_gpu_second"),
                            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
                tmp = ctx.run_dir / (PROGRESS_FILE + ".tmp")
                tmp.write_text(json.dumps(progress))
                tmp.replace(ctx.run_dir / PROGRESS_FILE)

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

    collator = build_training_collator(processor, int(cfg.model.max_length),
                                       image_store=image_store_of(ctx.results["mix"]))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=processor,
                         data_collator=collator, callbacks=[ForwardToTracker(), PartitionReport(), on_signal])
    if resume:
        log.info("resuming from %s", resume)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if on_signal.stopped_by is None:
            on_signal.uninstall()
    if on_signal.stopped_by is not None:
        # The Trainer wrote checkpoint-<step> and stopped: record it, then hand the signal on (submitit requeues).
        saved = latest_checkpoint(ckpt_dir)
        log.warning("stopped by %s at step %d; checkpoint %s; a re-run of this job resumes from it",
                    signal_name(on_signal.stopped_by), trainer.state.global_step, saved)
        tracker.stage_report("train", {**plan, "interrupted_by": signal_name(on_signal.stopped_by),
                                       "checkpoint": saved, "global_step": trainer.state.global_step})
        on_signal.forward()
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
              "resumed_from": resume, "interval_checkpoints": on_signal.saves_on_interval,
              "attn_implementation": getattr(model.config, "_attn_implementation", None),
              "loss_history": [[h["step"], h["loss"]] for h in history],
              "distributed": {"world_size": dist_env.world_size, "source": dist_env.source, "zero_stage": ds_stage,
                              **partition},
              "dummy_image_batches": collator.dummy_batches if isinstance(collator, DummyImageCollator) else None}
    tracker.summary(metrics)
    tracker.stage_report("train", report)
    tracker.add_paths(model=final)
    return {"model": str(final), "plan": plan, "metrics": metrics}
