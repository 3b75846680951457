"""Artifacts cached by the fingerprint of their inputs, written atomically, computed once per sweep.

A stage asks `store.get_or_build(stage, key, build)`: if `<cache>/<stage>/<fingerprint>/` is complete it is reused;
otherwise `build(tmp_dir)` fills a temporary folder that is renamed into place. A file lock makes concurrent jobs
of a sweep (local processes or SLURM jobs on a shared filesystem) wait for the first one instead of recomputing.
A job killed mid-build (SIGKILL, node failure) leaves its `.tmp-<fingerprint>-*` folder behind: the next build of
any artifact of that stage removes every such folder whose lock is free (nobody is building it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aloevision.utils.fingerprint import fingerprint
from aloevision.utils.locks import file_lock

log = logging.getLogger(__name__)
DONE = "_SUCCESS"


@dataclass
class Artifact:
    path: Path
    fingerprint: str
    cached: bool  # True when an earlier job built it

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())


class MissingArtifact(RuntimeError):
    """A read-only store (`upstream=require`) was asked for an artifact nobody built yet."""

    def __init__(self, stage: str, path: Path):
        super().__init__(f"no {stage} artifact at {path}")
        self.stage, self.path = stage, path


class ArtifactStore:
    def __init__(self, root: str | Path, can_build: bool = True, touched: list | None = None):
        self.root = Path(root)
        self.can_build = can_build
        # (stage, path, cached) of every artifact asked for, in order: what a job built and what it reused.
        self.touched: list[tuple[str, Path, bool]] = [] if touched is None else touched

    def read_only(self) -> "ArtifactStore":
        """The same store (same log) that refuses to build: a missing artifact raises MissingArtifact."""
        return ArtifactStore(self.root, can_build=False, touched=self.touched)

    def path_for(self, stage: str, key: Any) -> Path:
        return self.root / stage / fingerprint(key)

    def get_or_build(self, stage: str, key: Any, build: Callable[[Path], None]) -> Artifact:
        fp = fingerprint(key)
        final = self.root / stage / fp
        if (final / DONE).is_file():
            self.touched.append((stage, final, True))
            return Artifact(final, fp, cached=True)
        if not self.can_build:
            raise MissingArtifact(stage, final)
        with file_lock(self.root / stage / f".{fp}.lock"):
            if (final / DONE).is_file():  # another job finished it while we waited
                self.touched.append((stage, final, True))
                return Artifact(final, fp, cached=True)
            clean_stale_tmp(self.root / stage, holding=fp)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{fp}-"))
            try:
                build(tmp)
                (tmp / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
                (tmp / DONE).write_text("")
                if final.exists():  # an incomplete leftover of a killed job
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("built %s artifact %s", stage, final)
        self.touched.append((stage, final, False))
        return Artifact(final, fp, cached=False)


def clean_stale_tmp(stage_dir: str | Path, holding: str | None = None) -> list[Path]:
    """Remove `.tmp-<fp>-*` build folders left by killed jobs: those of `holding` (whose lock the caller holds) and
    those whose lock can be taken without waiting (no job is building them). Returns what was removed."""
    removed = []
    stage_dir = Path(stage_dir)
    for tmp in sorted(stage_dir.glob(".tmp-*")):
        if not tmp.is_dir():
            continue
        fp = tmp.name[len(".tmp-"):].split("-", 1)[0]
        if fp == holding:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            continue
        fd = os.open(stage_dir / f".{fp}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live job is building it
            os.close(fd)
            continue
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    for tmp in removed:
        log.info("removed %s (a build interrupted by an earlier job)", tmp)
    return removed


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str))
    os.replace(tmp, path)


def write_folder_atomic(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """`fill(tmp)` writes a folder that then appears at `out_dir` in one rename (readers never see half of it)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".tmp-" + out_dir.name))
    try:
        fill(tmp)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
