"""MeCoVQA (MedPLIB, GitHub ``ShawnHuang497/MedPLIB``), medical multimodal with regions.

Native layout (default ``files`` / ``images``)::

    <path>/MeCoVQA_Complex+Region_VQA_train+Public_VQA.json   JSON array, LLaVA style
    <path>/MeCoVQA_Grounding_train.json                       JSON array, LLaVA style
    <path>/SAMed2Dv1/images/<name>.png                        SA-Med2D-20M images
    <path>/SAMed2Dv1/masks/<name>.png                         SA-Med2D-20M masks
    (or the same tree inside <path>/SAMed2Dv1.zip)

Record: ``{"id"?: str, "image": "images/x.png", "conversations": [{"from": "human", "value": ...}, ...],
"answer_type"?: str}``. The first human turn may or may not carry ``<image>`` (both accepted; missing -> prepended).

Regions: ``<region>masks/y.png</region>`` (Region-VQA, in questions) and ``<SEG><mask>masks/y.png</mask>``
(grounding, in answers) are replaced by the tight box of the mask's non-zero pixels,
``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, normalised by the mask's size (SA-Med2D masks match their image), with
the right/bottom edge exclusive (see :mod:`aloevision.sources.boxes`). An empty mask is dropped as ``empty_mask``;
``<SEG>`` without a mask as ``malformed_record``. ``meta``: task (vqa | region | grounding), answer_type, file.
"""

from __future__ import annotations

import re
from typing import Iterator

from aloevision.images import open_image
from aloevision.schema import Drop, Sample
from aloevision.sources.base import (
    RecordError, SourceContext, as_list, conversations_to_turns, iter_records, run_adapter,
)
from aloevision.sources.boxes import format_box, from_pixels, mask_bbox

DEFAULT_FILES = ["MeCoVQA_Complex+Region_VQA_train+Public_VQA.json", "MeCoVQA_Grounding_train.json"]
DEFAULT_IMAGES = "SAMed2Dv1,SAMed2Dv1.zip"
REGION_RE = re.compile(r"<region>\s*(.*?)\s*</region>", re.S)
SEG_MASK_RE = re.compile(r"(?:<SEG>\s*)?<mask>\s*(.*?)\s*</mask>", re.S)


def mask_box_text(ctx: SourceContext, mask_rel: str) -> str:
    ref = ctx.locator().locate(mask_rel)
    im = open_image(ref)
    box = mask_bbox(im)
    if box is None:
        raise RecordError("empty_mask", f"mask {mask_rel} has no foreground pixels")
    return format_box(from_pixels(*box, im.width, im.height))


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    turns = conversations_to_turns(rec.get("conversations"))
    task = "vqa"
    out = []
    for role, text in turns:
        if REGION_RE.search(text):
            task = "region"
            text = REGION_RE.sub(lambda m: mask_box_text(ctx, m.group(1)), text)
        if SEG_MASK_RE.search(text):
            task = "grounding"
            text = SEG_MASK_RE.sub(lambda m: mask_box_text(ctx, m.group(1)), text)
        if "<SEG>" in text:
            raise RecordError("malformed_record", "<SEG> without a <mask>")
        out.append((role, text))
    meta = {"task": task, "file": label}
    if rec.get("answer_type") is not None:
        meta["answer_type"] = rec["answer_type"]
    return ctx.llava_sample(rec, label, i, out, as_list(rec.get("image")), meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx), convert)
