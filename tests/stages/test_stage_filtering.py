"""Stages `score` / `filter` through `launch.py` on the demo: the planted incoherent sample is removed for a low
score, the report / histograms / galleries / coverage heatmaps are written and logged, a second job with other
thresholds reads every score from the shared store (zero model calls), `stage=score` scores only its array shard,
and `filter=none` runs neither stage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from aloevision.config import ConfigError
from aloevision.tracking import RUN_RECORD


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_RECORD).read_text())


def _planted_incoherent(demo_dir: Path) -> dict:
    planted = [p for p in json.loads((demo_dir / "PLANTED.json").read_text()) if p["kind"] == "incoherent_qa"]
    assert len(planted) == 1
    return planted[0]


def test_filter_stage_on_the_demo_then_rethreshold_without_rescoring(run_launch, demo_dir, tmp_path):
    planted = _planted_incoherent(Path(demo_dir))
    planted_id = f"{planted['source']}/{planted['record']}"

    run1 = tmp_path / "run1"
    run_launch("stage=filter", f"hydra.run.dir={run1}")
    rec = _record(run1)
    assert rec["status"] == "finished"
    rep = rec["stages"]["filter"]
    score1 = rep["scoring"]
    assert score1["samples"] > 100 and score1["computed"] + score1["cached"] == score1["samples"]
    drops = [json.loads(line) for line in (run1 / "filter" / "drops.jsonl").read_text().splitlines()]
    assert {"id": planted_id, "source": planted["source"], "reason": "low_score"}.items() <= \
        next(d for d in drops if d["id"] == planted_id).items()
    assert rep["excluded"] == len(drops) and rep["report"]["total"]["removed"] == len(drops)
    # the text-only sources have no threshold in filter=demo: not scored, all kept
    assert rep["report"]["per_source"]["magpie"]["removed"] == 0 and "magpie" in score1["not_scored_sources"]

    leak_art = Path(rec["stages"]["leakage"]["artifact"])
    leaked = {json.loads(line)["id"] for line in (leak_art / "excluded.jsonl").read_text().splitlines()}
    dropped = {d["id"] for d in drops}
    leaked_scored = {i for i in leaked - dropped if i.split("/")[0] not in score1["not_scored_sources"]}
    assert len(leaked_scored) >= 240  # the 12 planted CareQA-V items x 20 copies in MedMax

    out = run1 / "filter"
    for name in ("filter_report.md", "filter_report.json", "filter_report.csv"):
        assert (out / name).stat().st_size > 0
    src = planted["source"]
    gallery = (out / "review" / f"{src}_gallery.html").read_text()
    assert planted["record"] in gallery and "DROP: low_score" in gallery  # the drop is shown for review
    assert (out / "review" / f"{src}_hist.png").read_bytes()[:4] == b"\x89PNG"
    for pair in ("MOD_x_MED", "MOD_x_SBP", "MOD_x_GBP"):
        assert (out / "coverage" / f"coverage_{pair}.png").read_bytes()[:4] == b"\x89PNG"
        with open(out / "coverage" / f"coverage_{pair}.csv") as fh:
            counts = sum(int(v) for row in list(csv.reader(fh))[1:] for v in row[1:])
        # heatmaps are over the final pool only: the dropped samples and the leaked ones (the demo's planted
        # evaluation items) are not counted
        assert counts == rep["coverage_samples"] == score1["samples"] - len(drops) - len(leaked_scored)
    # W&B (offline): histograms and heatmaps as images, galleries as HTML media
    media = list((run1 / "wandb").glob("offline-run-*/files/media"))
    assert len(media) == 1
    assert list(media[0].glob("images/filter/hist/*.png")) and list(media[0].glob("images/filter/coverage/*.png"))
    assert list(media[0].glob("html/filter/gallery/*.html"))

    # Another job with a stricter threshold (the filtering ablation's situation): every score comes from the store.
    run2 = tmp_path / "run2"
    run_launch("stage=filter", "filter.per_source.medmax.min_score=5", f"hydra.run.dir={run2}")
    rep2 = _record(run2)["stages"]["filter"]
    score2 = rep2["scoring"]
    assert score2["model_calls_total"] == 0 and score2["computed"] == 0
    assert score2["cached"] == score2["samples"] == score1["samples"]
    assert score2["fingerprint"] == score1["fingerprint"]
    medmax = rep2["report"]["per_source"]["medmax"]
    assert medmax["thresholds"]["min_score"] == 5
    assert medmax["low_score"] > rep["report"]["per_source"]["medmax"]["low_score"]


def test_score_array_task_scores_its_shard_then_filter_scores_the_rest(run_launch, demo_dir, tmp_path, monkeypatch):
    from aloevision.scoring import shard_of

    # a fresh score store (own cache), so what this array task computes is visible
    paths = [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.demo_dir={demo_dir}"]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    run = tmp_path / "shard1"
    run_launch("stage=score", "cluster.data_shards=3", f"hydra.run.dir={run}", *paths, cache=False)
    s = _record(run)["stages"]["score"]
    assert (s["shard"], s["n_shards"]) == (1, 3)
    assert s["computed"] == s["samples"] > 0
    ids = [json.loads(line)["id"] for line in (Path(s["store"]) / "part-00001-of-00003.jsonl").read_text().splitlines()]
    assert len(ids) == s["samples"] and all(shard_of(i, 3) == 1 for i in ids)

    # the filter job (not an array task) completes the store: it scores exactly the other shards' samples
    run = tmp_path / "filter"
    run_launch("stage=filter", "cluster.data_shards=3", f"hydra.run.dir={run}", *paths, cache=False)
    f = _record(run)["stages"]["filter"]["scoring"]
    assert (f["n_shards"], f["cached"]) == (1, s["samples"]) and f["computed"] == f["samples"] - s["samples"] > 0
    assert 0.2 < s["samples"] / f["samples"] < 0.5  # about a third of the work


def test_shard_spec():
    from omegaconf import OmegaConf

    from aloevision.stages.score import shard_spec

    cfg = OmegaConf.create({"cluster": {"data_shards": 4}})
    assert shard_spec(cfg, {}) == (0, 1)  # not an array task: everything
    array_task = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_spec(cfg, array_task) == (2, 4)
    assert shard_spec(OmegaConf.create({"cluster": {"data_shards": 1}}), {"SLURM_ARRAY_TASK_ID": "3"}) == (0, 1)
    with pytest.raises(ConfigError, match="array has 8 tasks"):
        shard_spec(cfg, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"})
    with pytest.raises(ConfigError, match="outside 0..3"):
        shard_spec(cfg, {"SLURM_ARRAY_TASK_ID": "4"})
    assert shard_spec(OmegaConf.create({"cluster": {"data_shards": 4, "data_shard": 3}}), {}) == (3, 4)


def test_filter_none_runs_neither_stage(tmp_path):
    from types import SimpleNamespace

    from conftest import compose

    from aloevision.pipeline import _enabled
    from aloevision.stages import filter as filter_stage
    from aloevision.stages import score as score_stage

    cfg = compose(["filter=none"], root=tmp_path)
    assert not _enabled(cfg, "score") and not _enabled(cfg, "filter")  # `stage=all` skips both
    assert _enabled(compose([], root=tmp_path), "filter")  # the demo default runs them
    # called explicitly (stage=filter filter=none) they keep everything without scoring or reading any data
    ctx = SimpleNamespace(cfg=cfg, results={})
    assert filter_stage.run(ctx)["excluded_ids"] == [] and score_stage.run(ctx) == {"skipped": True}


def test_rules_scorer_reads_lettered_choices():
    from aloevision.schema import image_part, text_part, turn
    from aloevision.scoring.rules import rules_output
    from aloevision.scoring.taxonomy import parse_output

    q = "What imaging modality is shown in the image?\nA. CT\nB. Ultrasound\nC. MRI\nD. X-ray\nAnswer with the letter."

    def score(answer: str):
        msgs = [turn("user", image_part(), text_part(q)), turn("assistant", text_part(answer))]
        return parse_output(rules_output(msgs, 1))

    for answer in ("C", "(C)", "C. MRI"):
        p = score(answer)
        assert p.score == 4 and p.tags["MOD"] == ["MRI"]  # the chosen option, not every option listed
    assert score("F").score == 1  # not one of the options
    assert score("Plants make sugar from light.").score == 1  # the incoherent answer still fails
    where = "In which region is the finding?\nA. upper right\nB. lower left\nAnswer with the letter."
    assert parse_output(rules_output([turn("user", image_part(), text_part(where)),
                                      turn("assistant", text_part("B"))], 1)).score == 4


def test_model_free_scoring_with_the_7b_config_offline_loads_no_model(run_launch, demo_dir, tmp_path, monkeypatch):
    """filter=model_free (rules tags, perplexity off) under model=qwen2vl_7b with the Hub offline: the whole chain up
    to the filter runs, scores come from the rules tagger, and no model is loaded (offline, any load would fail);
    a perplexity threshold with perplexity off is a config error naming it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    paths = [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.demo_dir={demo_dir}"]
    run = tmp_path / "free"
    run_launch("stage=filter", "model=qwen2vl_7b", "filter=model_free", f"hydra.run.dir={run}", *paths, cache=False)
    rec = _record(run)
    assert rec["status"] == "finished"
    s = rec["stages"]["filter"]["scoring"]
    assert s["model_free"] and s["perplexity"] == "off" and s["ppl_model"] == "none" and s["tag_model"] == "rules-v2"
    assert s["model_calls_total"] == 0 and s["computed"] == s["samples"] > 100 and s["ppl_failures"] == {}
    assert not (tmp_path / "cache" / "models").exists()  # not even the tiny model was built
    lines = [json.loads(x) for p in Path(s["store"]).glob("part-*.jsonl") for x in p.read_text().splitlines()]
    assert len(lines) == s["samples"] and all(r["ppl"] is None and r["ppl_failure"] == "ppl_off" for r in lines)
    assert sum(r["score"] is not None for r in lines) == len(lines) and any(r["tags"].get("MOD") for r in lines)
    report = rec["stages"]["filter"]["report"]["total"]
    assert report["removed"] > 0 and report["missing_perplexity"] == 0  # the planted incoherent sample: low_score



def test_model_free_key_is_model_independent_and_perplexity_thresholds_are_refused(tmp_path):
    from conftest import compose

    from aloevision.scoring import open_store
    from aloevision.stages.score import check_perplexity_off

    def store_of(*overrides):
        cfg = compose(["filter=model_free", *overrides], root=tmp_path)
        m = cfg.model
        store, backend = open_store(tmp_path / "scores", cfg.filter.scorer, max_length=int(m.max_length),
                                    min_pixels=int(m.min_pixels), max_pixels=int(m.max_pixels))
        if backend.ppl_model == "none":
            assert backend.perplexity([{}]).pop().failure == "ppl_off" and backend.calls["perplexity"] == 0
        return store.fingerprint

    # every model's dry run shares the model-free store; perplexity on, the run's lengths are part of the key
    assert store_of() == store_of("model=qwen2vl_7b") != store_of("filter.scorer.ppl_model=Qwen/Qwen2-VL-7B-Instruct")
    check_perplexity_off(compose(["filter=model_free", "model=qwen2vl_7b"], root=tmp_path).filter)
    with pytest.raises(ConfigError, match=r"filter\.per_source\.medmax\.max_ppl=80.*filter=model_free"):
        check_perplexity_off(compose(["filter=model_free", "filter.per_source.medmax.max_ppl=80"],
                                     root=tmp_path).filter)
    with pytest.raises(ConfigError, match=r"filter\.per_source\.pubmedvision\.min_ppl=1\.5"):
        check_perplexity_off(compose(["filter=paper", "filter.scorer.backend=rules", "filter.scorer.ppl_model=none"],
                                     root=tmp_path).filter)
    # the stage's pre-flight check: refused before ingest or anything else of the job runs
    from aloevision.pipeline import stage_problems

    bad = compose(["stage=filter", "filter=model_free", "filter.default.max_ppl=50"], root=tmp_path)
    assert any("filter.default.max_ppl=50" in p for p in stage_problems(bad, ["ingest", "score", "filter"]))
