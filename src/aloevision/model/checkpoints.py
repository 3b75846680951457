"""Where a trained model lives in a run folder, and how a `train.init_from` / `eval.model` value resolves to one."""

from __future__ import annotations

from pathlib import Path

from aloevision.config import ConfigError

FINAL_MODEL_DIR = "model"  # <run folder>/model: the final weights + processor of a training run


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
