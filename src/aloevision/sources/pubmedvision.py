"""PubMedVision (``FreedomIntelligence/PubMedVision``), medical multimodal.

Native layout (default ``files`` / ``images``)::

    <path>/PubMedVision_Alignment_VQA.json            JSON array of records
    <path>/PubMedVision_InstructionTuning_VQA.json    same schema
    <path>/images_0.zip ... images_19.zip             members images/pmc_701_0.jpg (or flat pmc_701_0.jpg)
    (or an extracted <path>/images/ folder)

Record: ``{"id": "Alignment_VQA_701", "image": ["images/pmc_701_0.jpg", ...], "body_part": "Abdomen",
"modality": "Computed Tomography", "conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}``.
The human text has no ``<image>``: all images are placed, in list order, at the start of the first user turn. (A
record that does carry as many ``<image>`` as images keeps their positions.) Records whose images are missing from
the zips are dropped as ``missing_image`` (known issue of the release). ``meta``: modality, body_part, file.
"""

from __future__ import annotations

from typing import Iterator

from aloevision.schema import Drop, Sample
from aloevision.sources.base import (
    SourceContext, as_list, conversations_to_turns, iter_records, run_adapter,
)

DEFAULT_FILES = ["PubMedVision_Alignment_VQA.json", "PubMedVision_InstructionTuning_VQA.json"]
DEFAULT_IMAGES = "images_*.zip,images"
HF_ID = "FreedomIntelligence/PubMedVision"


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    turns = conversations_to_turns(rec.get("conversations"))
    meta = {k: rec[k] for k in ("modality", "body_part") if rec.get(k) is not None}
    meta["file"] = label
    return ctx.llava_sample(rec, label, i, turns, as_list(rec.get("image")), meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    return run_adapter(ctx, iter_records(ctx), convert)
