"""The score store's columnar index gives exactly what the old in-memory dict of records gave: the same records
(latest line per id across parts, torn lines counted and skipped, any shard layout), this process's writes visible,
key collisions resolved exactly; and decisions, review selections and coverage counts computed from its columns equal
a straightforward computation over the full records."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from scoring_reference import select_examples_reference  # tests/ is on sys.path (conftest.py)

from aloevision.config import FilterConfig, ThresholdConfig
from aloevision.schema import Sample, text_part, turn
from aloevision.scoring import store as store_mod
from aloevision.scoring.coverage import PAIRS, coverage_counts, pair_counts
from aloevision.scoring.review import review, select_examples
from aloevision.scoring.store import IdSet, ScoreRecord, ScoreRows, ScoreStore
from aloevision.scoring.taxonomy import TAG_FIELDS, VOCAB
from aloevision.scoring.thresholds import (
    FilterReport,
    Thresholds,
    apply_thresholds,
    decide,
    iter_decisions,
    thresholds_for,
)

SOURCES = ("alpha", "beta", "gamma")
FAILURES = ("missing_sq", "malformed_sq", "image_error", "")


def _record(rng: random.Random, sample_id: str, source: str) -> ScoreRecord:
    score = None if rng.random() < 0.15 else float(rng.randint(1, 5))  # integer scores: many ties, as in real data
    ppl = None if rng.random() < 0.1 else round(rng.lognormvariate(1.5, 1.0), 1)  # rounded: some ties
    if ppl is not None and rng.random() < 0.02:
        ppl = math.nan  # a broken perplexity is a value, not a missing one
    tags = {}
    for f in TAG_FIELDS:
        if rng.random() < 0.85:
            tags[f] = rng.sample(VOCAB[f], rng.randint(0, 2)) + (["NotInVocab"] if rng.random() < 0.05 else [])
    return ScoreRecord(
        id=sample_id, source=source, score=score, tags=tags,
        parse_failure=None if score is not None else rng.choice(FAILURES), parse_detail=f"detail of {sample_id}",
        raw_output=f"MOD[...] SQ[{score}]", ppl=ppl, nll_mean=None if ppl is None else 1.0, n_loss_tokens=3,
        ppl_failure=None if ppl is not None else rng.choice(("no_loss_tokens", "image_error")), fingerprint="fp")


def _id(i: int) -> str:
    src = SOURCES[i % 3]
    return [f"{src}/{i}", f'{src}/q"uote\\{i}', f"{src}/é{i}"][i % 3 if i % 7 else 0]  # escapes and non-ASCII


def _reference_load(folder: Path) -> tuple[dict[str, ScoreRecord], int]:
    """The old ScoreStore._load: every record in a dict, latest line wins, torn/unreadable lines counted."""
    records, torn = {}, 0
    for part in sorted(folder.glob("part-*.jsonl")):
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    torn += 1
                    continue
                try:
                    rec = ScoreRecord.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    torn += 1
                    continue
                records[rec.id] = rec
    return records, torn


def _populate(root: Path, n: int = 300, seed: int = 0) -> list[str]:
    """Parts of two shard layouts, re-scored ids across and within parts, torn and unreadable lines."""
    rng = random.Random(seed)
    ids = [_id(i) for i in range(n)]
    layouts = [ScoreStore(root, "fp", 0, 1), ScoreStore(root, "fp", 0, 2), ScoreStore(root, "fp", 1, 2)]
    for start in range(0, n, 25):
        batch = [_record(rng, i, i.split("/")[0]) for i in ids[start:start + 25]]
        rng.choice(layouts).write(batch)
        if start == 100:  # a killed write: the next batch's write terminates it, the line stays unreadable
            with open(layouts[1].path, "a") as fh:
                fh.write('{"id": "alpha/torn", "sour')
        if start == 150:  # lines that parse but are no record
            with open(layouts[2].path, "a") as fh:
                fh.write('["not", "a", "record"]\n{"id": "beta/nosource"}\nnot json at all\n\n')
    for _ in range(3):  # re-scored samples: the later line (in part order) must win
        for layout in layouts:
            layout.write([_record(rng, i, i.split("/")[0]) for i in rng.sample(ids, 20)])
    with open(layouts[0].path, "a") as fh:
        fh.write('{"id": "gamma/unterminated"')  # the torn last line of a killed job
    return ids


def _assert_same_as_reference(store: ScoreStore, absent: list[str]) -> dict[str, ScoreRecord]:
    ref, torn = _reference_load(store.dir)
    assert len(store) == len(ref) and store.torn_lines == torn > 0
    for sid, rec in ref.items():
        assert sid in store and store.get(sid) == rec
    for sid in absent:
        assert sid not in store and store.get(sid) is None
    assert sorted(r.id for r in store.records()) == sorted(ref)
    table = store.table()
    rows = table.rows_of(list(ref) + absent)
    assert (rows[len(ref):] == -1).all() and sorted(rows[:len(ref)].tolist()) == list(range(len(ref)))
    assert all(table.record(int(r)) == rec for r, rec in zip(rows, ref.values()))
    return ref


def test_index_equals_the_dict_of_records(tmp_path):
    ids = _populate(tmp_path)
    store = ScoreStore(tmp_path, "fp")
    ref = _assert_same_as_reference(store, ["alpha/torn", "beta/nosource", "gamma/unterminated", "nope/1"])
    assert set(ref) == set(ids) and store.torn_lines == 6
    lines = [json.loads(line)["id"] for part in sorted((tmp_path / "fp").glob("part-*.jsonl"))
             for line in part.read_text().splitlines() if line.startswith('{"id":"')]
    assert len(lines) - len(set(lines)) >= 50  # re-scored ids, the latest line (in part order) won


def _tiny_digest(constant_check: bool):
    """A key of 2 bits: nearly every present id shares its key with others."""
    def digest(sample_id: str) -> bytes:
        d = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=12).digest()
        return bytes([d[0] & 3]) + bytes(7) + (bytes(4) if constant_check else d[8:])
    return digest


@pytest.mark.parametrize("constant_check", [False, True])
def test_key_collisions_are_resolved_exactly(tmp_path, monkeypatch, constant_check):
    monkeypatch.setattr(store_mod, "id_digest", _tiny_digest(constant_check))
    _populate(tmp_path, n=120)
    store = ScoreStore(tmp_path, "fp")
    _assert_same_as_reference(store, ["alpha/absent", "beta/1000", "nope"])
    assert len(store.table().collided) == 4


def test_this_process_writes_are_visible(tmp_path, monkeypatch):
    rng = random.Random(1)
    _populate(tmp_path, n=90)
    store = ScoreStore(tmp_path, "fp", shard=1, n_shards=3)  # a part file that does not exist yet
    assert len(store) == 90
    monkeypatch.setattr(ScoreStore, "PENDING_ROWS", 7)  # fold into the index every 7 rows
    rescored = _record(rng, _id(5), "gamma")
    new = [_record(rng, f"delta/{i}", "delta") for i in range(12)]
    store.write(new[:5] + [rescored])
    assert rescored.id in store and store.get(rescored.id) == rescored and store.get("delta/3") == new[3]
    store.write(new[5:])  # 12 pending rows: folded
    assert not store._pending and len(store) == 102 and store.get("delta/11") == new[11]
    store.write([new[0]])
    assert store.get(new[0].id) == new[0] and len(store) == 102
    assert ScoreStore(tmp_path, "fp").get(rescored.id) == rescored  # a fresh reader: the same
    _assert_same_as_reference(ScoreStore(tmp_path, "fp"), ["delta/12"])


def test_id_set():
    seen = IdSet(buffer=8)
    ids = [_id(i) for i in range(50)]
    assert all(seen.add(i) for i in ids) and len(seen) == 50
    assert not any(seen.add(i) for i in ids[::3]) and len(seen) == 50


def _samples(ids: list[str]) -> list[Sample]:
    return [Sample(id=i, source=i.split("/")[0], domain="medical", modality="multimodal",
                   messages=[turn("user", text_part(f"q {i}")), turn("assistant", text_part(f"a {i}"))])
            for i in ids]


@pytest.fixture
def scored(tmp_path):
    ids = _populate(tmp_path, n=400, seed=3)
    store = ScoreStore(tmp_path, "fp")
    rng = random.Random(4)
    run_ids = rng.sample(ids, 300) + ["alpha/unscored", "gamma/unscored"]  # the run: some of the store, in its order
    ref, _ = _reference_load(store.dir)
    return store, _samples(run_ids), {i: ref[i] for i in run_ids if i in ref}


def test_decisions_equal_the_full_records(scored):
    store, samples, records = scored
    cfg = FilterConfig(name="t", default=ThresholdConfig(min_score=3, min_ppl=2.0, max_ppl=20.0),
                       per_source={"beta": ThresholdConfig(min_score=0, max_ppl=8.0),
                                   "gamma": ThresholdConfig(min_score=4)})
    expected, ref_report = [], FilterReport()
    for s in samples:  # the reference: decide() on each full record
        thr = thresholds_for(cfg, s.source)
        reason, detail = decide(records.get(s.id), thr)
        ref_report.add(s.source, thr, reason)
        expected.append((s.id, reason, detail))
    report = FilterReport()
    got = [(s.id, None if d is None else d.reason, "" if d is None else d.detail)
           for s, d in iter_decisions(samples, store, cfg, report)]
    assert got == expected and report.to_dict() == ref_report.to_dict()
    assert {r for _, r, _ in got} >= {None, "not_scored", "parse_failure", "low_score", "missing_perplexity",
                                      "low_perplexity", "high_perplexity"}
    kept, drops, rep = apply_thresholds(samples, store, cfg)
    kept2, drops2, rep2 = apply_thresholds(samples, records, cfg)
    assert kept == kept2 and drops == drops2 and rep.to_dict() == rep2.to_dict()


def test_review_selections_equal_sorting_the_full_records(scored):
    store, _, records = scored
    # NaN perplexities have no order among Python floats (the old sort's result depended on the input order)
    records = {i: r for i, r in records.items() if r.ppl is None or not math.isnan(r.ppl)}
    table = store.table()
    run = ScoreRows(table, table.rows_of(list(records)))
    sources = run.column("source")
    for source in SOURCES:
        code = table.codes.source.names.index(source)
        rows = run.subset(sources == code)
        recs = [r for r in records.values() if r.source == source]
        assert rows.records() == recs
        for k in (1, 3, 4, 50):
            for thr in (Thresholds(), Thresholds(min_score=3, min_ppl=2.0, max_ppl=8.0),
                        Thresholds(min_score=4.5, min_ppl=5.3, max_ppl=5.3)):
                expected = select_examples_reference(recs, thr, k)
                assert select_examples(rows, thr, k) == expected
                assert select_examples(recs, thr, k) == expected  # records in memory: the same code


def test_review_pages_equal_from_records_and_from_the_store(scored, tmp_path):
    store, samples, records = scored
    cfg = FilterConfig(name="t", default=ThresholdConfig(min_score=3, max_ppl=8.0))
    table = store.table()
    a = review(samples, records, cfg, tmp_path / "from_records", k=3, image_loader=lambda ref: None)
    b = review(samples, ScoreRows(table, table.rows_of(list(records))), cfg, tmp_path / "from_store", k=3,
               image_loader=lambda ref: None)
    assert list(a) == list(b) == sorted(SOURCES)
    for source in SOURCES:
        assert a[source]["gallery"].read_text() == b[source]["gallery"].read_text()
        assert a[source]["hist"].read_bytes() == b[source]["hist"].read_bytes()


def test_coverage_counts_equal_the_full_records(scored):
    store, _, records = scored
    table = store.table()
    pool = ScoreRows(table, table.rows_of(list(records)))
    from_columns = pair_counts(pool)
    from_stream = pair_counts(iter(records.values()))
    for row, col in PAIRS:
        expected = coverage_counts(list(records.values()), row, col)
        assert from_columns[(row, col)] == from_stream[(row, col)] == expected
        assert expected[1] > 0 and ("NotInVocab" in {a for a, _ in expected[0]} | {b for _, b in expected[0]})
    assert pair_counts(ScoreRows(table, np.arange(0))) == {pair: ({}, 0) for pair in PAIRS}
