"""MeCoVQA (MedPLIB, GitHub ``ShawnHuang497/MedPLIB``), medical multimodal with regions.

Native layout: the release tree (the authors' Google Drive download of MeCoVQA, next to SA-Med2D-20M extracted
as ``SAMed2Dv1``; ``path`` is the folder holding both)::

    <path>/MeCoVQA/train/MeCoVQA-Complex.json       JSON array, LLaVA style   } default ``files``
    <path>/MeCoVQA/train/MeCoVQA-Region.json        JSON array                }   (MeCoVQA/train/MeCoVQA-*.json;
    <path>/MeCoVQA/train/MeCoVQA-Grounding.json     JSON array                }    or path = the MeCoVQA folder)
    <path>/MeCoVQA/test/...                         test files (not read)
    <path>/SAMed2Dv1/images/<name>.png              SA-Med2D-20M images
    <path>/SAMed2Dv1/masks/<name>--<class>_<k>.png  SA-Med2D-20M per-object masks
    (or the same SAMed2Dv1 tree inside <path>/SAMed2Dv1.zip)

The earlier file names the MedPLIB code refers to (``MeCoVQA_Complex+Region_VQA_train+Public_VQA.json``,
``MeCoVQA_Grounding_train.json``, directly under ``path``) are read too.

Record: ``{"id"?: str, "image": "images/x.png", "conversations": [{"from": "human", "value": ...}, ...],
"answer_type"?: str}``. The first human turn may or may not carry ``<image>`` (both accepted; missing -> prepended).

Regions: ``<region>masks/y.png</region>`` (Region-VQA, in questions) and ``<SEG><mask>masks/y.png</mask>``
(grounding, in answers) are replaced by the tight box of the mask's non-zero pixels,
``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, normalised by the image size, right/bottom edge exclusive (see
:mod:`aloevision.sources.boxes`).

Merged masks: grounding answers name ``masks_merged/<image stem>--<class>_merged.png``, which SA-Med2D does not
ship; the authors (MedPLIB issue #3) say it is the union of the class's per-object masks
``masks/<image stem>--<class>_<k>.png``. When the merged file is not there, the adapter takes that union itself
(found by name in the image folders / archives). Drops: a mask with no foreground -> ``empty_mask``; a mask whose
size differs from its image, or per-object masks of different sizes -> ``bad_mask`` (a box in the mask's
coordinates would be wrong); a mask that cannot be found -> ``missing_image``; ``<SEG>`` without a mask ->
``malformed_record``. ``meta``: task (vqa | region | grounding), answer_type, file.
"""

from __future__ import annotations

import re
from typing import Iterator

from aloevision.images import ImageError, image_size, open_image
from aloevision.schema import Drop, Sample
from aloevision.sources.base import (
    RecordError, SourceContext, as_list, conversations_to_turns, iter_records, run_adapter,
)
from aloevision.sources.boxes import BoxError, format_box, from_pixels, mask_bbox

TRAIN = ("MeCoVQA-Complex.json", "MeCoVQA-Region.json", "MeCoVQA-Grounding.json")
LEGACY = ["MeCoVQA_Complex+Region_VQA_train+Public_VQA.json", "MeCoVQA_Grounding_train.json"]
# The layouts a download comes in; the inventory reports the missing files of the one that matches best.
LAYOUTS = [[f"MeCoVQA/train/{f}" for f in TRAIN], [f"train/{f}" for f in TRAIN], LEGACY]
DEFAULT_FILES = [f for layout in LAYOUTS for f in layout]
DEFAULT_IMAGES = "SAMed2Dv1,SAMed2Dv1.zip"
REGION_RE = re.compile(r"<region>\s*(.*?)\s*</region>", re.S)
SEG_MASK_RE = re.compile(r"(?:<SEG>\s*)?<mask>\s*(.*?)\s*</mask>", re.S)
MERGED_RE = re.compile(r"^(?P<prefix>.+)_merged\.png$")
MAX_MERGE = 256  # per-object masks of one class in one image, at most


def _object_masks(ctx: SourceContext, prefix: str) -> list[str]:
    """References of the per-object masks ``<prefix>_<k>.png`` (SA-Med2D naming), in name order."""
    loc = ctx.locator()
    names = getattr(loc, "_sorted_names", None)
    if names is None:
        names = loc._sorted_names = sorted(loc._name_index())
    import bisect

    out = []
    start = bisect.bisect_left(names, prefix + "_")
    for name in names[start:]:
        if not name.startswith(prefix + "_"):
            break
        if re.fullmatch(re.escape(prefix) + r"_\d+\.png", name):
            out.append(loc.locate(f"masks/{name}"))
        if len(out) > MAX_MERGE:
            raise RecordError("bad_mask", f"more than {MAX_MERGE} masks named {prefix}_*.png")
    return out


def mask_array(ctx: SourceContext, mask_rel: str):
    """The mask's foreground as a boolean array: the file itself, else (a ``*_merged.png`` SA-Med2D does not ship)
    the union of its per-object masks."""
    import numpy as np

    def fg(ref: str):
        a = np.asarray(open_image(ref))
        return a.any(axis=2) if a.ndim == 3 else a != 0

    try:
        return fg(ctx.locator().locate(mask_rel))
    except ImageError as e:
        m = MERGED_RE.match(mask_rel.replace("\\", "/").rsplit("/", 1)[-1])
        if e.reason != "missing_image" or m is None:
            raise
        refs = _object_masks(ctx, m.group("prefix"))
        if not refs:
            raise ImageError("missing_image", f"{mask_rel}: neither it nor per-object masks "
                                              f"{m.group('prefix')}_<k>.png were found") from None
        arrays = [fg(r) for r in refs]
        if len({a.shape for a in arrays}) > 1:
            raise RecordError("bad_mask", f"per-object masks of {mask_rel} differ in size") from None
        return np.logical_or.reduce(arrays)


def mask_box_text(ctx: SourceContext, mask_rel: str, image_wh: tuple[int, int] | None) -> str:
    a = mask_array(ctx, mask_rel)
    h, w = a.shape[:2]
    if image_wh is not None and (w, h) != tuple(image_wh):
        raise RecordError("bad_mask", f"mask {mask_rel} is {w}x{h}, its image is {image_wh[0]}x{image_wh[1]}")
    box = mask_bbox(a)
    if box is None:
        raise RecordError("empty_mask", f"mask {mask_rel} has no foreground pixels")
    try:
        return format_box(from_pixels(*box, w, h))
    except BoxError as e:
        raise RecordError("bad_box", f"mask {mask_rel}: {e}") from None


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    turns = conversations_to_turns(rec.get("conversations"))
    images = as_list(rec.get("image"))
    task = "vqa"
    out = []
    size: list[tuple[int, int] | None] = []

    def image_wh() -> tuple[int, int] | None:  # the record's image size, read once and only when a mask needs it
        if not size:
            size.append(image_size(ctx.locator().locate(str(images[0]))) if len(images) == 1 else None)
        return size[0]

    for role, text in turns:
        if REGION_RE.search(text):
            task = "region"
            text = REGION_RE.sub(lambda m: mask_box_text(ctx, m.group(1), image_wh()), text)
        if SEG_MASK_RE.search(text):
            task = "grounding"
            text = SEG_MASK_RE.sub(lambda m: mask_box_text(ctx, m.group(1), image_wh()), text)
        if "<SEG>" in text:
            raise RecordError("malformed_record", "<SEG> without a <mask>")
        out.append((role, text))
    meta = {"task": task, "file": label}
    if rec.get("answer_type") is not None:
        meta["answer_type"] = rec["answer_type"]
    return ctx.llava_sample(rec, label, i, out, images, meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx), convert)
