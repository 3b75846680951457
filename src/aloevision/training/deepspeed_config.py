"""The DeepSpeed config of a run, generated from the recipe (paper Table 6) and validated offline by DeepSpeed itself.

`build(recipe)` returns the dict the HF Trainer gets as `TrainingArguments(deepspeed=...)`. Values the recipe fixes
(micro batch, accumulation, clipping, bf16) are written as numbers, so the Trainer's own consistency check
(`HfTrainerDeepSpeedConfig.fill_match`) fails loudly if its arguments ever disagree with the recipe; values that
depend on the launch (train_batch_size = world size x ...) or on the model (bucket sizes from hidden_size) are
"auto", which the Trainer fills. No optimizer/scheduler block: the Trainer builds them from the recipe (AdamW or
8-bit AdamW, cosine with warmup), exactly as without DeepSpeed.

`validate(config, world_size)` runs DeepSpeed's `DeepSpeedConfig` parser on the config with the "auto" values filled
the way the Trainer fills them: its pydantic sections reject unknown keys and bad values, its batch assertion checks
the arithmetic, and a top-level key DeepSpeed never reads is rejected too (DeepSpeed itself ignores those silently).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping

from aloevision.config import ConfigError

AUTO = "auto"
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def _get(node: Any, key: str, default: Any = None) -> Any:
    """Read a field from a dataclass, a DictConfig or a dict (missing -> default)."""
    if isinstance(node, Mapping):
        return node.get(key, default)
    try:
        value = getattr(node, key)
    except AttributeError:  # omegaconf's ConfigAttributeError is an AttributeError too
        return default
    return default if value is None else value


def batch_factors(recipe: Any, *, micro_batch_size: int | None = None,
                  gradient_accumulation_steps: int | None = None) -> tuple[int, int]:
    """(micro batch per device, accumulation steps): the train.* overrides when given, else the recipe's."""
    from aloevision.planning import batch_factors as factors

    micro, accum, _ = factors(recipe, micro_batch_size=micro_batch_size,
                              gradient_accumulation_steps=gradient_accumulation_steps, world_size=1)
    return micro, accum


def check_batch(recipe: Any, world_size: int, global_batch: int | None = None, *,
                micro_batch_size: int | None = None, gradient_accumulation_steps: int | None = None) -> int:
    """Fail unless micro x accumulation x world size equals the configured global batch; return the global batch.
    The planner's rule (`aloevision.planning.check_global_batch`), so plan, mix, train and this agree."""
    from aloevision.planning import check_global_batch

    return check_global_batch(recipe, micro_batch_size=micro_batch_size,
                              gradient_accumulation_steps=gradient_accumulation_steps, world_size=int(world_size),
                              global_batch=global_batch)


def build(recipe: Any, *, micro_batch_size: int | None = None, gradient_accumulation_steps: int | None = None,
          max_grad_norm: float | None = None, offload: str | None = None, offload_nvme_path: str | None = None,
          overlap_comm: bool = True, bf16: bool | None = None) -> dict[str, Any] | None:
    """The DeepSpeed config for `recipe` (None when recipe.zero_stage is 0: plain DDP / single process).

    offload: "none" (default: Table 6 trains without offload on 4 x 64 GB per node), "cpu" or "nvme" for both the
    optimizer state and the parameters; read from recipe.zero_offload when not given.
    """
    stage = int(_get(recipe, "zero_stage", 0))
    if stage == 0:
        return None
    if stage not in (1, 2, 3):
        raise ConfigError(f"model.recipe.zero_stage={stage}: use 0 (no DeepSpeed), 1, 2 or 3")
    micro, accum = batch_factors(recipe, micro_batch_size=micro_batch_size,
                                 gradient_accumulation_steps=gradient_accumulation_steps)
    clip = float(max_grad_norm if max_grad_norm is not None else _get(recipe, "max_grad_norm", 1.0))
    offload = str(offload or _get(recipe, "zero_offload", "none"))
    if offload not in OFFLOAD_DEVICES:
        raise ConfigError(f"zero offload={offload!r}: use one of {', '.join(OFFLOAD_DEVICES)}")
    if offload == "nvme" and not offload_nvme_path:
        raise ConfigError("zero offload='nvme' needs offload_nvme_path (a fast local disk)")
    if offload != "none" and stage != 3:
        raise ConfigError(f"zero offload={offload!r} is configured here for ZeRO-3 only (zero_stage={stage})")
    bf16 = bool(_get(recipe, "bf16", False) if bf16 is None else bf16)  # a CPU run passes False (as SFTConfig gets)

    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": AUTO,  # hidden_size^2, filled by the Trainer from the model config
    }
    if stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": AUTO,
            "stage3_param_persistence_threshold": AUTO,
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "sub_group_size": 1_000_000_000,
            # save_model() gathers the shards into one HF checkpoint (safetensors) that loads without DeepSpeed.
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    if offload != "none":
        target = {"device": offload, "pin_memory": True}
        if offload == "nvme":
            target["nvme_path"] = str(offload_nvme_path)
        zero["offload_optimizer"] = dict(target)
        zero["offload_param"] = dict(target)

    config: dict[str, Any] = {
        "train_batch_size": AUTO,  # world size x micro x accumulation, filled by the Trainer at launch
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the Trainer logs; DeepSpeed's own step prints are noise
        "wall_clock_breakdown": False,
    }
    if offload != "none":
        # The Trainer's optimizer (torch AdamW / bnb 8-bit) steps on the offloaded fp32 shards; without this flag
        # DeepSpeed insists on its own compiled CPU Adam.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def fill_auto(config: Mapping[str, Any], world_size: int, *, hidden_size: int = 1024) -> dict[str, Any]:
    """A copy of `config` with every "auto" replaced the way transformers' HfTrainerDeepSpeedConfig fills it."""
    out = copy.deepcopy(dict(config))
    micro = out.get("train_micro_batch_size_per_gpu")
    accum = out.get("gradient_accumulation_steps")
    if micro == AUTO or accum == AUTO:
        raise ConfigError("validate() needs numeric train_micro_batch_size_per_gpu and gradient_accumulation_steps "
                          "(build() writes them from the recipe)")
    if out.get("train_batch_size") == AUTO:
        out["train_batch_size"] = int(world_size) * int(micro) * int(accum)
    if out.get("gradient_clipping") == AUTO:
        out["gradient_clipping"] = 1.0  # TrainingArguments.max_grad_norm default
    fills = {"reduce_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    zero = out.get("zero_optimization")
    if isinstance(zero, dict):
        for key, value in fills.items():
            if zero.get(key) == AUTO:
                zero[key] = value
    for section in ("bf16", "fp16"):
        if isinstance(out.get(section), dict) and out[section].get("enabled") == AUTO:
            out[section]["enabled"] = False
    return out


class _ReadRecorder(dict):
    """A dict that remembers which keys were looked up: DeepSpeedConfig reads each top-level key it knows with
    .get / [] / in, so a key it never looked up is one it would silently ignore (a typo)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set = set()

    def get(self, key, default=None):  # noqa: D401 - dict API
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def __copy__(self):  # DeepSpeedConfig works on copy.copy(config): keep recording into the same set
        dup = _ReadRecorder(self)
        dup.read = self.read
        return dup


def _import_deepspeed_config():
    # Offline validation needs no GPU: pick DeepSpeed's CPU accelerator unless one is set or CUDA is present.
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig


def validate(config: Mapping[str, Any], world_size: int, *, hidden_size: int = 1024) -> Any:
    """Parse `config` with DeepSpeed's own classes as a job of `world_size` ranks would; raise ConfigError naming
    the problem. Returns the DeepSpeedConfig object (e.g. `.zero_config.stage`)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"a DeepSpeed config must be a mapping, got {type(config).__name__}")
    DeepSpeedConfig = _import_deepspeed_config()
    filled = _ReadRecorder(fill_auto(config, world_size, hidden_size=hidden_size))
    # DeepSpeedConfig takes the world size from torch.distributed (1 when not initialised); the batch arithmetic
    # for the real world size is ours (check_batch), so let DeepSpeed derive train_batch_size for its own view.
    filled.pop("train_batch_size", None)
    try:
        parsed = DeepSpeedConfig(filled)
    except Exception as exc:  # pydantic ValidationError, AssertionError, DeepSpeedConfigError, ValueError
        raise ConfigError(f"DeepSpeed rejects the generated config: {type(exc).__name__}: {exc}") from exc
    # Now DeepSpeed's own batch assertion for the real world size (what each rank will check at engine start).
    parsed.world_size = int(world_size)
    parsed.train_batch_size = int(world_size) * parsed.train_micro_batch_size_per_gpu * parsed.gradient_accumulation_steps
    if config.get("train_batch_size", AUTO) != AUTO:
        parsed.train_batch_size = config["train_batch_size"]
    try:
        parsed._configure_train_batch_size()
    except AssertionError as exc:
        raise ConfigError(f"DeepSpeed rejects the batch sizes for world size {world_size}: {exc}") from exc
    unknown = sorted(k for k in filled if k not in filled.read)
    if unknown:
        raise ConfigError(f"DeepSpeed does not know the top-level key(s) {unknown}; it would ignore them silently")
    zero = config.get("zero_optimization", {}) or {}
    if int(zero.get("stage", 0) or 0) == 3 and parsed.zero_config.stage != 3:
        raise ConfigError(f"zero_optimization.stage=3 parsed as {parsed.zero_config.stage}")
    return parsed


def write(config: Mapping[str, Any], path: str | Path) -> Path:
    """Write the config as JSON (the run folder keeps the exact file the Trainer got)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def for_run(recipe: Any, train: Any, world_size: int, **kwargs: Any) -> dict[str, Any] | None:
    """check_batch + build + validate with the train.* overrides: what the train stage calls at start-up."""
    overrides = {"micro_batch_size": _get(train, "micro_batch_size"),
                 "gradient_accumulation_steps": _get(train, "gradient_accumulation_steps")}
    check_batch(recipe, world_size, **overrides)
    config = build(recipe, **overrides, **kwargs)
    if config is not None:
        validate(config, world_size)
    return config
