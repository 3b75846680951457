"""Stage `tokens` as a job array: two shard jobs, then a job without a shard index that assembles them; the
assembled artifacts are byte-identical to an unsharded count, and the shard artifacts are gone."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import compose

FILES = ("stats.jsonl", "drops.jsonl", "report.json", "source_stats.json")


def _ctx(cfg, run_dir: Path, results: dict):
    from aloevision.artifacts import ArtifactStore
    from aloevision.pipeline import RunContext
    from aloevision.tracking import Tracker

    tracker = Tracker(run_dir, config={}, choices={}, overrides=[], wandb_cfg={"mode": "disabled"}, group="t",
                      job_type="tokens")
    return RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, store=ArtifactStore(cfg.paths.cache_dir),
                      results=results)


def _run(stage: str, tmp_path: Path, demo_dir: Path, cache: Path, name: str, extra: list[str], results=None):
    import importlib

    # max_length 150 (tokens only): some demo samples are too long, so drops are sharded and assembled too
    short = ["model.max_length=150"] if stage == "tokens" else []
    cfg = compose([f"stage={stage}", f"paths.cache_dir={cache}", f"paths.demo_dir={demo_dir}", *short, *extra],
                  root=tmp_path / name)
    return importlib.import_module(f"aloevision.stages.{stage}").run(_ctx(cfg, tmp_path / name / "run", results or {}))


def test_sharded_tokens_assembled_equal_unsharded(tmp_path, demo_dir, monkeypatch):
    from aloevision import token_stats

    monkeypatch.setattr(token_stats, "TOKENS_BLOCK", 7)  # small blocks: the demo's sources spread over both shards
    ingest = {"ingest": _run("ingest", tmp_path, demo_dir, tmp_path / "cache_a", "ingest", [])}
    whole = _run("tokens", tmp_path, demo_dir, tmp_path / "cache_a", "whole", [], ingest)

    shards = [_run("tokens", tmp_path, demo_dir, tmp_path / "cache_b", f"s{k}",
                   ["cluster.data_shards=2", f"cluster.data_shard={k}"], ingest) for k in range(2)]
    assert all(s["shard"] == [k, 2] and not s["artifacts"] for k, s in enumerate(shards))
    for key in shards[0]["parts"]:
        a, b = (json.loads((Path(s["parts"][key]) / "part.json").read_text()) for s in shards)
        assert a["lines"] == b["lines"]
        n = [sum(1 for _ in open(Path(s["parts"][key]) / "stats.jsonl")) for s in shards]
        assert sum(n) == a["lines"] and (all(n) or a["lines"] <= 7)  # disjoint shares covering every sample

    def no_count(*a, **kw):
        raise AssertionError("the assembling job counted tokens")

    monkeypatch.setattr(token_stats, "count_source", no_count)
    monkeypatch.setattr(token_stats, "count_part", no_count)
    assembled = _run("tokens", tmp_path, demo_dir, tmp_path / "cache_b", "asm", ["cluster.data_shards=2"], ingest)
    monkeypatch.undo()

    assert set(whole["artifacts"]) == set(assembled["artifacts"]) and len(whole["artifacts"]) >= 8
    dropped = 0
    for key, folder in whole["artifacts"].items():
        a, b = Path(folder), Path(assembled["artifacts"][key])
        assert a.name == b.name  # the same artifact key: a later job cannot tell them apart
        for f in FILES:
            assert (a / f).read_bytes() == (b / f).read_bytes(), (key, f)
        dropped += sum(json.loads((a / "report.json").read_text())["drops"].values())
    assert dropped > 0
    assert whole["sources"] == assembled["sources"]
    assert assembled["counted"] == [] and sorted(whole["counted"]) == sorted(whole["artifacts"])
    record = json.loads((tmp_path / "asm" / "run" / "run_record.json").read_text())
    assert record["stages"]["tokens"]["counted"] == []  # what the README recipe's test reads from the mix job
    assert all(sorted(s["counted"]) == sorted(s["parts"]) for s in shards)
    assert not any(Path(p).exists() for s in shards for p in s["parts"].values())  # shards removed once assembled
    assert not list((tmp_path / "cache_b" / "tokens_shard").glob("*/_SUCCESS"))
