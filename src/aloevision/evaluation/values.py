"""Configuration values for library code: a composed OmegaConf node becomes plain dicts and lists first (an
OmegaConf ListConfig reaching lm-eval turned `tasks: [multimedqa]` into the task name "['multimedqa']")."""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    """A composed OmegaConf node as plain dicts / lists (resolved); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
