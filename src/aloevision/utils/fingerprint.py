"""Stable fingerprints of configs and inputs: the cache keys of artifacts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def _normalise(obj: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    return obj


def fingerprint(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-able object; key order does not matter."""
    blob = json.dumps(_normalise(obj), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def data_stamp(path: str, limit: int = 5000) -> list:
    """Cheap identity of a local source (names, sizes, mtimes of its files); a Hub id stands for itself."""
    p = Path(path)
    if not p.exists():
        return [path]
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())[:limit]
    return [[str(f.relative_to(p.parent)), f.stat().st_size, int(f.stat().st_mtime)] for f in files]
