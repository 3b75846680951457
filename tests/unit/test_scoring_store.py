"""Scores are written per batch and a rerun after a crash scores only what was not finished (model calls counted)."""

import json

import pytest
from PIL import Image

from aloevision.config import ScorerConfig
from aloevision.schema import Sample, image_part, text_part, turn
from aloevision.scoring.backends import TransformersBackend
from aloevision.scoring.score import open_store, score_samples
from aloevision.scoring.store import ScoreRecord, ScoreStore, shard_of


class CountingBackend(TransformersBackend):
    """The real tiny-model backend, recording which samples reached the models; can crash on a chosen batch."""

    def __init__(self, *a, crash_on_batch: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.tagged: list[str] = []
        self.crash_on_batch = crash_on_batch

    def tag(self, batch):
        if self.crash_on_batch is not None and self.calls["generate"] + 1 == self.crash_on_batch:
            raise KeyboardInterrupt("simulated kill")  # not an Exception: nothing may swallow it
        self.tagged.extend(s.id for s, _ in batch)
        return super().tag(batch)


def _samples(tmp_path, n=7):
    img = tmp_path / "scan.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(img)
    return [
        Sample(id=f"demo/{i}", source="demo", domain="medical", modality="multimodal",
               messages=[turn("user", image_part(), text_part("Where is the lesion?")),
                         turn("assistant", text_part("In the upper left region." + " Yes." * i))],
               images=[str(img)])
        for i in range(n)
    ]


@pytest.fixture
def cfg():
    return ScorerConfig(backend="transformers", batch_size=2, max_new_tokens=4)


def _backend(tiny_path, **kw):
    return CountingBackend(tiny_path, tiny_path, max_new_tokens=4, max_length=1024, **kw)


def test_resume_after_kill_does_not_recompute(tmp_path, tiny_path, cfg):
    samples = _samples(tmp_path)
    first = _backend(tiny_path, crash_on_batch=3)
    store, _ = open_store(tmp_path / "scores", cfg, backend=first)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for sid, rec in score_samples(samples, cfg, store, backend=first):
            got.append(sid)
    assert got == ["demo/0", "demo/1", "demo/2", "demo/3"] and first.tagged == got
    # a torn line, as if the process died mid-write of a later batch
    with open(store.path, "a") as fh:
        fh.write('{"id": "demo/4", "source": "de')

    second = _backend(tiny_path)
    store2, _ = open_store(tmp_path / "scores", cfg, backend=second)
    assert store2.fingerprint == store.fingerprint and len(store2) == 4 and store2.torn_lines == 1
    out = dict(score_samples(samples, cfg, store2, backend=second))
    assert second.tagged == ["demo/4", "demo/5", "demo/6"]  # only the unfinished samples reached the model
    assert second.calls == {"generate": 2, "perplexity": 2}
    assert list(out) == [s.id for s in samples]
    assert all(isinstance(r, ScoreRecord) and r.ppl and r.ppl > 1 for r in out.values())
    # the tiny random model's tag output is noise: a reasoned parse failure, never a made-up score
    assert all((r.score is None) == (r.parse_failure is not None) for r in out.values())

    third = _backend(tiny_path)
    store3, _ = open_store(tmp_path / "scores", cfg, backend=third)
    assert len(dict(score_samples(samples, cfg, store3, backend=third))) == 7
    assert third.calls == {"generate": 0, "perplexity": 0} and store3.torn_lines == 1
    # every finished line is valid JSON; the torn one was terminated, not glued to the next record
    lines = store3.path.read_text().splitlines()
    assert sum(1 for ln in lines if ln.startswith('{"id": "demo/4", "source": "de')) == 1
    assert len([json.loads(ln) for ln in lines if ln.endswith("}")]) == 7


def test_fingerprint_changes_with_the_scorer(tmp_path, tiny_path, cfg):
    a, _ = open_store(tmp_path, cfg, backend=_backend(tiny_path))
    b, _ = open_store(tmp_path, ScorerConfig(batch_size=64, max_new_tokens=4), backend=_backend(tiny_path))
    c, _ = open_store(tmp_path, ScorerConfig(batch_size=2, max_new_tokens=9), backend=_backend(tiny_path))
    assert a.fingerprint == b.fingerprint  # batch size does not change scores
    assert a.fingerprint != c.fingerprint


def test_shards_partition_and_are_stable(tmp_path, tiny_path, cfg):
    ids = [f"src/{i}" for i in range(500)]
    shards = [shard_of(i, 4) for i in ids]
    assert set(shards) == {0, 1, 2, 3} and min(shards.count(k) for k in range(4)) > 80
    assert shard_of("pubmedvision/Alignment_VQA_701", 8) == shard_of("pubmedvision/Alignment_VQA_701", 8)
    assert shard_of("x", 1) == 0
    with pytest.raises(ValueError):
        shard_of("x", 0)
    # a shard's job scores only its samples; the merged store sees all of them
    samples = _samples(tmp_path, n=6)
    for k in range(2):
        be = _backend(tiny_path)
        store, _ = open_store(tmp_path / "sh", cfg, backend=be, shard=k, n_shards=2)
        ids_k = [sid for sid, _ in score_samples(samples, cfg, store, backend=be)]
        assert ids_k == [s.id for s in samples if shard_of(s.id, 2) == k] == be.tagged
    merged = ScoreStore(tmp_path / "sh", store.fingerprint)
    assert sorted(r.id for r in merged.records()) == sorted(s.id for s in samples)


def test_duplicate_ids_are_an_error(tmp_path, tiny_path, cfg):
    s = _samples(tmp_path, n=1)
    be = _backend(tiny_path)
    store, _ = open_store(tmp_path, cfg, backend=be)
    with pytest.raises(ValueError, match="duplicate sample id"):
        list(score_samples(s + s, cfg, store, backend=be))
