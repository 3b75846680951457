"""Stages `hash` and `leakage` on the demo: the planted exact leak is found at radius 0, the re-encoded one only at
radius 4; the report, gallery and W&B media exist; a second run hashes nothing; a corrupt evaluation image is a
counted drop; an unhashable training image removes its sample; `leakage=off` keeps everything; array shards fill
the content cache so the assembling job hashes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, compose

from aloevision.images import REASONS


def _launch(root: Path, run_dir: Path, cache: Path, demo: Path, *args: str) -> dict:
    env = {**os.environ, "ALOEVISION_ROOT": str(root), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "launch.py"), "stage=leakage", f"hydra.run.dir={run_dir}",
                           f"paths.cache_dir={cache}", f"paths.demo_dir={demo}", "cluster.cpus_per_task=2", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"launch.py {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return _record(run_dir)


def _record(run_dir: Path) -> dict:
    from aloevision.tracking import RUN_RECORD

    return json.loads((run_dir / RUN_RECORD).read_text())


def _planted(demo: Path) -> dict[str, dict]:
    """The two single planted leaks by kind (the verbatim item leaks, kind eval_leak_item, come from `_item_leaks`)."""
    leaks = [p for p in json.loads((demo / "PLANTED.json").read_text()) if "eval_leak" in p["kind"]]
    planted = {p["kind"]: p for p in leaks if p["kind"] != "eval_leak_item"}
    assert set(planted) == {"eval_leak_exact", "eval_leak_reencoded"}
    return planted


def _item_leaks(demo: Path, cache: Path) -> list[str]:
    """Ids of the training samples carrying the planted verbatim copies of CareQA-Vision items (all at distance 0)."""
    members = {p["member"] for p in json.loads((demo / "PLANTED.json").read_text()) if p["kind"] == "eval_leak_item"}
    ids = [json.loads(line)["id"] for f in (cache / "ingest").glob("*/samples.jsonl")
           for line in f.read_text().splitlines()
           if any(str(ref).split("::")[-1] in members for ref in json.loads(line)["images"])]
    assert len(ids) == len(members) >= 12, (len(ids), len(members))
    return ids


def _planted_ids(planted: dict[str, dict], cache: Path) -> dict[str, str]:
    """Planted leak kind -> id of the ingested training sample that carries the planted image."""
    found = {}
    for f in (cache / "ingest").glob("*/samples.jsonl"):
        for line in f.read_text().splitlines():
            s = json.loads(line)
            for kind, p in planted.items():
                if any(str(ref).endswith("::" + p["member"]) for ref in s["images"]):
                    found[kind] = s["id"]
    assert set(found) == set(planted), found
    return found


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, demo_dir):
    """Two jobs on one fresh cache: radius 0 (hashes every image), then radius 4 (must hash nothing)."""
    root = tmp_path_factory.mktemp("leak")
    cache = root / "cache"
    r0 = _launch(root, root / "r0", cache, demo_dir)
    r4 = _launch(root, root / "r4", cache, demo_dir, "leakage.radius=4")
    planted = _planted(demo_dir)
    return {"root": root, "cache": cache, "r0": r0, "r4": r4, "planted": planted, "ids": _planted_ids(planted, cache),
            "items": _item_leaks(demo_dir, cache)}


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "leakage" / "leakage_report.json").read_text())


def test_radius0_removes_exactly_the_exact_copy(demo_runs):
    rep = _report(demo_runs["root"] / "r0")
    items = demo_runs["items"]
    assert rep["leaked_ids"] == sorted([demo_runs["ids"]["eval_leak_exact"], *items])
    assert rep["unhashable_ids"] == [] and rep["radius"] == 0
    assert {p["distance"] for p in rep["all_pairs"]} == {0}
    stage = demo_runs["r0"]["stages"]["leakage"]
    assert stage["leaked_samples"] == 1 + len(items) and stage["train_samples"] > 100
    assert sorted((g["train_source"], g["eval_set"], g["samples"]) for g in stage["by_source_and_set"]) == [
        ("medmax", "careqa_vision_mcq", len(items)), ("medmax", "demo_open", 1)]


def test_radius4_removes_both_planted_leaks(demo_runs):
    rep = _report(demo_runs["root"] / "r4")
    ids = demo_runs["ids"]
    assert rep["leaked_ids"] == sorted([ids["eval_leak_exact"], ids["eval_leak_reencoded"], *demo_runs["items"]])
    dist = {p["train_id"]: p["distance"] for p in rep["all_pairs"]}
    assert dist[ids["eval_leak_exact"]] == 0 and 0 < dist[ids["eval_leak_reencoded"]] <= 4
    re_pair = next(p for p in rep["all_pairs"] if p["train_id"] == ids["eval_leak_reencoded"])
    planted = demo_runs["planted"]["eval_leak_reencoded"]
    assert (re_pair["eval_set"], re_pair["eval_id"]) == (planted["eval_benchmark"], planted["eval_id"])


def test_report_gallery_and_wandb_media(demo_runs):
    out = demo_runs["root"] / "r4" / "leakage"
    for name in ("leakage_report.md", "leakage_report.json", "leakage_gallery.png", "leakage_gallery.html",
                 "hash_report.md"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "leakage_report.md").read_text()
    assert "| medmax | demo_open |" in md and "| medtrinity | demo_mcq |" in md
    html = (out / "leakage_gallery.html").read_text()
    # one row per matched pair (train + eval thumbnails), at most the gallery's 64 (the planted item copies: 240)
    assert html.count("<img") == 2 * min(64, _report(demo_runs["root"] / "r4")["pairs"])
    from PIL import Image

    assert Image.open(out / "leakage_gallery.png").size[0] > 300
    media = list((demo_runs["root"] / "r4").glob("wandb/offline-run-*/files/media/images/leakage/gallery_*.png"))
    tables = list((demo_runs["root"] / "r4").glob("wandb/offline-run-*/files/media/table/leakage/pairs_*.table.json"))
    assert media and tables
    assert len(json.loads(tables[0].read_text())["data"]) == _report(demo_runs["root"] / "r4")["pairs"]


def test_second_run_hashes_nothing(demo_runs):
    first = demo_runs["r0"]["stages"]["hash"]["totals"]
    second = demo_runs["r4"]["stages"]["hash"]["totals"]
    assert first["computed"] > 300 and first["train"]["images"] > 300 and first["eval"]["images"] > 100
    assert second["computed"] == 0
    assert second["train"]["from_artifact"] + second["eval"]["from_artifact"] == \
        first["train"]["images"] + first["eval"]["images"]
    assert demo_runs["r4"]["metrics"]["leakage/hashed_now"] == 0


def test_corrupt_eval_image_is_a_counted_drop(demo_runs, demo_dir):
    """A broken image in an evaluation set: counted by reason, the stage finishes, the leak is still found; only
    the changed set is hashed again, and its unchanged images come from the content cache."""
    root = demo_runs["root"]
    slake = root / "slake_copy"
    shutil.copytree(demo_dir / "eval" / "slake", slake)
    broken = slake / "imgs" / "xmlab0" / "source.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    (slake / "imgs" / "xmlab1" / "source.jpg").write_bytes(b"not an image at all")
    rec = _launch(root, root / "corrupt", demo_runs["cache"], demo_dir, f"eval.benchmarks.demo_open.path={slake}")
    part = rec["stages"]["hash"]["eval"]["demo_open"]
    assert part["errors"] >= 2 and set(part["errors_by_reason"]) <= set(REASONS), part
    assert part["computed"] == 0 and part["from_cache"] == part["unique"] - 2  # the other images: cache hits
    rep = _report(root / "corrupt")
    assert rep["unhashable_eval"]["demo_open"] == part["errors_by_reason"]
    assert rep["leaked_ids"] == sorted([demo_runs["ids"]["eval_leak_exact"], *demo_runs["items"]])
    assert "Unhashable evaluation images" in (root / "corrupt" / "leakage" / "leakage_report.md").read_text()


# ---- in-process: cheap checks of the switch, of unhashable training images and of array shards ------------------
def _ctx(cfg, run_dir: Path):
    from aloevision.artifacts import ArtifactStore
    from aloevision.pipeline import RunContext
    from aloevision.tracking import Tracker

    tracker = Tracker(run_dir, config={}, choices={}, overrides=[], wandb_cfg={"mode": "disabled"}, group="t",
                      job_type=str(cfg.stage))
    return RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, store=ArtifactStore(cfg.paths.cache_dir))


def test_leakage_off_keeps_samples(tmp_path):
    from aloevision.pipeline import _enabled
    from aloevision.stages.leakage import run

    assert not _enabled(compose(["leakage=off"], root=tmp_path), "leakage")  # stage=all skips it
    on = compose(["leakage=phash"], root=tmp_path)
    assert _enabled(on, "leakage") and on.leakage.radius == 0 and "demo_mcq" in on.leakage.eval_sets
    leak = compose(["leakage=off", "stage=leakage"], root=tmp_path)
    assert run(_ctx(leak, tmp_path / "run")) == {"skipped": True, "excluded_ids": []}


def test_unhashable_training_image_removes_its_sample(tmp_path, demo_dir):
    """A training image that cannot be decoded cannot be cleared of leakage: its sample is removed and counted. The
    stage runs in-process on a fake ingest result handed to the graph (hash resolves from it)."""
    from aloevision.pipeline import execute

    cfg = compose([f"paths.demo_dir={demo_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "stage=leakage",
                   "leakage.eval_sets=[careqa_vision_mcq]"], root=tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    eval_img = demo_dir / "eval" / "careqa_vision" / "images" / "careqa_v_0000.jpg"
    (src / "copy.jpg").write_bytes(eval_img.read_bytes())
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    def sample(sid, imgs):
        return json.dumps({"id": sid, "source": "fake", "domain": "medical", "modality": "multimodal",
                           "messages": [], "images": imgs})
    (src / "samples.jsonl").write_text("\n".join([
        sample("fake/leak", [str(src / "copy.jpg")]), sample("fake/bad", [str(src / "bad.png")]),
        sample("fake/missing", [str(src / "nope.jpg")]), sample("fake/text", [])]) + "\n")
    ctx = _ctx(cfg, tmp_path / "run")
    ctx.results["ingest"] = {"artifacts": {"fake": str(src)}}
    res = execute(ctx)["leakage"]
    assert res["leaked_ids"] == ["fake/leak"]
    assert res["unhashable_ids"] == ["fake/bad", "fake/missing"]
    assert sorted(res["excluded_ids"]) == ["fake/bad", "fake/leak", "fake/missing"]
    assert set(res["unhashable_train"]["fake"]) <= set(REASONS) and sum(res["unhashable_train"]["fake"].values()) == 2
    assert res["by_source_and_set"][0]["eval_set"] == "careqa_vision_mcq"


def test_array_shards_fill_the_cache(tmp_path, demo_dir, monkeypatch):
    """Two array tasks of `stage=hash` split the images; the assembling job then decodes nothing."""
    from aloevision.config import ConfigError
    from aloevision.pipeline import execute
    from aloevision.stages.hash import shard_spec

    base = [f"paths.demo_dir={demo_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
            "leakage.eval_sets=[demo_mcq,careqa_vision_open]", "cluster.data_shards=2"]
    with pytest.raises(ConfigError, match="array"):
        shard_spec(compose(base, root=tmp_path), {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"})
    done = 0
    for k in (0, 1):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(k))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        cfg = compose(base + ["stage=hash"], root=tmp_path)
        s = execute(_ctx(cfg, tmp_path / f"hash{k}"))["hash"]
        assert (s["shard"], s["n_shards"]) == (k, 2) and 0 < s["totals"]["computed"]
        done += s["totals"]["computed"]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    cfg = compose(base + ["stage=leakage"], root=tmp_path)
    res = execute(_ctx(cfg, tmp_path / "assemble"))["leakage"]
    t = res["hashing"]
    # Every image was decoded by one of the tasks; a file several samples share counts as a hit once per part.
    assert t["computed"] == 0 and t["train"]["from_cache"] + t["eval"]["from_cache"] >= done
    # ... and by one task only: the shards split distinct images, so together they decoded exactly what one
    # unsharded job decodes (on a fresh content cache)
    whole = compose([*base, f"paths.cache_dir={tmp_path / 'cache_whole'}", "stage=hash", "cluster.data_shards=1"],
                    root=tmp_path)
    # (identical bytes under several references - the demo's planted item copies - are decoded by every job that holds
    # one; across shards the content cache serves the later shard, so the shards decode at most that many fewer)
    whole_computed = execute(_ctx(whole, tmp_path / "whole"))["hash"]["totals"]["computed"]
    copies = sum(p["kind"] == "eval_leak_item" for p in json.loads((demo_dir / "PLANTED.json").read_text()))
    assert done <= whole_computed <= done + copies, (done, whole_computed, copies)


def test_hash_shards_split_distinct_images(tmp_path, demo_dir, monkeypatch):
    """Two training files that share every image (PubMedVision's layout): the array's tasks together decode each
    image once, not once per sample."""
    from PIL import Image

    from aloevision.pipeline import execute

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(12):
        Image.new("RGB", (64, 64), (20 * i, 255 - 20 * i, 7 * i)).save(imgs / f"{i}.png")
    folders = {}
    for part in ("a", "b"):  # same images, different samples
        folders[part] = tmp_path / part
        folders[part].mkdir()
        (folders[part] / "samples.jsonl").write_text("".join(json.dumps(
            {"id": f"{part}/{i}", "source": part, "domain": "medical", "modality": "multimodal", "messages": [],
             "images": [str(imgs / f"{i}.png")]}) + "\n" for i in range(12)))
    base = [f"paths.demo_dir={demo_dir}", "leakage.eval_sets=[]", "cluster.data_shards=2", "stage=hash"]
    computed = 0
    for k in (0, 1):  # each task with its own content cache, as if both ran at once: no task sees the other's hashes
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(k))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        ctx = _ctx(compose([*base, f"paths.cache_dir={tmp_path / f'cache{k}'}"], root=tmp_path), tmp_path / f"hash{k}")
        ctx.results["ingest"] = {"artifacts": {p: str(f) for p, f in folders.items()}}
        computed += execute(ctx)["hash"]["totals"]["computed"]
    assert computed == 12  # by sample id, the two tasks would have decoded up to 24
