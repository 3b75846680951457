"""The score stage's engine: for each sample, the LVLM's tags + 1-5 score and the answer perplexity, cached per
sample in a ScoreStore so an interrupted job resumes without recomputing what it finished."""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Iterable, Iterator

from aloevision.schema import Sample
from aloevision.scoring.backends import (
    PAPER_PPL_MODEL,
    PAPER_TAG_MODEL,
    PPL_OFF,
    RULES_TAGGER,
    ScorerBackend,
    make_backend,
    model_identity,
)
from aloevision.scoring.store import IdSet, ScoreRecord, ScoreStore, shard_of
from aloevision.scoring.taxonomy import parse_output, system_prompt
from aloevision.utils.fingerprint import fingerprint

log = logging.getLogger(__name__)

# Bump when the record's meaning changes (parser, perplexity definition) so cached scores are recomputed.
SCORER_VERSION = "1"
RAW_OUTPUT_CHARS = 400


def default_image_loader() -> Callable[[str], Any]:
    """Image references (paths and `archive::member`, see aloevision.images) -> RGB PIL images."""
    from aloevision.images import decode_image

    def _load(ref: str):
        return decode_image(ref)

    return _load


def scorer_fingerprint(backend: ScorerBackend, scorer_cfg) -> str:
    """Cache key of the scores: models, prompt, generation length, perplexity lengths/pixels, code version.
    Thresholds and batch size are deliberately absent (the filtering ablation reuses every score). Model-free
    (rules tags, perplexity off) no length or pixel setting can change a score: they are left out too, so every
    model's dry run shares one store."""
    free = backend.tag_model == RULES_TAGGER and backend.ppl_model == PPL_OFF
    return fingerprint(
        {
            "version": SCORER_VERSION,
            "tag_model": model_identity(backend.tag_model),
            "ppl_model": model_identity(backend.ppl_model),
            "prompt": system_prompt(),
            "max_new_tokens": scorer_cfg.max_new_tokens,
            "max_length": None if free else getattr(backend, "max_length", None),
            "pixels": None if free else getattr(backend, "pixels", None),
        }
    )


IMAGE_ERROR = "image_error"


def needs_scoring(source: str, filter_cfg) -> bool:
    """Whether any threshold applies to `source` (the stage can skip scoring sources the filter keeps whole)."""
    if not filter_cfg.enabled:
        return False
    t = filter_cfg.per_source.get(source, filter_cfg.default) if filter_cfg.per_source else filter_cfg.default
    return any(getattr(t, k) is not None for k in ("min_score", "min_ppl", "max_ppl"))


def _sft_row(sample: Sample, images: list[Any]) -> dict[str, Any]:
    # Deep copy: TRL's message preparation rewrites content parts in place.
    return {"messages": copy.deepcopy(sample.messages), "images": images}


def _score_batch(backend: ScorerBackend, batch: list[Sample], loader, fp: str) -> list[ScoreRecord]:
    records = {s.id: ScoreRecord(id=s.id, source=s.source, fingerprint=fp) for s in batch}
    ready: list[tuple[Sample, list[Any]]] = []
    for s in batch:
        try:
            imgs = [loader(ref) for ref in s.images]
        except Exception as e:  # a broken image: recorded with the reason, the rest of the batch goes on
            r = records[s.id]
            r.parse_failure = r.ppl_failure = IMAGE_ERROR
            r.parse_detail = f"{type(e).__name__}: {e}"[:200]
            continue
        ready.append((s, imgs))
    if ready:
        outputs = backend.tag(ready)
        for (s, _), text in zip(ready, outputs):
            p = parse_output(text)
            r = records[s.id]
            r.score, r.tags, r.oov, r.missing_fields = p.score, p.tags, p.oov, p.missing
            r.parse_failure, r.parse_detail = p.failure, p.failure_detail
            r.raw_output = (text or "")[:RAW_OUTPUT_CHARS]
        ppls = backend.perplexity([_sft_row(s, imgs) for s, imgs in ready])
        for (s, _), pr in zip(ready, ppls):
            r = records[s.id]
            r.ppl, r.nll_mean, r.n_loss_tokens, r.ppl_failure = pr.ppl, pr.nll_mean, pr.n_tokens, pr.failure
    return [records[s.id] for s in batch]


def _score_batch_isolating(backend, batch: list[Sample], loader, fp: str) -> list[ScoreRecord]:
    """Score a batch; if the batch fails, score its samples one by one so one bad sample does not sink the rest.
    If every sample fails alone too, the problem is systemic (model, device): raise instead of caching failures."""
    try:
        return _score_batch(backend, batch, loader, fp)
    except Exception as batch_error:
        if len(batch) == 1:
            raise
        log.warning("scoring batch of %d failed (%s); retrying one sample at a time", len(batch), batch_error)
    out, errors = [], 0
    for s in batch:
        try:
            out.extend(_score_batch(backend, [s], loader, fp))
        except Exception as e:
            errors += 1
            detail = f"{type(e).__name__}: {e}"[:200]
            out.append(ScoreRecord(id=s.id, source=s.source, parse_failure="scorer_error", parse_detail=detail,
                                   ppl_failure="scorer_error", fingerprint=fp))
    if errors == len(batch):
        raise RuntimeError(f"every sample of a batch failed to score; last error: {out[-1].parse_detail}")
    return out


def score_samples(
    samples: Iterable[Sample],
    scorer_cfg,
    store: ScoreStore,
    *,
    backend: ScorerBackend | None = None,
    image_loader: Callable[[str], Any] | None = None,
    on_batch: Callable[[list[ScoreRecord]], None] | None = None,
    **backend_kwargs: Any,
) -> Iterator[tuple[str, ScoreRecord]]:
    """Yield (sample_id, ScoreRecord) for every sample of this store's shard, cached ones first-come without any
    model call, the rest computed in batches of `scorer_cfg.batch_size` and written to `store` before being yielded.

    `backend` defaults to `make_backend(scorer_cfg, **backend_kwargs)` (pass `default_model=` the run's checkpoint,
    `max_length=`, `min_pixels=`, `max_pixels=`, `device=`, `dtype=`). Build the store with `open_store` so its
    fingerprint matches the backend. Samples of other shards (`shard_of(id, store.n_shards) != store.shard`) are
    skipped silently by design: another array task owns them.
    """
    if backend is None:
        backend = make_backend(scorer_cfg, **backend_kwargs)
    if image_loader is None and backend.tag_model == RULES_TAGGER and backend.ppl_model == PPL_OFF:
        image_loader = str  # model-free: the rules read only how many images there are, nothing is decoded
    loader = image_loader or default_image_loader()
    batch_size = max(1, int(scorer_cfg.batch_size))
    pending: list[Sample] = []

    def flush() -> Iterator[tuple[str, ScoreRecord]]:
        records = _score_batch_isolating(backend, pending, loader, store.fingerprint)
        # An unreadable image says nothing about the sample, only about the file now (deleted or rewritten under a
        # running job): it is counted in this run but not cached, so the next run scores the sample again.
        store.write([r for r in records if r.parse_failure != IMAGE_ERROR])
        if on_batch is not None:
            on_batch(records)
        pending.clear()
        for r in records:
            yield r.id, r

    seen = IdSet()  # 12 bytes an id, not a set of millions of strings
    for s in samples:
        if store.n_shards > 1 and shard_of(s.id, store.n_shards) != store.shard:
            continue
        if not seen.add(s.id):
            raise ValueError(f"duplicate sample id {s.id!r}: ids must be unique for scores to be cached per sample")
        cached = store.get(s.id)
        if cached is not None:
            yield s.id, cached
            continue
        pending.append(s)
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def open_store(root, scorer_cfg, *, shard: int = 0, n_shards: int = 1, backend: ScorerBackend | None = None,
               **backend_kwargs: Any) -> tuple[ScoreStore, ScorerBackend]:
    """A backend (models not loaded yet) and the store of its fingerprint. `backend_kwargs` as for `make_backend`."""
    if backend is None:
        backend = make_backend(scorer_cfg, **backend_kwargs)
    fp = scorer_fingerprint(backend, scorer_cfg)
    return ScoreStore(root, fp, shard=shard, n_shards=n_shards), backend


__all__ = ["score_samples", "open_store", "scorer_fingerprint", "needs_scoring", "default_image_loader",
           "PAPER_TAG_MODEL", "PAPER_PPL_MODEL"]
