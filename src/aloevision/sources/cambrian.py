"""Cambrian-10M (``nyu-visionx/Cambrian-10M``), general multimodal (with text-only rows).

Native layout (default ``files`` / ``images``)::

    <path>/jsons/Cambrian10M.jsonl        JSON lines, LLaVA style (set files to Cambrian7M.jsonl etc. for others)
    <path>/<subset>.tar.gz                per-source image tarballs (coco.tar.gz, pathvqa.tar.gz, ...), also split
    <path>/<subset>.tar.gz.<part>         parts (read as one archive); or .tar / .zip; or extracted folders

Record: ``{"id"?: str, "image"?: "coco/train2017/000.jpg", "conversations": [{"from": "human"|"gpt"|"system",
"value": ...}, ...]}``. ``image`` may be a list (multi-image variant). Text-only rows have ``image`` missing,
None, "", "None", "nan" or NaN; such a row with an ``<image>`` in its text is dropped (``placeholder_mismatch``).
An image row whose text has no ``<image>`` gets the image prepended to the first user turn. The
``_withsystemprompt`` variant's ``{"from": "system"}`` first turn becomes a system turn. Boxes: LLaVA-1.5 style
``[x1, y1, x2, y2]`` 0-1 floats (RefCOCO-style grounding rows) are converted to Qwen2-VL box tokens by default, so
the mixture teaches one box format (``options.llava_boxes: false`` keeps them as written); such a box past [0, 1] or
inverted drops the row as ``bad_box``.
``meta``: text_only, origin (a ``source`` field when present), file.
"""

from __future__ import annotations

from typing import Iterator

from aloevision.schema import Drop, Sample
from aloevision.sources.base import (
    RecordError, SourceContext, as_list, conversations_to_turns, iter_records, missing, run_adapter,
)
from aloevision.sources.boxes import BoxError, llava_to_qwen2vl

DEFAULT_FILES = ["jsons/Cambrian10M.jsonl"]
DEFAULT_IMAGES = "*.tar.gz,*.tar.gz.*,*.tar,*.zip"
HF_ID = "nyu-visionx/Cambrian-10M"


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    turns = conversations_to_turns(rec.get("conversations"))
    if ctx.options.get("llava_boxes", True):
        try:
            turns = [(r, llava_to_qwen2vl(t)[0]) for r, t in turns]
        except BoxError as e:
            raise RecordError("bad_box", str(e)) from None
    paths = as_list(rec.get("image"))
    meta = {"text_only": not paths, "file": label}
    if not missing(rec.get("source")):
        meta["origin"] = rec["source"]
    return ctx.llava_sample(rec, label, i, turns, paths, meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx), convert)
