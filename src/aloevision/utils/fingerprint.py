"""Stable fingerprints of configs and inputs: the cache keys of artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import stat
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


def data_stamp(path: str) -> list:
    """Identity of a local source: EVERY file under ``path`` (names, sizes and mtimes in nanoseconds, in sorted
    order), hashed into ``[name, files, bytes, sha256]``, so an artifact keyed by it changes when any record file,
    image or archive it may read changes, at any folder size. Symlinked folders are followed (once each: cycles are
    cut by device + inode); a dangling link or a special file (FIFO, socket) counts by its name and type, never
    opened. One ``stat`` per file: ~1 s per 100K files warm (docs/benchmarks.md). A Hub id stands for itself."""
    p = Path(path)
    if not p.exists():
        return [path]
    h = hashlib.sha256()
    counts = [0, 0]

    def add(rel: str, st) -> None:
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{stat.S_IFMT(st.st_mode)}\n".encode("utf-8",
                                                                                               "surrogateescape"))
        counts[0] += 1
        counts[1] += st.st_size if stat.S_ISREG(st.st_mode) else 0

    if p.is_file():
        add(p.name, p.stat())
        return [p.name, *counts, h.hexdigest()]
    seen: set[tuple[int, int]] = set()
    stack = [(str(p), "")]
    while stack:
        folder, rel = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:  # an unreadable folder changes the stamp, it does not stop it
            h.update(f"{rel}\0unreadable\0{e.errno}\n".encode("utf-8", "surrogateescape"))
            continue
        subdirs = []
        for e in entries:
            name = f"{rel}{e.name}"
            try:
                if e.is_dir():  # follows a symlinked folder
                    subdirs.append((e.path, name + "/"))
                    continue
                add(name, e.stat())
            except OSError:
                h.update(f"{name}\0dangling\n".encode("utf-8", "surrogateescape"))
        stack.extend(reversed(subdirs))  # depth-first in name order: the hash does not depend on listing order
    return [p.name, *counts, h.hexdigest()]
