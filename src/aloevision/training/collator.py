"""The training collator: TRL's vision collator (assistant-only labels, `aloevision.model.masking`) plus a masked
dummy image for batches that have no image.

Why: under ZeRO-3 every parameter is sharded and gathered by collectives in the forward/backward of the module that
uses it. A text-only batch skips the vision tower, so on that rank the tower's all-gathers never run while a rank with
an image waits in them: the job hangs (the most reported DeepSpeed hang for mixed text/image data). So a batch with
no image gets ONE tiny dummy image, and the vision tower runs on every rank, every step.

Why the dummy changes nothing: its placeholder tokens are appended as extra columns AFTER every row's last token
(after the right padding), with attention_mask 0 and labels -100:
- the language model is causal, so a real token at position i only attends to positions <= i: columns appended at the
  end are never seen by any real token, whatever their mask (the mask 0 also keeps them out of M-RoPE, which skips
  masked tokens when it assigns positions), so every real token's logits are unchanged;
- labels -100 on the new columns, and the next-token shift of the last real token now pointing at a -100 column
  instead of past the end (also -100), leave the loss terms and the number of loss tokens unchanged;
- the dummy features do enter the graph (masked_scatter into the embeddings), so backward also runs through the vision
  tower on every rank (its gradient from the dummy is exactly zero).
tests/e2e/test_zero3.py checks the loss with and without the dummy is identical, and a 2-rank ZeRO-3 run where one rank
only ever sees text completes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

IGNORE_INDEX = -100


class DummyImage:
    """The processor's own encoding of one black image of the smallest allowed size (min_pixels): pixel_values,
    image_grid_thw and the number of placeholder tokens it takes in the text (grid / merge_size²)."""

    def __init__(self, processor: Any) -> None:
        from PIL import Image

        ip = processor.image_processor
        unit = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
        min_pixels = getattr(ip, "min_pixels", None) or (getattr(ip, "size", None) or {}).get("shortest_edge") or unit * unit
        side = max(unit, math.ceil(math.sqrt(int(min_pixels)) / unit) * unit)  # 56 for Qwen2-VL's 3136
        enc = ip(images=[Image.new("RGB", (side, side))], return_tensors="pt")
        self.side = side
        self.pixel_values: torch.Tensor = enc["pixel_values"]
        self.image_grid_thw: torch.Tensor = enc["image_grid_thw"]
        merge = int(getattr(ip, "merge_size", 2))
        self.num_tokens = int(self.image_grid_thw.prod().item()) // (merge * merge)
        self.image_token_id = int(processor.image_token_id)
        tok = getattr(processor, "tokenizer", processor)
        pad = tok.pad_token_id
        self.pad_token_id = int(pad if pad is not None else tok.eos_token_id)


def add_dummy_image(batch: dict[str, Any], dummy: DummyImage) -> dict[str, Any]:
    """`batch` (a collated text-only batch) with the dummy image appended as masked columns; batches that already
    carry pixel_values are returned unchanged."""
    if batch.get("pixel_values") is not None:
        return batch
    input_ids = batch["input_ids"]
    n, k = input_ids.shape[0], dummy.num_tokens
    ids = torch.full((n, k), dummy.pad_token_id, dtype=input_ids.dtype)
    ids[0] = dummy.image_token_id  # one image: its placeholders in row 0, pad columns in the other rows
    out = dict(batch)
    out["input_ids"] = torch.cat([input_ids, ids], dim=1)
    out["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros((n, k), dtype=batch["attention_mask"].dtype)], dim=1)
    if "labels" in batch:
        out["labels"] = torch.cat([batch["labels"], torch.full((n, k), IGNORE_INDEX, dtype=batch["labels"].dtype)], dim=1)
    if "mm_token_type_ids" in batch:
        # Masked tokens are skipped by M-RoPE whatever their type; 1 marks them as image tokens for consistency.
        types = torch.zeros((n, k), dtype=batch["mm_token_type_ids"].dtype)
        types[0] = 1
        out["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], types], dim=1)
    else:
        # Qwen2-VL refuses image_grid_thw without mm_token_type_ids (it needs them for M-RoPE).
        types = torch.zeros_like(out["input_ids"])
        types[0, -k:] = 1
        out["mm_token_type_ids"] = types
    out["pixel_values"] = dummy.pixel_values.clone()
    out["image_grid_thw"] = dummy.image_grid_thw.clone()
    return out


def decoded_rows(rows: list[dict[str, Any]], image_store: Any = None) -> list[dict[str, Any]]:
    """Rows with every image through `aloevision.images.decode_image`, the decode ingest validated with (EXIF
    orientation, 16-bit/alpha/palette modes to RGB), so training sees the pixels ingest, scoring, evaluation and the
    attacks see. Images arrive as image-store keys (the mixture's rows: resolved through `image_store`, an
    `aloevision.image_store.ImageStore`, to the very bytes the source shipped), PIL images (a `datasets` Image
    feature, e.g. the export), bytes dicts or references."""
    from aloevision.images import decode_image

    out = []
    for row in rows:
        images = row.get("images")
        if images:
            if image_store is not None:
                images = [image_store.get(im) if isinstance(im, str) else im for im in images]
            row = {**row, "images": [decode_image(im) for im in images]}
        out.append(row)
    return out


class DecodingCollator:
    """A collator whose rows' images go through the shared decode first (used when there is no dummy image)."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], image_store: Any = None) -> None:
        self.collator = collator
        self.image_store = image_store

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collator(decoded_rows(rows, self.image_store))


class DummyImageCollator:
    """Wrap a collator (rows -> batch): images decoded by the shared decode, and every batch leaves with at least one
    image (see the module docstring). `dummy_batches` counts the batches that got the dummy (reported by the train
    stage)."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], processor: Any,
                 image_store: Any = None) -> None:
        self.collator = collator
        self.dummy = DummyImage(processor)
        self.image_store = image_store
        self.dummy_batches = 0
        self.batches = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(decoded_rows(rows, self.image_store))
        self.batches += 1
        if batch.get("pixel_values") is None:
            self.dummy_batches += 1
            return add_dummy_image(batch, self.dummy)
        return batch


def build_training_collator(processor: Any, max_length: int | None, *, dummy_image: bool = True,
                            image_store: Any = None):
    """The collator the train stage gives SFTTrainer: TRL's vision collator with the project's label mask, wrapped
    with the masked dummy image (needed under ZeRO-3; harmless and cheap elsewhere). With `image_store`, string
    images are image-store keys (the mixture's rows) and are read from it."""
    from aloevision.model.masking import build_collator

    base = build_collator(processor, max_length)
    return (DummyImageCollator(base, processor, image_store) if dummy_image
            else DecodingCollator(base, image_store))
