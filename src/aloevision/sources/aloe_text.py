"""Aloe-Beta text collections (``HPAI-BSC/Aloe-Beta-Medical-Collection``, ``...-General-Collection``), text only.

Native layout (default ``files``)::

    <path>/*.json, <path>/*.jsonl     e.g. aloe_beta_medical_collection.json (JSON array or JSON lines)

Record: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}`` (``messages`` with
``role``/``content`` accepted too). ``system`` -> system turn, ``human`` -> user, ``gpt`` -> assistant. No images.
``meta``: file.
"""

from __future__ import annotations

from typing import Iterator

from aloevision.schema import Drop, Sample, text_part
from aloevision.sources.base import (
    RecordError, SourceContext, conversations_to_turns, iter_records, native_id, run_adapter,
)

DEFAULT_FILES = ["*.json", "*.jsonl"]
DEFAULT_IMAGES = None
LAYOUTS = [["*.json"], ["*.jsonl"]]  # alternatives: the inventory reports the best match
HF_ID = "HPAI-BSC/Aloe-Beta-Medical-Collection"


def text_messages(turns: list[tuple[str, str]]) -> list[dict]:
    return [{"role": r, "content": [text_part(t.strip())] if t.strip() else []} for r, t in turns]


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    conv = rec.get("conversations", rec.get("messages"))
    if conv is None:
        raise RecordError("malformed_record", "no conversations / messages field")
    messages = text_messages(conversations_to_turns(conv))
    return ctx.sample(f"{label}:{native_id(rec, str(i))}", messages, [], {"file": label})


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx), convert)
