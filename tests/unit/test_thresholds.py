"""Per-source thresholds: inheritance from the default, each drop reason, the report, and the demo filter removing
the demo's planted incoherent sample."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aloevision.config import FilterConfig, ScorerConfig, ThresholdConfig
from aloevision.schema import Sample, text_part, turn
from aloevision.scoring.store import ScoreRecord
from aloevision.scoring.thresholds import REASONS, apply_thresholds, thresholds_for

REPO = Path(__file__).resolve().parents[2]


def _s(i: int, source: str) -> Sample:
    return Sample(id=f"{source}/{i}", source=source, domain="medical", modality="multimodal",
                  messages=[turn("user", text_part("q")), turn("assistant", text_part("a"))])


def _r(s: Sample, score=None, ppl=None, failure=None) -> ScoreRecord:
    return ScoreRecord(id=s.id, source=s.source, score=score, ppl=ppl, parse_failure=failure,
                       ppl_failure=None if ppl is not None else "no_loss_tokens")


@pytest.fixture
def cfg():
    return FilterConfig(
        name="t",
        default=ThresholdConfig(min_score=3, min_ppl=2.0, max_ppl=50.0),
        per_source={"loose": ThresholdConfig(min_score=1), "ppl_only": ThresholdConfig(min_score=0, max_ppl=10.0),
                    "off": ThresholdConfig(min_score=0, min_ppl=0, max_ppl=float("inf"))},
    )


def test_thresholds_inherit_the_default(cfg):
    assert thresholds_for(cfg, "other").to_dict() == {"min_score": 3, "min_ppl": 2.0, "max_ppl": 50.0}
    assert thresholds_for(cfg, "loose").to_dict() == {"min_score": 1, "min_ppl": 2.0, "max_ppl": 50.0}
    assert thresholds_for(cfg, "ppl_only").to_dict() == {"min_score": 0, "min_ppl": 2.0, "max_ppl": 10.0}


def test_each_reason_and_per_source_application(cfg):
    a = [_s(i, "strict") for i in range(7)]
    b = [_s(i, "loose") for i in range(3)]
    c = [_s(i, "ppl_only") for i in range(2)]
    scores = {r.id: r for r in [
        _r(a[0], 4, 10.0),                         # kept
        _r(a[1], 2, 10.0),                         # low_score
        _r(a[2], 5, 1.1),                          # low_perplexity
        _r(a[3], 5, 99.0),                         # high_perplexity
        _r(a[4], None, 10.0, "missing_sq"),        # parse_failure
        _r(a[5], 4, None),                         # missing_perplexity
        # a[6] has no record                       # not_scored
        _r(b[0], 2, 10.0), _r(b[1], 1, 10.0), _r(b[2], 1, 60.0),  # kept, kept, high_perplexity
        _r(c[0], None, 5.0, "empty_output"),       # kept: a parse failure with min_score 0 still counts as no score
        _r(c[1], 5, 11.0),                         # high_perplexity (this source's own max)
    ]}
    kept, drops, report = apply_thresholds(a + b + c, scores, cfg)
    reasons = {d.id: d.reason for d in drops}
    assert reasons == {
        "strict/1": "low_score", "strict/2": "low_perplexity", "strict/3": "high_perplexity",
        "strict/4": "parse_failure", "strict/5": "missing_perplexity", "strict/6": "not_scored",
        "loose/2": "high_perplexity", "ppl_only/0": "parse_failure", "ppl_only/1": "high_perplexity",
    }
    assert [s.id for s in kept] == ["strict/0", "loose/0", "loose/1"]
    assert "missing_sq" in next(d.detail for d in drops if d.id == "strict/4")
    rep = report.to_dict()
    assert rep["per_source"]["strict"]["total"] == 7 and rep["per_source"]["strict"]["kept"] == 1
    assert rep["per_source"]["strict"]["removed"] == 6
    assert all(rep["per_source"]["strict"][r] == 1 for r in REASONS)
    assert rep["per_source"]["loose"]["thresholds"]["min_score"] == 1
    assert rep["total"] == {"total": 12, "kept": 3, "removed": 9, "not_scored": 1, "parse_failure": 2,
                            "low_score": 1, "missing_perplexity": 1, "low_perplexity": 1, "high_perplexity": 3}


def test_switched_off_source_and_disabled_filter(cfg):
    s = [_s(0, "off"), _s(1, "off")]
    scores = {s[0].id: _r(s[0], 1, 1e6)}
    kept, drops, _ = apply_thresholds(s, scores, cfg)
    # min_score 0 still needs a score record: the unscored one is dropped, never silently kept
    assert [x.id for x in kept] == ["off/0"] and [d.reason for d in drops] == ["not_scored"]
    disabled = FilterConfig(name="none", enabled=False, default=ThresholdConfig(min_score=5))
    kept, drops, report = apply_thresholds(s, {}, disabled)
    assert len(kept) == 2 and not drops and report.totals()["kept"] == 2


def test_source_without_thresholds_keeps_unscored_samples():
    paper = _filter_cfg("paper")
    text = [_s(i, "aloe_text") for i in range(3)]
    kept, drops, _ = apply_thresholds(text, {}, paper)
    assert len(kept) == 3 and not drops
    assert thresholds_for(paper, "pubmedvision").min_score == 3


def test_report_files(cfg, tmp_path):
    s = [_s(0, "strict"), _s(1, "strict")]
    _, _, report = apply_thresholds(s, {s[0].id: _r(s[0], 4, 10.0)}, cfg)
    paths = report.write(tmp_path)
    assert json.loads(paths["json"].read_text())["total"]["not_scored"] == 1
    assert paths["csv"].read_text().splitlines()[0].startswith("source,total,kept,removed,not_scored")


def _filter_cfg(name: str):
    # the YAML's `defaults` list needs Hydra; the rest merges onto the structured config as Hydra would
    raw = OmegaConf.load(REPO / f"conf/filter/{name}.yaml")
    raw.pop("defaults")
    return OmegaConf.merge(OmegaConf.structured(FilterConfig), raw)


def test_demo_filter_removes_the_planted_incoherent_sample(demo_dir, tiny_path, tmp_path):
    from aloevision.schema import Drop
    from aloevision.scoring.score import open_store, score_samples
    from aloevision.sources import read_source

    planted = [p for p in json.loads((Path(demo_dir) / "PLANTED.json").read_text()) if p["kind"] == "incoherent_qa"]
    assert len(planted) == 1
    source = planted[0]["source"]
    from conftest import compose

    src_cfg = compose([f"paths.demo_dir={demo_dir}"], root=tmp_path).mixture.sources[source]
    samples = [s for s in read_source(src_cfg) if not isinstance(s, Drop)]
    target = [s.id for s in samples if s.id.endswith(planted[0]["record"])]
    assert len(target) == 1

    fcfg = _filter_cfg("demo")
    assert fcfg.scorer.backend == "rules"
    store, backend = open_store(tmp_path / "scores", fcfg.scorer, default_model=tiny_path, max_length=1024)
    scores = dict(score_samples(samples, fcfg.scorer, store, backend=backend))
    kept, drops, report = apply_thresholds(samples, scores, fcfg)
    assert [d.id for d in drops if d.reason == "low_score"] == target
    assert len(kept) == len(samples) - len(drops)
    # raw (uncleaned) rows include the planted corrupt image: recorded as image_error, dropped as parse_failure
    broken = {r.id for r in scores.values() if r.ppl is None}
    assert broken and all(scores[i].ppl_failure == "image_error" for i in broken)
    assert {d.id for d in drops if d.reason == "parse_failure"} == broken
    # ... and not cached: an unreadable file says nothing about the sample, so the next run scores it again
    store.reload()
    assert all(store.get(i) is None for i in broken) and store.get(target[0]) is not None
    assert all(r.ppl > 1 for r in scores.values() if r.id not in broken)
    # the paper's filter, reusing nothing from the demo, would have needed the 72B scorer: only the config differs
    assert _filter_cfg("paper").scorer.tag_model == "Qwen/Qwen2.5-VL-72B-Instruct"
    assert ScorerConfig().backend == "transformers"
