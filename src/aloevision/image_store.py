"""The content-addressed image store: every distinct image (its encoded bytes, as the source ships them) stored once,
shared by every mixture, every export and every job of a sweep.

Layout, under one root (the pipeline uses `<cache_dir>/image_store/`; `du -sh` of it is the images' storage):

    pack-<writer>-<n>.bin   encoded images, one after another (append-only, at most `max_pack_bytes` each)
    pack-<writer>-<n>.idx   its index, a .npy of (key, offset, length) rows, written when the pack is closed

A key is the 128-bit BLAKE2b of the image bytes (32 hex characters): the same bytes get the same key wherever they
come from (another source, another archive, another path). Writers never share a file: each writes its own packs
under a temporary name and renames them into place when done (index last, so a visible index always describes a
complete pack); a key already in the store (or already written by this writer) is not written again. Readers take the
union of every index; a key two concurrent writers both stored is readable from either copy.

Reading: `get(key)` is one positioned read (`pread`) of its pack, no more: the bytes are copied once either way, and
unlike a memory map the pages read do not pile up in the process's resident set when an export or an epoch reads
every image. Every read is checked against its key
(a flipped bit, a truncated pack or a deleted file is an `ImageStoreError` naming the key and how to rebuild), so a
corrupt entry can never train silently.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
KEY_BYTES = 16
INDEX_DTYPE = np.dtype([("key", f"S{KEY_BYTES}"), ("offset", "<u8"), ("length", "<u8")])
MAX_PACK_BYTES = 1 << 30
STORE_DIR = "image_store"  # under cfg.paths.cache_dir
REBUILD_HINT = ("rebuild it with `python launch.py stage=images` (the same config); if the store's files were "
                "deleted or damaged, delete <cache_dir>/image_keys/ too so the stage re-reads the images")


class ImageStoreError(RuntimeError):
    """A key the store does not hold, or an entry whose bytes no longer match their key."""


def image_key(data: bytes) -> str:
    """The content key of encoded image bytes (hex)."""
    return hashlib.blake2b(data, digest_size=KEY_BYTES).hexdigest()


def store_root(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / STORE_DIR


class ImageStore:
    """Read (and, through `writer()`, fill) the store at `root`. Safe to share between threads; after a pickle
    (DataLoader workers) the packs are opened again on first use (a fork shares the descriptors: `pread` keeps no
    file position)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._index: np.ndarray | None = None  # sorted by key
        self._packs: list[str] = []
        self._pack_of: np.ndarray | None = None
        self._fds: dict[int, int] = {}  # pack -> open file descriptor

    def __getstate__(self):
        return {"root": self.root}

    def __setstate__(self, state):
        self.__init__(state["root"])

    # ---- index ------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read every pack index again (packs written since, by this process or another, become visible)."""
        with self._lock:
            parts, owners, packs = [], [], []
            for idx in sorted(self.root.glob("pack-*.idx")) if self.root.is_dir() else []:
                a = np.load(idx, allow_pickle=False)
                if a.dtype != INDEX_DTYPE:
                    raise ImageStoreError(f"{idx} is not an image-store index ({a.dtype}); {REBUILD_HINT}")
                parts.append(a)
                owners.append(np.full(len(a), len(packs), np.int32))
                packs.append(str(idx.with_suffix(".bin")))
            index = np.concatenate(parts) if parts else np.zeros(0, INDEX_DTYPE)
            pack_of = np.concatenate(owners) if owners else np.zeros(0, np.int32)
            order = np.argsort(index["key"], kind="stable")
            for fd in self._fds.values():
                os.close(fd)
            self._index, self._pack_of, self._packs, self._fds = index[order], pack_of[order], packs, {}

    def _ensure(self) -> np.ndarray:
        if self._index is None:
            self.refresh()
        return self._index

    def __len__(self) -> int:
        """Entries (a key written by two concurrent writers counts twice: see `distinct`)."""
        return len(self._ensure())

    def distinct(self) -> int:
        keys = self._ensure()["key"]
        return int(len(keys) and 1 + np.count_nonzero(keys[1:] != keys[:-1]))

    def stored_bytes(self) -> int:
        """Bytes of every pack file (what the store costs on disk)."""
        return sum(p.stat().st_size for p in self.root.glob("pack-*.bin")) if self.root.is_dir() else 0

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Positions in the sorted index of raw keys (S16), -1 where absent."""
        index = self._ensure()
        pos = np.searchsorted(index["key"], keys)
        pos = np.minimum(pos, max(len(index) - 1, 0))
        found = (len(index) > 0) & (index["key"][pos] == keys) if len(index) else np.zeros(len(keys), bool)
        return np.where(found, pos, -1)

    def missing(self, keys) -> list[str]:
        """The hex keys among `keys` the store does not hold."""
        keys = list(keys)
        if not keys:
            return []
        raw = np.array([bytes.fromhex(k) for k in keys], dtype=f"S{KEY_BYTES}")
        return [k for k, p in zip(keys, self._find(raw)) if p < 0]

    def __contains__(self, key: str) -> bool:
        return not self.missing([key])

    # ---- reading ----------------------------------------------------------------------------------------------
    def _fd(self, pack: int) -> int:
        fd = self._fds.get(pack)
        if fd is None:
            path = self._packs[pack]
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise ImageStoreError(f"image store pack {path} cannot be read ({e}); {REBUILD_HINT}") from None
            self._fds[pack] = fd
        return fd

    def get(self, key: str) -> bytes:
        """The encoded bytes stored under `key`, checked against it."""
        try:
            raw = bytes.fromhex(key)
        except (TypeError, ValueError):
            raise ImageStoreError(f"{key!r} is not an image-store key (32 hex characters)") from None
        pos = int(self._find(np.array([raw], dtype=f"S{KEY_BYTES}"))[0])
        if pos < 0:
            self.refresh()  # written since we read the indexes?
            pos = int(self._find(np.array([raw], dtype=f"S{KEY_BYTES}"))[0])
        if pos < 0:
            raise ImageStoreError(f"image {key} is not in the image store {self.root}; {REBUILD_HINT}")
        entry = self._index[pos]
        off, n = int(entry["offset"]), int(entry["length"])
        with self._lock:
            fd = self._fd(int(self._pack_of[pos]))
        data = os.pread(fd, n, off)
        if len(data) != n or image_key(data) != key:
            raise ImageStoreError(f"image {key} in {self._packs[int(self._pack_of[pos])]} (offset {off}, {n} bytes) "
                                  f"is corrupt: its bytes no longer match the key; {REBUILD_HINT}")
        return data

    # ---- writing ----------------------------------------------------------------------------------------------
    def writer(self, max_pack_bytes: int = MAX_PACK_BYTES) -> "StoreWriter":
        return StoreWriter(self, max_pack_bytes)


class StoreWriter:
    """Appends new images to this writer's own packs (`put(data) -> key`); `close()` (or the `with` block) publishes
    them. Counts what it did: `written` / `written_bytes` (new to the store) and `present` (already there)."""

    def __init__(self, store: ImageStore, max_pack_bytes: int = MAX_PACK_BYTES):
        self.store = store
        self.max_pack_bytes = int(max_pack_bytes)
        store.root.mkdir(parents=True, exist_ok=True)
        clean_stale_packs(store.root)
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._n = 0
        self._file = None
        self._tmp: Path | None = None
        self._rows: list[tuple[bytes, int, int]] = []
        self._offset = 0
        self._mine: set[bytes] = set()
        self.written = self.written_bytes = self.present = 0
        self.packs: list[Path] = []

    def put(self, data: bytes) -> str:
        key = image_key(data)
        raw = bytes.fromhex(key)
        if raw in self._mine or self.store._find(np.array([raw], dtype=f"S{KEY_BYTES}"))[0] >= 0:
            self.present += 1
            return key
        if self._file is not None and self._offset + len(data) > self.max_pack_bytes and self._offset:
            self._publish()
        if self._file is None:
            self._tmp = self.store.root / f".tmp-pack-{self.name}-{self._n}.bin"
            self._file = open(self._tmp, "wb")
            # Held while the pack is written: a killed writer's pack is the one whose lock is free.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            self._offset = 0
        self._file.write(data)
        self._rows.append((raw, self._offset, len(data)))
        self._offset += len(data)
        self._mine.add(raw)
        self.written += 1
        self.written_bytes += len(data)
        return key

    def _publish(self) -> None:
        f, tmp = self._file, self._tmp
        self._file = None
        f.flush()
        os.fsync(f.fileno())
        final = self.store.root / f"pack-{self.name}-{self._n}"
        idx = np.array(self._rows, dtype=INDEX_DTYPE)
        tmp_idx = self.store.root / f".tmp-index-{self.name}-{self._n}.npy"
        np.save(tmp_idx, idx)
        os.replace(tmp, final.with_suffix(".bin"))  # renamed while still locked: no cleaner takes it for stale
        f.close()
        os.replace(tmp_idx, final.with_suffix(".idx"))  # the index last: a visible index means a complete pack
        self.packs.append(final.with_suffix(".bin"))
        self._rows, self._n = [], self._n + 1

    def close(self) -> None:
        if self._file is not None:
            self._publish()
        self.store.refresh()

    def abort(self) -> None:
        """Drop the pack being written (its images were never published)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            Path(self._tmp).unlink(missing_ok=True)
        self._rows = []

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # What was published stays (valid, deduplicated); only the unfinished pack is dropped.
            self.abort()


def clean_stale_packs(root: str | os.PathLike) -> list[Path]:
    """Remove the unpublished packs of killed writers (`.tmp-pack-*` whose lock nobody holds); their images were
    never in an index, so nothing refers to them."""
    import time

    removed = []
    for tmp in sorted(Path(root).glob(".tmp-index-*")):  # written and renamed within a moment by a live writer
        try:
            if time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    for tmp in sorted(Path(root).glob(".tmp-pack-*.bin")):
        try:
            with open(tmp, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
                removed.append(tmp)
        except (BlockingIOError, FileNotFoundError):  # a live writer, or another cleaner was first
            continue
    for tmp in removed:
        log.info("removed %s (an image-store pack a killed job left unpublished)", tmp)
    return removed
