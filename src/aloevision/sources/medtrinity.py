"""MedTrinity-25M (``UCSC-VLAA/MedTrinity-25M``), medical multimodal captions.

Native layout: the release tree (a download of the Hub repo; default ``files`` / ``images``)::

    <path>/25M_full/*.parquet          metadata: file_name, caption, source (+ id)       -- hf_config 25M_full
    <path>/25M_demo/*.parquet          ~161K rows with an embedded ``image`` column      -- hf_config 25M_demo
    <path>/25M_accessible/*.tar.zst    image shards (or dataset_shard_*.tar.zst of MedTrinity-25M-FULL),
                                       members looked up by file_name (exact path, else by name)

Only the folder of the configured ``hf_config`` is read (a full download holds both configs: the demo's rows must
not join the full set); with no such folder, every ``**/*.parquet`` under ``path``. Embedded image bytes (the demo
config, or any row with an ``image`` {"bytes", "path"}) are written once to a content-addressed cache,
``options.image_cache`` (conf/source/medtrinity.yaml: ``${paths.cache_dir}/images``, inside the artifact cache;
else $ALOEVISION_IMAGE_CACHE or ~/.cache/aloevision/images), which is one of the source's allowed image roots.

Hub-id setup (clusters with Hub access): ``path: UCSC-VLAA/MedTrinity-25M`` streams the ``hf_config`` rows (image
features are read as bytes, not decoded) and ``options.image_root`` is the local folder holding the image shards;
that folder is an allowed image root too.

There is no question: the user turn is a synthesized prompt, ``options.prompts`` (list; one is picked per sample by
a stable hash of its id) or ``options.prompt``. No boxes (numeric ROI boxes were never released). Rows without an
image in the shards are dropped as ``missing_image`` (known issue). Cap: 400K in conf/source/medtrinity.yaml.
``meta``: origin (the row's ``source``), file_name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from aloevision.cleaning import sample_key
from aloevision.images import materialize_bytes
from aloevision.schema import Drop, Sample, image_part, text_part
from aloevision.sources.base import ID_COLUMNS, RecordError, SourceContext, iter_records, missing, run_adapter

DEFAULT_FILES = ["**/*.parquet"]
DEFAULT_IMAGES = "**/*.tar.zst,images"
PROMPTS = [
    "Describe this medical image in detail.",
    "Provide a detailed description of this medical image, including the modality, the anatomy and any region of "
    "interest.",
    "What does this image show? Describe the findings.",
]
HF_ID = "UCSC-VLAA/MedTrinity-25M"
COLUMNS = ("caption", "file_name", "id", "image", "source", *ID_COLUMNS)  # every column `convert` reads


def extra_roots(ctx: SourceContext) -> list[str]:
    """Allowed image roots besides the source folder and ``options.image_root``: the embedded-image cache."""
    return [image_cache(ctx)]


def image_cache(ctx: SourceContext) -> str:
    return ctx.options.get("image_cache") or os.environ.get(
        "ALOEVISION_IMAGE_CACHE", str(Path.home() / ".cache" / "aloevision" / "images")
    )


def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
    caption = rec.get("caption")
    if missing(caption) or not str(caption).strip():
        raise RecordError("empty_turn", "no caption")
    file_name = rec.get("file_name")
    native = rec.get("id") if not missing(rec.get("id")) else (file_name if not missing(file_name) else f"{label}:{i}")
    emb = rec.get("image")
    if isinstance(emb, dict) and isinstance(emb.get("bytes"), (bytes, bytearray)) and emb["bytes"]:
        ref = materialize_bytes(emb["bytes"], image_cache(ctx), Path(str(emb.get("path") or "")).suffix)
    elif isinstance(emb, (bytes, bytearray)):
        ref = materialize_bytes(bytes(emb), image_cache(ctx))
    elif not missing(file_name):
        ref = ctx.locator().locate(str(file_name))
    else:
        raise RecordError("malformed_record", "neither file_name nor an embedded image")
    prompts = ctx.options.get("prompts") or ([ctx.options["prompt"]] if ctx.options.get("prompt") else PROMPTS)
    prompt = prompts[sample_key(str(native), 0) % len(prompts)]
    messages = [
        {"role": "user", "content": [image_part(), text_part(prompt)]},
        {"role": "assistant", "content": [text_part(str(caption).strip())]},
    ]
    meta = {"file": label}
    if not missing(file_name):
        meta["file_name"] = file_name
    if not missing(rec.get("source")):
        meta["origin"] = rec["source"]
    return ctx.sample(native, messages, [ref], meta)


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    config_files(ctx, src)
    return run_adapter(ctx, iter_records(ctx, COLUMNS), convert)


def config_files(ctx: SourceContext, src) -> None:
    """Default ``files`` -> the configured ``hf_config``'s folder when the download has one."""
    if not list(getattr(src, "files", None) or []) and ctx.hf_config and ctx.is_local and \
            (Path(ctx.path) / ctx.hf_config).is_dir():
        ctx.files = [f"{ctx.hf_config}/**/*.parquet"]
