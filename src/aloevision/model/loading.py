"""Load the configured model and processor: the tiny offline Qwen2-VL or a real checkpoint (Hub id or local path),
through the same code path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from aloevision.config import TinySpec


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


def load_model(model_cfg: DictConfig, path: str, *, for_training: bool = False):
    import torch
    from transformers import AutoModelForImageTextToText

    dtype = getattr(torch, str(model_cfg.dtype))
    if not torch.cuda.is_available() and dtype == torch.bfloat16 and not for_training:
        dtype = torch.float32  # bf16 matmuls are slow on most CPUs; inference on CPU stays in fp32
    kwargs = dict(dtype=dtype, trust_remote_code=bool(model_cfg.trust_remote_code))
    attn = str(model_cfg.attn_implementation)
    if attn == "flash_attention_2" and not torch.cuda.is_available():
        attn = "sdpa"  # flash-attn needs a GPU; sdpa gives the same results
    kwargs["attn_implementation"] = attn
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
