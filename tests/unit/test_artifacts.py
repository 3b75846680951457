"""The artifact cache: a killed build's `.tmp-*` folder is removed by a later build when no job holds its lock."""

import fcntl
import os

from aloevision.artifacts import ArtifactStore, clean_stale_tmp


def test_stale_tmp_builds_are_cleaned_when_their_lock_is_free(tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    stage = tmp_path / "cache" / "mix"
    stale = stage / ".tmp-aaaa1111-x1"  # a job killed while building artifact aaaa1111
    live = stage / ".tmp-bbbb2222-y2"  # a job building bbbb2222 right now (holds its lock)
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "part.bin").write_bytes(b"x" * 10)
    fd = os.open(stage / ".bbbb2222.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        art = store.get_or_build("mix", {"k": 1}, lambda out: (out / "data.txt").write_text("ok"))
        assert (art.path / "data.txt").read_text() == "ok" and not art.cached
        assert not stale.exists() and live.exists()
        assert not list(stage.glob(f".tmp-{art.fingerprint}-*"))  # its own temporary folder was renamed
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert clean_stale_tmp(stage) == [live]  # the builder is gone: now it goes too
