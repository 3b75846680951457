"""The content-addressed image store and stage `images`: each distinct image stored once (across references,
sources, writers and runs), corrupt or missing entries fail with a message naming the key and the fix, and a sharded
`images` (by image) assembled later equals the unsharded one."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from conftest import compose


def test_store_keeps_each_image_once_and_checks_every_read(tmp_path):
    from aloevision.image_store import ImageStore, ImageStoreError, image_key

    store = ImageStore(tmp_path / "store")
    blobs = [os.urandom(700 + i) for i in range(6)]
    with store.writer(max_pack_bytes=2000) as w:  # small packs: the writer rolls over to new files
        keys = [w.put(b) for b in blobs + blobs[:2]]
    assert keys[6:] == keys[:2] and w.written == 6 and w.present == 2 and len(w.packs) == 3
    # A second writer (another job of a sweep) finds them and writes nothing; a new image goes to its own pack.
    other = ImageStore(tmp_path / "store")
    with other.writer() as w2:
        assert [w2.put(b) for b in blobs] == keys[:6] and w2.written == 0
        extra = w2.put(b"new image bytes")
    assert len(ImageStore(tmp_path / "store")) == ImageStore(tmp_path / "store").distinct() == 7
    assert store.stored_bytes() == sum(map(len, blobs)) + len(b"new image bytes")
    assert not list((tmp_path / "store").glob(".tmp-*"))  # every pack published
    # A killed writer's unpublished pack is removed by the next writer; a live writer's is left alone.
    live = store.writer()
    live.put(b"being written")
    dead = tmp_path / "store" / ".tmp-pack-999-dead-0.bin"
    dead.write_bytes(b"half a pack")
    store.writer().close()
    assert not dead.exists() and live._tmp.exists()
    live.close()
    # Reads: memory-mapped, survive a pickle (DataLoader workers), checked against the key.
    clone = pickle.loads(pickle.dumps(store))
    assert all(clone.get(k) == b for k, b in zip(keys, blobs)) and clone.get(extra) == b"new image bytes"
    assert image_key(blobs[0]) == keys[0]

    with pytest.raises(ImageStoreError, match=r"not in the image store .*stage=images"):
        store.get("0" * 32)
    with pytest.raises(ImageStoreError, match="not an image-store key"):
        store.get("/some/path.jpg")
    # One flipped byte in a pack: the read fails naming the key, its pack and how to rebuild.
    idx = store._ensure()
    pos = int(store._find(idx["key"][:1])[0])
    pack = Path(store._packs[int(store._pack_of[pos])])
    raw = bytearray(pack.read_bytes())
    raw[int(idx["offset"][pos])] ^= 0xFF
    pack.write_bytes(bytes(raw))
    bad = ImageStore(tmp_path / "store")
    victim = idx["key"][0].ljust(16, b"\0").hex()
    with pytest.raises(ImageStoreError, match=f"image {victim} .* is corrupt.*stage=images"):
        bad.get(victim)
    # A deleted pack: a clear error too, not a crash deep in a DataLoader.
    pack.unlink()
    with pytest.raises(ImageStoreError, match=r"cannot be read.*stage=images"):
        ImageStore(tmp_path / "store").get(victim)


def _ctx(cfg, run_dir: Path):
    from aloevision.artifacts import ArtifactStore
    from aloevision.pipeline import RunContext
    from aloevision.tracking import Tracker

    tracker = Tracker(run_dir, config={}, choices={}, overrides=[], wandb_cfg={"mode": "disabled"}, group="t",
                      job_type=str(cfg.stage))
    return RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, store=ArtifactStore(cfg.paths.cache_dir))


def _folders(tmp_path: Path) -> tuple[dict[str, str], int, int]:
    """Two sample folders (as ingest writes them) whose samples share images: by reference (the same path in
    several samples, in both folders) and by content (the same bytes under another path). Returns the folders, the
    number of distinct images and their bytes."""
    from PIL import Image

    img = tmp_path / "images"
    img.mkdir()
    paths = []
    for i in range(5):
        p = img / f"im{i}.png"
        Image.new("RGB", (32 + i, 32), (40 * i, 10, 200)).save(p)
        paths.append(str(p))
    copy = img / "copy_of_im0.png"
    copy.write_bytes(Path(paths[0]).read_bytes())
    distinct_bytes = sum(Path(p).stat().st_size for p in paths)

    def sample(sid, refs):
        content = [{"type": "image"} for _ in refs] + [{"type": "text", "text": "what is shown?"}]
        return {"id": sid, "source": "s", "category": "medical_multimodal", "domain": "medical", "modality": "multimodal",
                "messages": [{"role": "user", "content": content},
                             {"role": "assistant", "content": [{"type": "text", "text": "a picture"}]}],
                "images": refs}

    a = [sample(f"a{i}", [paths[i % 4]]) for i in range(8)] + [sample("a_two", [paths[1], paths[2]]),
                                                               sample("a_text", [])]
    b = [sample("b0", [paths[0]]), sample("b1", [str(copy)]), sample("b2", [paths[4], paths[3]])]
    folders = {}
    for name, rows in (("a", a), ("b", b)):
        d = tmp_path / "ingest" / f"fp_{name}"
        d.mkdir(parents=True)
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        folders[name] = str(d)
    return folders, 5, distinct_bytes


def _run_images(tmp_path, folders, cache, name, extra=()):
    from aloevision.stages import images

    cfg = compose(["stage=images", f"paths.cache_dir={cache}", *extra], root=tmp_path / name)
    ctx = _ctx(cfg, tmp_path / name / "run")
    ctx.results["ingest"] = {"artifacts": folders}
    return images.run(ctx)


def test_images_stage_stores_once_and_sharded_equals_unsharded(tmp_path, monkeypatch):
    from aloevision import images as image_io
    from aloevision.image_store import ImageStore
    from aloevision.mixture import iter_image_keys

    folders, n_distinct, distinct_bytes = _folders(tmp_path)
    reads: list[str] = []
    real_read = image_io.read_image_bytes

    def counting(ref):
        reads.append(ref)
        return real_read(ref)

    monkeypatch.setattr(image_io, "read_image_bytes", counting)
    whole = _run_images(tmp_path, folders, tmp_path / "cache_a", "whole")
    store = ImageStore(whole["store"])
    # 6 distinct references (one a byte copy of another), 5 distinct images: each stored once.
    assert len(store) == store.distinct() == n_distinct and store.stored_bytes() == distinct_bytes
    assert sorted(set(reads)) == sorted(reads) and len(reads) == 6  # each reference read once, across folders too
    keys = {n: list(iter_image_keys(d)) for n, d in whole["artifacts"].items()}
    assert [r["id"] for r in keys["a"]][-2:] == ["a_two", "a_text"] and keys["a"][-1]["keys"] == []
    assert keys["b"][0]["keys"] == keys["b"][1]["keys"] == keys["a"][0]["keys"]  # same bytes, same key
    # b: im0 and im3 read for a already, the copy of im0 found in the store, im4 new
    assert whole["reports"]["b"]["already_stored"] == 1 and whole["reports"]["b"]["written"] == 1
    # A second run (another mixture, another sweep job) reuses everything and writes nothing.
    reads.clear()
    again = _run_images(tmp_path, folders, tmp_path / "cache_a", "again")
    assert not reads and all(r["cached"] for r in again["reports"].values()) and len(ImageStore(again["store"])) == 5
    # A store that lost its packs is noticed: the keys artifact is rebuilt and the images stored again.
    for p in Path(whole["store"]).glob("pack-*"):
        p.unlink()
    rebuilt = _run_images(tmp_path, folders, tmp_path / "cache_a", "rebuilt")
    assert len(ImageStore(rebuilt["store"])) == 5 and reads

    # Sharded by image (3 array tasks), then assembled by a job without a shard index: equal, no image read twice.
    reads.clear()
    shards = [_run_images(tmp_path, folders, tmp_path / "cache_b", f"shard{k}",
                          ["cluster.data_shards=3", f"cluster.data_shard={k}"]) for k in range(3)]
    assert all(s["shard"] == [k, 3] and not s["artifacts"] for k, s in enumerate(shards))
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 6
    reads.clear()
    assembled = _run_images(tmp_path, folders, tmp_path / "cache_b", "assemble", ["cluster.data_shards=3"])
    assert not reads  # the assembly reads no image
    for n in folders:
        a, b = Path(whole["artifacts"][n]), Path(assembled["artifacts"][n])
        assert (a / "keys.jsonl").read_bytes() == (b / "keys.jsonl").read_bytes(), n
        assert (b / "shards.json").is_file()
    assert not list((tmp_path / "cache_b" / "image_keys_shard").glob("*/_SUCCESS"))  # shard artifacts removed
    sb = ImageStore(assembled["store"])
    assert len(sb) == sb.distinct() == 5 and sb.stored_bytes() == distinct_bytes


def test_mix_shards_assemble_to_the_unsharded_mixture(tmp_path):
    """The mix stage's row writing, sharded by sample id (3 parts) and assembled, gives the unsharded row files byte
    for byte; the rows name images by key and interleave the two sources."""
    import pyarrow as pa

    from aloevision.stages import mix

    folders, _, _ = _folders(tmp_path)
    keys = _run_images(tmp_path, folders, tmp_path / "cache", "images")["artifacts"]
    tokens = {}
    for name, folder in folders.items():
        t = tmp_path / "tokens" / name
        t.mkdir(parents=True)
        with open(t / "stats.jsonl", "w") as f:
            for line in open(Path(folder) / "samples.jsonl"):
                sid = json.loads(line)["id"]
                f.write(json.dumps({"id": sid, "source": "s", "loss": 7} if sid != "a3" else
                                   {"id": sid, "source": "s", "drop": "too_many_tokens"}) + "\n")
        tokens[name] = str(t)
    plan = {"sources": [{"name": "s", "label": "s", "category": "medical_multimodal", "fraction": 1.0, "samples": 11,
                         "loss_tokens": 77, "requested_share": None}],
            "categories": [{"category": "medical_multimodal", "samples": 11, "loss_tokens": 77, "requested_share": None}],
            "samples": 12, "loss_tokens": 77}
    mix.ROWS_PER_FILE, old = 5, mix.ROWS_PER_FILE  # 3 files
    try:
        whole = tmp_path / "whole"
        whole.mkdir()
        mix._build(folders, tokens, keys, {"a5"}, plan, 0, "store", whole)
        parts = []
        for k in range(3):
            p = tmp_path / f"part{k}"
            p.mkdir()
            mix._write_part(folders, tokens, keys, {"a5"}, plan, 0, p, (k, 3))
            parts.append(p)
        assembled = tmp_path / "assembled"
        assembled.mkdir()
        mix._assemble(parts, plan, "store", assembled)
    finally:
        mix.ROWS_PER_FILE = old
    files = sorted((whole / "data").iterdir())
    assert [f.name for f in files] == [f.name for f in sorted((assembled / "data").iterdir())] and len(files) == 3
    for f in files:
        assert f.read_bytes() == (assembled / "data" / f.name).read_bytes(), f.name
    assert json.loads((whole / "composition.json").read_text()) == json.loads(
        (assembled / "composition.json").read_text())
    rows = [r for f in files for r in pa.ipc.open_stream(pa.memory_map(str(f))).read_all().to_pylist()]
    # 13 samples, a3 dropped by tokens, a5 excluded upstream: 11 rows, keys only, sources interleaved.
    assert sorted(r["id"] for r in rows) == sorted({"a0", "a1", "a2", "a4", "a6", "a7", "a_two", "a_text", "b0", "b1",
                                                    "b2"})
    assert all(len(k) == 32 for r in rows for k in r["images"])
    assert [r["id"][0] for r in rows] != sorted(r["id"][0] for r in rows)
