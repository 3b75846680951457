"""Load the configured model and processor: the tiny offline Qwen2-VL or a real checkpoint (Hub id or local path),
through ONE code path (training, perplexity scoring, evaluation), which also decides where the model runs.

`placement()` is a pure function of the config, the checkpoint's size and the devices (`Devices.detect()`), so its
rules are tested on CPU with the GPU nodes described as data:
* training: no device map (the Trainer / DeepSpeed ZeRO-3 place and shard the weights);
* inference on a GPU node: one GPU (this rank's) when the weights fit it with headroom, else all GPUs of the node
  through `device_map="auto"` (Qwen2-VL-72B in bf16 is ~147 GB: 3 of 4 x 64 GB); more than the node holds is refused;
* CPU: fp32 for inference (bf16 matmuls are slow on most CPUs), flash-attention replaced by SDPA;
* flash-attention when requested AND installed AND the GPU can run it, else SDPA (a log line says so); bf16 or
  flash-attention on a GPU older than Ampere (compute capability < 8.0) is refused with the setting to change.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aloevision.config import ConfigError, TinySpec

log = logging.getLogger(__name__)

HEADROOM = 1.25  # weights x this must fit one GPU for single-GPU inference (activations, KV cache, CUDA context)
NODE_FILL = 0.90  # device_map="auto" may fill each GPU up to this share of its memory
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def checkpoint_path(model_cfg: DictConfig, cache_dir: str | Path) -> str:
    """Where the weights come from: the tiny model is built (once) into the cache."""
    if model_cfg.checkpoint:
        return str(model_cfg.checkpoint)
    from aloevision.model.tiny import ensure_tiny

    overrides = model_cfg.get("tiny") or {}
    if OmegaConf.is_config(overrides):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    spec = {**dataclasses.asdict(TinySpec()), **overrides}
    spec["min_pixels"], spec["max_pixels"] = int(model_cfg.min_pixels), int(model_cfg.max_pixels)
    return str(ensure_tiny(Path(cache_dir) / "models", spec))


def load_processor_for(model_cfg: DictConfig, path: str):
    from aloevision.model.processor import load_processor

    return load_processor(
        path,
        min_pixels=int(model_cfg.min_pixels),
        max_pixels=int(model_cfg.max_pixels),
        trust_remote_code=bool(model_cfg.trust_remote_code),
    )


# -- devices -------------------------------------------------------------------------------------------------------
@dataclass
class Devices:
    """The accelerators this process sees (CUDA_VISIBLE_DEVICES applies)."""

    kind: str = "cpu"  # cpu | cuda
    names: list[str] = field(default_factory=list)
    memory_gb: list[float] = field(default_factory=list)
    capability: list[tuple[int, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.names) if self.kind == "cuda" else 0

    @property
    def ampere(self) -> bool:
        """bf16 tensor cores and flash-attention 2 need compute capability >= 8.0 on every GPU used."""
        return self.count > 0 and all(tuple(c) >= (8, 0) for c in self.capability)

    @classmethod
    def detect(cls) -> "Devices":
        import torch

        if not torch.cuda.is_available():
            return cls()
        n = torch.cuda.device_count()
        props = [torch.cuda.get_device_properties(i) for i in range(n)]
        return cls("cuda", [p.name for p in props], [p.total_memory / 2**30 for p in props],
                   [(p.major, p.minor) for p in props])


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def weights_gb(path: str) -> float | None:
    """Size of the checkpoint's weights as stored (GiB), from a local folder or the local HF cache; None if unknown
    (nothing is downloaded)."""
    p = Path(path)
    if not p.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(str(path), "model.safetensors.index.json")
            if not isinstance(found, str):
                found = try_to_load_from_cache(str(path), "model.safetensors")
            if not isinstance(found, str):
                return None
            p = Path(found).parent
        except Exception:  # not a valid repo id etc.
            return None
    index = p / "model.safetensors.index.json"
    if index.is_file():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if total:
            return float(total) / 2**30
    files = list(p.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) / 2**30 if files else None


@dataclass
class Placement:
    dtype: str
    attn_implementation: str
    device_map: Any  # None | {"": "cuda:N"} | "auto"
    max_memory: dict[Any, str] | None = None
    notes: list[str] = field(default_factory=list)


def placement(model_cfg: Any, devices: Devices, *, for_training: bool = False, size_gb: float | None = None,
              local_rank: int = 0, stored_bytes: int = 2) -> Placement:
    """dtype, attention and device map for loading `model_cfg` on `devices` (see the module docstring).
    size_gb: the weights as stored (`weights_gb`), `stored_bytes` per parameter there (bf16 checkpoints: 2)."""
    dtype = str(getattr(model_cfg, "dtype", None) or "bfloat16")
    attn = str(getattr(model_cfg, "attn_implementation", None) or "sdpa")  # the schema's defaults
    notes: list[str] = []
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"model.dtype={dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    if devices.count == 0:
        if dtype == "bfloat16" and not for_training:
            dtype = "float32"
            notes.append("CPU inference in float32 (bf16 matmuls are slow on most CPUs)")
        if attn == "flash_attention_2":
            attn = "sdpa"
            notes.append("flash-attention needs a GPU: sdpa on CPU (same results)")
        return Placement(dtype, attn, None, None, notes)

    gpu = f"{devices.names[0]} (compute capability {'.'.join(map(str, devices.capability[0]))})"
    if dtype == "bfloat16" and not devices.ampere:
        raise ConfigError(f"model.dtype=bfloat16 needs an Ampere or newer GPU (compute capability >= 8.0); this node "
                          f"has {gpu}. Use model.dtype=float16 (inference) or a newer GPU.")
    if attn == "flash_attention_2":
        if not flash_attn_installed():
            attn = "sdpa"
            notes.append("flash-attn is not installed (pip install flash-attn --no-build-isolation): using sdpa")
        elif not devices.ampere:
            raise ConfigError(f"model.attn_implementation=flash_attention_2 needs compute capability >= 8.0; this "
                              f"node has {gpu}. Set model.attn_implementation=sdpa.")
        elif dtype == "float32":
            raise ConfigError("model.attn_implementation=flash_attention_2 runs in bf16/fp16 only; model.dtype=float32"
                              " needs model.attn_implementation=sdpa")
    if for_training:
        return Placement(dtype, attn, None, None, notes)

    need = None if size_gb is None else size_gb * DTYPE_BYTES[dtype] / stored_bytes
    one = devices.memory_gb[local_rank % devices.count]
    if need is None or need * HEADROOM <= one:
        return Placement(dtype, attn, {"": f"cuda:{local_rank % devices.count}"}, None, notes)
    node = sum(devices.memory_gb) * NODE_FILL
    if need * HEADROOM > node:
        raise ConfigError(f"{model_cfg.name}: {need:.0f} GB of weights in {dtype} (x{HEADROOM} headroom) do not fit "
                          f"this node's {devices.count} GPU(s) of {one:.0f} GB; use more GPUs per node or vLLM with "
                          "tensor parallelism across nodes")
    max_memory = {i: f"{int(m * NODE_FILL)}GiB" for i, m in enumerate(devices.memory_gb)}
    notes.append(f"{need:.0f} GB of weights > one GPU ({one:.0f} GB): spread over the node's {devices.count} GPUs "
                 "(device_map=auto)")
    return Placement(dtype, attn, "auto", max_memory, notes)


def load_pretrained(path: str, p: Placement, *, trust_remote_code: bool = False):
    """from_pretrained with a Placement (the one call every model load goes through)."""
    import torch
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = dict(dtype=getattr(torch, p.dtype), trust_remote_code=trust_remote_code,
                                  attn_implementation=p.attn_implementation)
    if p.device_map is not None:
        kwargs["device_map"] = p.device_map
    if p.max_memory:
        kwargs["max_memory"] = p.max_memory
    for note in p.notes:
        log.info("%s: %s", Path(str(path)).name, note)
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def load_model(model_cfg: DictConfig, path: str, *, for_training: bool = False, devices: Devices | None = None):
    """The model at `path`, in the dtype / attention / devices `placement()` picks for this machine."""
    devices = devices or Devices.detect()
    size = None if for_training or devices.count == 0 else weights_gb(path)
    p = placement(model_cfg, devices, for_training=for_training, size_gb=size,
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return load_pretrained(path, p, trust_remote_code=bool(getattr(model_cfg, "trust_remote_code", False)))
