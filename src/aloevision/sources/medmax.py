"""MedMax (``mint-medmax/medmax_data``), medical multimodal.

Native layout (default ``files`` / ``images``)::

    <path>/train.jsonl                        one JSON object per line
    <path>/validation.jsonl                   (not read by default)
    <path>/images.tar.gz.aa ... .aq           split tarball (read as one archive, never extracted)
    <path>/slake.tar.gz                       the SLAKE images some rows point at (read as an archive too)
    (or a whole <path>/images.tar.gz, or extracted <path>/images/ and <path>/slake/ folders)

Record: ``{"text": str, "tokens": [...], "image_path": str, "task": str, "source": str, "credential": "yes"|"no"}``.
``text`` holds prompt and response in one string with ``<image>`` where images go.

Separator choice (datasets.md marks it UNCERTAIN): the training code ends a turn with token 8710 =
``<reserved08706>``; we split ``text`` on the literal ``<reserved08706>`` (``options.separators`` adds others, tried
in order; the first one present is used). Segments alternate user / assistant; a trailing empty segment (a
separator that ends the text) is ignored. A row with none of the separators is dropped as ``no_turn_separator``
rather than guessed. ``image_path`` may be a string or a list (multi-image variant). Rows of the generation tasks
(``Image Generation``, ``Multimodal Generation``) or with an ``<image>`` in a response are dropped as
``generation_task``; credentialed rows whose prompt needs an image that is not provided are dropped as
``credentialed_image``. ``meta``: task, source (as ``origin``), credential.
"""

from __future__ import annotations

from typing import Iterator

from aloevision.schema import Drop, Sample
from aloevision.sources.base import (
    RecordError, SourceContext, as_list, iter_records, missing, run_adapter,
)

DEFAULT_FILES = ["train.jsonl"]
DEFAULT_IMAGES = "images.tar.gz,slake.tar.gz,images,slake"
SEPARATORS = ["<reserved08706>"]
GENERATION_TASKS = {"image generation", "multimodal generation"}
HF_ID = "mint-medmax/medmax_data"


def split_turns(text: str, separators: list[str]) -> list[tuple[str, str]]:
    sep = next((s for s in separators if s in text), None)
    if sep is None:
        raise RecordError("no_turn_separator", f"none of {separators} in text {text[:120]!r}")
    segments = text.split(sep)
    if len(segments) > 2 and not segments[-1].strip():  # the separator also closed the last turn
        segments = segments[:-1]
    return [("user" if k % 2 == 0 else "assistant", seg.strip()) for k, seg in enumerate(segments)]


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    task = str(rec.get("task") or "")
    if task.strip().lower() in GENERATION_TASKS:
        raise RecordError("generation_task", f"task {task!r}: the answer is an image")
    text = rec.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RecordError("malformed_record", "no text")
    separators = list(ctx.options.get("separators") or []) + SEPARATORS
    turns = split_turns(text, list(dict.fromkeys(separators)))
    if any(r == "assistant" and "<image>" in t for r, t in turns):
        raise RecordError("generation_task", f"task {task!r}: image in the response")
    paths = as_list(rec.get("image_path"))
    n_ph = sum(t.count("<image>") for _, t in turns)
    credential = str(rec.get("credential") or "no").lower()
    if n_ph and not paths:
        reason = "credentialed_image" if credential == "yes" else "placeholder_mismatch"
        raise RecordError(reason, f"{n_ph} <image> but no image_path (credential={credential})")
    meta = {"task": task, "credential": credential, "file": label}
    if not missing(rec.get("source")):
        meta["origin"] = rec["source"]
    return ctx.llava_sample(rec, label, i, turns, paths, meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx), convert)
