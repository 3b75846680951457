"""On-disk pHash cache keyed by image content, so re-runs, sweeps and ablations never hash an image twice.

Key: sha1 of the encoded image bytes, under a directory named by :func:`~aloevision.leakage.phash.version_tag`
(Pillow, imagehash, scipy and numpy versions: pHash values change with Pillow's resize). Layout::

    <root>/<version_tag>/part-<host>-<pid>-<uuid>.npz   # keys: (N,) S20 sha1 digests, hashes: (N,) uint64

Writers never touch an existing file: each flush writes a new part (temp file + atomic rename), so any number of
processes, threads or SLURM array tasks on a shared POSIX filesystem can add hashes concurrently with no lock;
readers merge all parts into one sorted array and look keys up with a binary search. :meth:`PHashCache.compact`
merges parts into one under a file lock (a reader racing it re-lists and finds the merged part). sqlite was not
used because its locking is unreliable on the network filesystems SLURM jobs share.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from aloevision.utils.locks import file_lock

KEY_DTYPE = np.dtype("S20")


class PHashCache:
    def __init__(self, root: str | os.PathLike, version: str | None = None, flush_every: int = 100_000):
        if version is None:
            from .phash import version_tag

            version = version_tag()
        self.version = version
        self.dir = Path(root) / version
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self._keys = np.zeros(0, KEY_DTYPE)
        self._vals = np.zeros(0, np.uint64)
        self._parts: set[str] = set()
        self._pending: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.refresh()

    # ------------------------------------------------------------------------------------------- reading
    def _list_parts(self) -> list[str]:
        return sorted(p.name for p in self.dir.glob("part-*.npz"))

    def refresh(self) -> None:
        """Load parts written (by any process) since the last refresh."""
        for _attempt in range(5):
            try:
                new = [n for n in self._list_parts() if n not in self._parts]
                ks, vs = [self._keys], [self._vals]
                for name in new:
                    with np.load(self.dir / name) as z:
                        ks.append(z["keys"].astype(KEY_DTYPE))
                        vs.append(z["hashes"].astype(np.uint64))
                break
            except FileNotFoundError:  # a compaction removed a part between listing and reading: list again
                continue
        else:  # pragma: no cover
            raise RuntimeError(f"pHash cache {self.dir} keeps changing under the reader")
        if len(new) == 0:
            return
        keys = np.concatenate(ks)
        vals = np.concatenate(vs)
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        if len(keys) > 1:  # the same image hashed by two processes: one entry (the values are equal by construction)
            keep = np.ones(len(keys), bool)
            keep[1:] = keys[1:] != keys[:-1]
            keys, vals = keys[keep], vals[keep]
        with self._lock:
            self._keys, self._vals = keys, vals
            self._parts.update(new)

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending)

    def get(self, digest: bytes) -> int | None:
        """The cached hash of the image whose bytes have this sha1 digest, or None. Thread-safe."""
        v = self._pending.get(digest)
        if v is None:
            keys = self._keys
            if len(keys):
                k = np.array(digest, KEY_DTYPE)
                i = int(np.searchsorted(keys, k))
                if i < len(keys) and keys[i] == k:
                    v = int(self._vals[i])
        with self._lock:  # hash_many calls this from several threads; stage reports rely on exact counts
            if v is None:
                self.misses += 1
            else:
                self.hits += 1
        return v

    def get_many(self, digests: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, found) for a batch of digests."""
        q = np.asarray(list(digests), KEY_DTYPE)
        vals = np.zeros(len(q), np.uint64)
        found = np.zeros(len(q), bool)
        if len(self._keys) and len(q):
            i = np.minimum(np.searchsorted(self._keys, q), len(self._keys) - 1)
            found = self._keys[i] == q
            vals[found] = self._vals[i[found]]
        for j in np.flatnonzero(~found):
            v = self._pending.get(bytes(digests[j]))
            if v is not None:
                vals[j], found[j] = v, True
        with self._lock:
            self.hits += int(found.sum())
            self.misses += int((~found).sum())
        return vals, found

    # ------------------------------------------------------------------------------------------- writing
    def put_many(self, digests: Iterable[bytes | None], hashes: Iterable[int]) -> None:
        with self._lock:
            for d, h in zip(digests, hashes):
                if d is not None:
                    self._pending[bytes(d)] = int(h)
            full = len(self._pending) >= self.flush_every
        if full:
            self.flush()

    def flush(self) -> None:
        """Write pending hashes as a new part (atomic rename) and fold them into the in-memory index."""
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
        keys = np.asarray(list(pending.keys()), KEY_DTYPE)
        vals = np.fromiter(pending.values(), np.uint64, len(pending))
        name = f"part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.npz"
        self._write(name, keys, vals)
        self.refresh()

    def _write(self, name: str, keys: np.ndarray, vals: np.ndarray) -> None:
        tmp = self.dir / f".tmp-{name}"
        with open(tmp, "wb") as f:
            np.savez(f, keys=keys, hashes=vals)
        os.replace(tmp, self.dir / name)

    def compact(self) -> int:
        """Merge all parts into one (under a lock; safe while others read or add parts). Returns parts merged."""
        with file_lock(self.dir / ".compact.lock"):
            self.flush()
            self.refresh()
            parts = sorted(self._parts)
            if len(parts) <= 1:
                return len(parts)
            name = f"part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.npz"
            self._write(name, self._keys, self._vals)
            for p in parts:  # only the parts merged into the new one: parts written meanwhile stay
                (self.dir / p).unlink(missing_ok=True)
            with self._lock:
                self._parts = {name}
            return len(parts)

    def __enter__(self) -> "PHashCache":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
