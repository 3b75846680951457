"""Magpie-Ultra v1.0 (``argilla/magpie-ultra-v1.0``), general text only.

Native layout (default ``files``)::

    <path>/data/train-*.parquet        the ``default`` config (``conversation`` column)
    <path>/<top_*_config>/*.parquet    the ``top_*`` configs (``messages`` column); point ``files`` at one of them
    (JSON / JSON lines files with the same columns are read too)

Record: ``conversation`` or ``messages`` = list of ``{"role": "system"|"user"|"assistant", "content": str}``
(both column names accepted: datasets.md marks the per-config name UNCERTAIN). No images.
``meta``: difficulty, quality, primary_tag, category, intent, reward_model_score when present.
"""

from __future__ import annotations

from typing import Iterator

from aloevision.schema import Drop, Sample
from aloevision.sources.aloe_text import text_messages
from aloevision.sources.base import (
    ID_COLUMNS, RecordError, SourceContext, conversations_to_turns, iter_records, missing, native_id, run_adapter,
)

DEFAULT_FILES = ["data/*.parquet", "*.parquet", "*.jsonl"]
DEFAULT_IMAGES = None
LAYOUTS = [["data/*.parquet"], ["*.parquet"], ["*.jsonl"]]  # alternatives: the inventory reports the best match
META_KEYS = ("difficulty", "quality", "primary_tag", "category", "intent", "reward_model_score")
HF_ID = "argilla/magpie-ultra-v1.0"
# Every column `convert` reads: parquet decodes only these (not e.g. the 1,024-float `embedding` column).
COLUMNS = ("conversation", "messages", *META_KEYS, *ID_COLUMNS)


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    conv = rec.get("conversation")
    if conv is None:
        conv = rec.get("messages")
    if conv is None:
        raise RecordError("malformed_record", "neither `conversation` nor `messages`")
    messages = text_messages(conversations_to_turns(conv, "role", "content"))
    meta = {k: rec[k] for k in META_KEYS if k in rec and not missing(rec[k]) and isinstance(rec[k], (str, int, float))}
    meta["file"] = label
    return ctx.sample(f"{label}:{native_id(rec, str(i))}", messages, [], meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx, COLUMNS), convert)
