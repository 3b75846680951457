"""Med-GRIT-270k (BiRD, GitHub ``ShawnHuang497/BiRD``), medical multimodal with grounding.

Native layout (default ``files`` / ``images``)::

    <path>/*train*.json                e.g. 0301_CombinedAll_7.5w_train1_chatlm_img_coord2.json (JSON array)
    <path>/SAMed2Dv1/images/<id>.png   SA-Med2D-20M images where SA-Med2D-16M.zip extracts them
    (or <path>/images/<id>.png, or inside <path>/*.zip / *.tar / *.tar.gz)

Record (Qwen-VL "chatml" variant): ``{"id": "ct_00012", "conversations": [[question, answer], ...]}`` where the
question carries the image as ``<img>path</img>``; ``{"from", "value"}`` dict turns are accepted too. The path in
``<img>`` may be an absolute path from the authors' machine: it is looked up by its trailing components (never
opened as is); if it is not found, ``<id>.png`` is tried. A record without any ``<img>`` gets ``<id>.png`` prepended.

Boxes: ``<ref>p</ref><box>(x1,y1),(x2,y2)</box>`` -> ``<|object_ref_start|>p<|object_ref_end|><|box_start|>...``.
Scale (UNCERTAIN in datasets.md): a box whose numbers have a decimal point and are all <= 1 is 0-1 normalised
(x1000); otherwise it is on Qwen-VL's 0-1000 grid. Values off both scales drop the record as ``bad_box``.
``meta``: task (record field, else VG/RO/ROC/GC/MII from the file name, else inferred from where boxes are), image_modality (from the id prefix), file.
"""

from __future__ import annotations

import re
from typing import Iterator

from aloevision.images import ImageError
from aloevision.schema import Drop, Sample
from aloevision.sources.base import (
    RecordError, SourceContext, conversations_to_turns, iter_records, llava_messages, native_id, run_adapter,
)
from aloevision.sources.boxes import BoxError, qwenvl_to_qwen2vl

DEFAULT_FILES = ["*train*.json"]
DEFAULT_IMAGES = "SAMed2Dv1/images,images,*.zip,*.tar,*.tar.gz"
IMG_RE = re.compile(r"<img>\s*(.*?)\s*</img>", re.S)
TASK_RE = re.compile(r"(?:^|[_\W])(VG|ROC|RO|GC|MII)(?:[_\W]|$)")
MODALITY_PREFIXES = ("ct", "mr", "x", "pet", "endoscopy", "dermoscopy", "fundus", "ultrasound")
PH = "\x00IMG\x00"  # internal placeholder: cannot occur in real text


def turns_of(conv) -> list[tuple[str, str]]:
    if isinstance(conv, list) and conv and all(isinstance(t, (list, tuple)) for t in conv):
        turns = []
        for pair in conv:
            if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                raise RecordError("malformed_record", f"turn pair is not [question, answer]: {str(pair)[:120]}")
            turns += [("user", pair[0]), ("assistant", pair[1])]
        return turns
    return conversations_to_turns(conv)


def infer_task(turns: list[tuple[str, str]]) -> str:
    """Task of a record in a mixed file (CombinedAll): a box in a question = RO (referring object classification);
    an answer that is only ref+box = VG; an answer with boxes inside prose = GC; no box = MII (image level)."""
    if any(r == "user" and "<box>" in t for r, t in turns):
        return "RO"
    answers = [t for r, t in turns if r == "assistant" and "<box>" in t]
    if not answers:
        return "MII"
    bare = [re.sub(r"<ref>.*?</ref>|<box>.*?</box>|[\s,.;]", "", t, flags=re.S) for t in answers]
    return "VG" if not any(bare) else "GC"


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    sid = native_id(rec, f"{label}:{i}")
    turns = turns_of(rec.get("conversations"))
    loc = ctx.locator()
    refs: list[str] = []

    def image(m: re.Match) -> str:
        path = m.group(1)
        try:
            refs.append(loc.locate(path, absolute_ok=True))
        except ImageError as e:
            if e.reason != "missing_image" or "id" not in rec:
                raise
            refs.append(loc.locate(f"{rec['id']}.png"))
        return PH

    out = []
    for role, text in turns:
        text = IMG_RE.sub(image, text)
        try:
            text, _ = qwenvl_to_qwen2vl(text)
        except BoxError as e:
            raise RecordError("bad_box", str(e)) from None
        out.append((role, text))
    if not refs and rec.get("id"):
        refs.append(loc.locate(f"{rec['id']}.png"))  # no <img> tag: the image is implied by the id
    messages = llava_messages(out, refs, placeholder=PH)
    task = rec.get("task")
    if not task:
        m = TASK_RE.search(label)
        task = m.group(1) if m else infer_task(turns)
    meta = {"file": label}
    if task:
        meta["task"] = task
    prefix = str(rec.get("id", "")).split("_", 1)[0].lower()
    if prefix in MODALITY_PREFIXES:
        meta["image_modality"] = prefix
    return ctx.sample(sid, messages, refs, meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx), convert)
