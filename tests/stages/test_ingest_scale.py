"""Ingest at scale: a sharded ingest (n=3, one job per shard) assembled later equals the unsharded ingest, caps
included; the streaming JSON reader keeps memory bounded on a large array."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, compose

CAPS = ["mixture.sources.medtrinity.cap=7", "mixture.sources.magpie.cap=5"]  # small enough to bite on the demo


def _ctx(cfg, run_dir: Path):
    from aloevision.artifacts import ArtifactStore
    from aloevision.pipeline import RunContext
    from aloevision.tracking import Tracker

    tracker = Tracker(run_dir, config={}, choices={}, overrides=[], wandb_cfg={"mode": "disabled"}, group="t",
                      job_type="ingest")
    return RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, store=ArtifactStore(cfg.paths.cache_dir))


def _ingest(tmp_path: Path, demo_dir: Path, cache: Path, name: str, extra: list[str]) -> dict:
    from aloevision.stages import ingest

    cfg = compose(["stage=ingest", f"paths.cache_dir={cache}", f"paths.demo_dir={demo_dir}", *CAPS, *extra],
                  root=tmp_path / name)
    return ingest.run(_ctx(cfg, tmp_path / name / "run"))


def test_sharded_then_assembled_equals_unsharded(tmp_path, demo_dir, monkeypatch):
    from aloevision import ingestion

    whole = _ingest(tmp_path, demo_dir, tmp_path / "cache_a", "whole", [])
    shards = [_ingest(tmp_path, demo_dir, tmp_path / "cache_b", f"shard{k}", ["cluster.data_shards=3",
                                                                             f"cluster.data_shard={k}"])
              for k in range(3)]
    assert all(r["shard"] == [k, 3] and not r["artifacts"] for k, r in enumerate(shards))

    def no_source(*a, **kw):
        raise AssertionError("the assembling job re-read a source")

    monkeypatch.setattr("aloevision.sources.read_source", no_source)
    assembled = _ingest(tmp_path, demo_dir, tmp_path / "cache_b", "assemble", ["cluster.data_shards=3"])
    monkeypatch.undo()

    assert set(whole["artifacts"]) == set(assembled["artifacts"]) and len(whole["artifacts"]) >= 8
    capped = 0
    for name, folder in whole["artifacts"].items():
        a, b = Path(folder), Path(assembled["artifacts"][name])
        assert (b / "shards.json").is_file()  # built from the shard artifacts, not directly
        # Same samples, in the same (source) order, byte for byte; same drops and the same report.
        assert (a / "samples.jsonl").read_bytes() == (b / "samples.jsonl").read_bytes(), name
        assert (a / "drops.jsonl").read_bytes() == (b / "drops.jsonl").read_bytes(), name
        ra, rb = json.loads((a / "report.json").read_text()), json.loads((b / "report.json").read_text())
        assert ra == rb and ra["rows_out"] == sum(1 for _ in open(a / "samples.jsonl"))
        capped += ra["drops"].get("source_cap", 0)
        # Each shard did a disjoint part of the rows; together all of them.
        parts = json.loads((b / "shards.json").read_text())
        rows = [p["rows"] for p in parts]
        assert not any(Path(p["path"]).exists() for p in parts)  # the shard artifacts went once assembled
        assert all(r > 0 for r in rows) or ra["rows_in"] < 2 * ingestion.SHARD_BLOCK
        assert sum(rows) == ra["rows_in"]
    assert capped > 0  # the caps were exercised
    rep = json.loads((Path(whole["artifacts"]["medtrinity"]) / "report.json").read_text())
    assert rep["rows_out"] == 7 and rep["drops"]["source_cap"] > 0


def test_sharding_splits_rows_and_keeps_the_global_bottom_k(tmp_path, demo_dir, monkeypatch):
    """Small blocks, so the demo's few hundred rows really spread over the three shards."""
    from aloevision import ingestion
    from aloevision.cleaning import sample_key

    monkeypatch.setattr(ingestion, "SHARD_BLOCK", 4)
    extra = ["cluster.data_shards=3"]
    ids = []
    for k in range(3):
        shard = _ingest(tmp_path, demo_dir, tmp_path / "cache", f"s{k}", [*extra, f"cluster.data_shard={k}"])
        ids.append({json.loads(line)[2] for line in open(Path(shard["parts"]["medtrinity"]) / "samples.idx")})
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # disjoint shares of the rows
    out = _ingest(tmp_path, demo_dir, tmp_path / "cache", "asm", extra)
    folder = Path(out["artifacts"]["medtrinity"])
    parts = json.loads((folder / "shards.json").read_text())
    assert all(p["rows"] for p in parts) and not any(Path(p["path"]).exists() for p in parts)
    kept = [json.loads(l)["id"] for l in open(folder / "samples.jsonl")]
    everything = {json.loads(l)["id"] for l in open(Path(_ingest(
        tmp_path, demo_dir, tmp_path / "cache_nocap", "nocap", ["mixture.sources.medtrinity.cap=null"]
    )["artifacts"]["medtrinity"]) / "samples.jsonl")}
    assert set(kept) == set(sorted(everything, key=lambda i: sample_key(i, 0))[:7])


def test_shard_job_cannot_feed_later_stages(tmp_path, demo_dir):
    from aloevision.config import ConfigError
    from aloevision.ingestion import sample_folders

    with pytest.raises(ConfigError, match="shard 1/2"):
        sample_folders({"ingest": {"shard": [1, 2], "parts": {}, "artifacts": {}}})


def test_streaming_json_array_memory_is_bounded(tmp_path):
    rows = 50_000
    path = tmp_path / "big.json"
    with open(path, "w") as f:  # ~30 MB: json.load would hold ~10x that as Python objects
        f.write("[")
        for i in range(rows):
            rec = {"id": f"r{i}", "image": [f"images/{i % 300}.jpg"], "modality": "CT", "conversations": [
                {"from": "human", "value": "What does this image show? " * 8},
                {"from": "gpt", "value": f"Finding {i}: " + "a lesion in the left lobe. " * 12}]}
            f.write(("," if i else "") + json.dumps(rec))
        f.write("]")
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'src')!r})
        from pathlib import Path
        from aloevision.sources.base import read_file

        def hwm():
            for line in open('/proc/self/status'):
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024

        before = hwm()
        n = sum(1 for r in read_file(Path({str(path)!r})) if r['conversations'][1]['value'])
        print(json.dumps({{'rows': n, 'delta': hwm() - before}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=60).stdout)
    assert out["rows"] == rows
    size = path.stat().st_size
    assert size > 25 * 2**20
    assert out["delta"] < 12 * 2**20, f"peak RSS grew by {out['delta'] / 2**20:.1f} MiB reading a {size >> 20} MiB array"


def test_duplicate_ids_first_kept_sharded_equals_unsharded(tmp_path, monkeypatch):
    """Repeated ids become `duplicate_id` drops at ingest (the first row kept), before the cap, and a sharded +
    capped ingest assembles exactly what the unsharded one keeps and drops."""
    from aloevision import ingestion
    from aloevision.config import SourceConfig

    monkeypatch.setattr(ingestion, "SHARD_BLOCK", 3)
    rows = []
    for i in range(40):
        rid = f"q{i % 25}"  # q0..q14 appear twice (rows i and i + 25)
        rows.append({"id": rid, "conversations": [{"from": "human", "value": f"question {i}"},
                                                  {"from": "gpt", "value": f"answer {i}"}]})
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def source(cap):
        return SourceConfig(name="t", adapter="aloe_text", domain="medical", modality="text",
                            path=str(tmp_path / "src"), cap=cap)

    def unsharded(cap, name):
        out = tmp_path / name
        out.mkdir()
        ingestion.ingest_source(source(cap), 0, out)
        return out

    plain = unsharded(None, "plain")
    kept = [json.loads(l) for l in open(plain / "samples.jsonl")]
    drops = [json.loads(l) for l in open(plain / "drops.jsonl")]
    assert [s["meta"]["file"] for s in kept] == ["rows"] * 25
    assert {s["id"] for s in kept} == {f"t/rows:q{i}" for i in range(25)}
    assert [s["messages"][0]["content"][0]["text"] for s in kept][:15] == [f"question {i}" for i in range(15)]
    assert [d["reason"] for d in drops] == ["duplicate_id"] * 15
    assert json.loads((plain / "report.json").read_text())["drops"] == {"duplicate_id": 15}

    whole = unsharded(10, "whole")
    parts = []
    for k in range(3):
        part = tmp_path / f"part{k}"
        part.mkdir()
        ingestion.build_part(source(10), 0, part, k, 3, 10)
        parts.append(part)
    asm = tmp_path / "asm"
    asm.mkdir()
    ingestion.assemble(parts, 10, asm, "t")
    for f in ("samples.jsonl", "drops.jsonl", "report.json"):
        assert (whole / f).read_bytes() == (asm / f).read_bytes(), f
    rep = json.loads((whole / "report.json").read_text())
    assert rep["rows_out"] == 10 and rep["drops"] == {"duplicate_id": 15, "source_cap": 15}


def test_data_stamp_sees_every_file_at_any_folder_size(tmp_path):
    """The ingest key's stamp covers every file (the old one read the first 5,000): a change to the last file of a
    6,000-file folder, a same-size rewrite (mtime in ns), a new FIFO or a symlink loop all change it, and it ends."""
    import os

    from aloevision.utils.fingerprint import data_stamp

    for i in range(6000):
        sub = tmp_path / f"shard{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"row{i:05d}.json").write_text("{}")
    first = data_stamp(str(tmp_path))
    assert first[1] == 6000 and first == data_stamp(str(tmp_path))
    last = tmp_path / "shard2" / "row05999.json"
    last.write_text("[]")  # same size
    os.utime(last, ns=(10**18, 10**18))
    second = data_stamp(str(tmp_path))
    assert second != first
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path, tmp_path / "loop")
    third = data_stamp(str(tmp_path))
    assert third != second and third[1] == 6001
