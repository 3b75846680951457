"""Per-sample token statistics for the configured processor: `total`, `loss`, `text` and `image` tokens.

`loss` is exactly the number of tokens the SFT label mask trains on (`aloevision.model.masking`: TRL's vision
collator, assistant turns only, with the training chat template), and `total` is the sequence length the collator
builds, so loss-token rebalancing and the `too_many_tokens` cleaning rule (paper: drop sequences longer than 4096
tokens) agree with training.

The fast path never decodes pixels. Per sample it renders the training template once (each image is one
`<|image_pad|>` placeholder, as the template writes it), tokenizes with offsets, marks the tokens that overlap the
template's `{% generation %}` spans exactly as transformers' processor does, and weights each image placeholder by
the number of tokens Qwen2-VL's processor expands it to. That number follows from the image size alone (read from
the header): smart_resize onto the 28-px grid within [min_pixels, max_pixels], 14-px patches, 2x2 merge.

Definitions: `image` = `<|image_pad|>` tokens (what the vision tower feeds in); `text` = `total - image` (template
text and special tokens included, `<|vision_start|>`/`<|vision_end|>` too).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from aloevision.schema import Drop, Sample

IMAGE_TOKEN = "<|image_pad|>"
TOO_MANY_TOKENS = "too_many_tokens"
MAX_ASPECT_RATIO = 200  # Qwen2-VL's smart_resize refuses anything more elongated


class TokenCountError(ValueError):
    """A sample whose tokens cannot be counted; `reason` is the drop reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VisionGeometry:
    """Qwen2-VL's image resize rule, from the image processor's settings."""

    min_pixels: int
    max_pixels: int
    patch_size: int = 14
    merge_size: int = 2

    @classmethod
    def from_image_processor(cls, ip) -> "VisionGeometry":
        size = ip.size
        min_px = size["shortest_edge"] if "shortest_edge" in size else size["min_pixels"]
        max_px = size["longest_edge"] if "longest_edge" in size else size["max_pixels"]
        return cls(int(min_px), int(max_px), int(ip.patch_size), int(ip.merge_size))

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """Qwen2-VL's smart_resize (transformers' image_processing_qwen2_vl), same arithmetic."""
        if height <= 0 or width <= 0:
            raise TokenCountError("corrupt_image", f"image size {width}x{height}")
        if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
            raise TokenCountError(
                "extreme_aspect_ratio", f"{width}x{height}: aspect ratio above {MAX_ASPECT_RATIO} (Qwen2-VL refuses it)"
            )
        factor = self.patch_size * self.merge_size
        h_bar = round(height / factor) * factor
        w_bar = round(width / factor) * factor
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt((height * width) / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def grid_thw(self, width: int, height: int) -> tuple[int, int, int]:
        """The processor's image_grid_thw for an image of this size (one temporal patch for a still image)."""
        h, w = self.resized(height, width)
        return 1, h // self.patch_size, w // self.patch_size

    def image_tokens(self, width: int, height: int) -> int:
        t, gh, gw = self.grid_thw(width, height)
        return t * gh * gw // (self.merge_size**2)


@dataclass
class TokenStats:
    total: int
    loss: int
    text: int
    image: int
    images: int  # number of images

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def default_size_fn() -> Callable[[Any], tuple[int, int]]:
    """(width, height) of an image reference from its header: `aloevision.images.image_size` (paths and archive
    members); PIL images pass their own size."""
    try:
        from aloevision.images import image_size as ref_size
    except ImportError:  # pragma: no cover - the module ships with the package
        ref_size = None

    def size(ref: Any) -> tuple[int, int]:
        if hasattr(ref, "size") and not isinstance(ref, (str, bytes)):
            return tuple(ref.size)  # a PIL image already in memory
        if ref_size is not None:
            return ref_size(ref)
        from PIL import Image

        with Image.open(ref) as im:
            return im.size

    return size


def _as_row(sample: Sample | dict[str, Any]) -> tuple[str, str, list[dict[str, Any]], list[Any]]:
    if isinstance(sample, Sample):
        return sample.id, sample.source, sample.messages, list(sample.images)
    return str(sample.get("id", "")), str(sample.get("source", "")), sample["messages"], list(sample.get("images") or [])


class TokenCounter:
    """Token statistics of unified samples for one processor, without decoding images."""

    def __init__(
        self,
        processor,
        *,
        max_length: int | None = None,
        size_fn: Callable[[Any], tuple[int, int]] | None = None,
    ):
        from aloevision.model.masking import training_chat_template

        self.processor = processor
        self.tokenizer = processor.tokenizer
        # A private copy of the Rust tokenizer: transformers toggles padding / truncation on the shared one per call
        # (a collator call leaves batch padding switched on), which would inflate batched counts here.
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()
        self.chat_template = training_chat_template(processor)
        self.template_kwargs = dict(self.tokenizer.special_tokens_map)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.geometry = VisionGeometry.from_image_processor(processor.image_processor)
        self.max_length = max_length
        self.size_fn = size_fn or default_size_fn()

    # -- pieces -------------------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], n_images: int) -> tuple[str, list[tuple[int, int]]]:
        """The training template's text and its assistant (generation) character spans, as the collator renders."""
        from transformers.utils.chat_template_utils import render_jinja_template
        from trl.data_utils import prepare_multimodal_messages

        # TRL's own normalisation (string contents -> parts, image slots filled), with a stand-in for each image:
        # the template only tests that an image key is present.
        prepared = prepare_multimodal_messages(messages, images=[0] * n_images)
        prompts, indices = render_jinja_template(
            conversations=[prepared],
            chat_template=self.chat_template,
            return_assistant_tokens_mask=True,
            **self.template_kwargs,
        )
        return prompts[0], [tuple(s) for s in indices[0]]

    def image_tokens(self, images: Sequence[Any]) -> list[int]:
        from aloevision.images import ImageError

        out = []
        for ref in images:
            try:
                w, h = self.size_fn(ref)
            except ImageError as e:
                raise TokenCountError(e.reason, str(e)) from None
            out.append(self.geometry.image_tokens(int(w), int(h)))
        return out

    def _finish(self, ids: np.ndarray, offsets: np.ndarray, spans, n_img: list[int]) -> TokenStats:
        weights = np.ones(len(ids), dtype=np.int64)
        pads = np.flatnonzero(ids == self.image_token_id)
        if len(pads) != len(n_img):
            raise TokenCountError(
                "image_count_mismatch", f"{len(pads)} image placeholders rendered for {len(n_img)} images"
            )
        if len(pads):
            weights[pads] = n_img
        in_loss = np.zeros(len(ids), dtype=bool)
        # The processor's rule (ProcessorMixin._adjust_assistant_masks_indices): a token is trained on when it
        # overlaps an assistant span.
        for start, end in spans:
            in_loss |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
        total = int(weights.sum())
        image = int(sum(n_img))
        return TokenStats(total=total, loss=int(weights[in_loss].sum()), text=total - image, image=image, images=len(n_img))

    # -- public -------------------------------------------------------------------------------------------------
    def count(self, sample: Sample | dict[str, Any]) -> TokenStats:
        return self.count_many([sample])[0]

    def count_many(self, samples: Sequence[Sample | dict[str, Any]]) -> list[TokenStats]:
        """Counts for a batch (one tokenizer call for all). Raises TokenCountError on the first bad sample; use
        `check_many` to turn bad samples into drops."""
        return [r for r in self._count_many(samples, raise_errors=True)]  # type: ignore[misc]

    def _count_many(self, samples, raise_errors: bool) -> list[TokenStats | TokenCountError]:
        prepared: list[tuple[str, list, list[int]] | TokenCountError] = []
        for s in samples:
            _, _, messages, images = _as_row(s)
            try:
                n_img = self.image_tokens(images)
                text, spans = self.render(messages, len(images))
                prepared.append((text, spans, n_img))
            except TokenCountError as e:
                if raise_errors:
                    raise
                prepared.append(e)
            except ValueError as e:  # TRL: placeholders != images
                if raise_errors:
                    raise TokenCountError("image_count_mismatch", str(e)) from None
                prepared.append(TokenCountError("image_count_mismatch", str(e)))
        texts = [p[0] for p in prepared if not isinstance(p, TokenCountError)]
        encodings = iter(self.backend.encode_batch(texts, add_special_tokens=False))
        out: list[TokenStats | TokenCountError] = []
        for p in prepared:
            if isinstance(p, TokenCountError):
                out.append(p)
                continue
            enc = next(encodings)
            ids = np.asarray(enc.ids, dtype=np.int64)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            try:
                out.append(self._finish(ids, offsets, p[1], p[2]))
            except TokenCountError as e:
                if raise_errors:
                    raise
                out.append(e)
        return out

    def check_many(self, samples: Sequence[Sample | dict[str, Any]]) -> list[TokenStats | Drop]:
        """Counts, or a Drop for samples that cannot be counted or are longer than `max_length` (`too_many_tokens`,
        the paper's 4096-token rule)."""
        out: list[TokenStats | Drop] = []
        for s, r in zip(samples, self._count_many(samples, raise_errors=False)):
            sid, source, _, _ = _as_row(s)
            if isinstance(r, TokenCountError):
                out.append(Drop(id=sid, source=source, reason=r.reason, detail=r.detail))
            elif self.max_length is not None and r.total > self.max_length:
                out.append(
                    Drop(id=sid, source=source, reason=TOO_MANY_TOKENS, detail=f"{r.total} tokens > {self.max_length}")
                )
            else:
                out.append(r)
        return out

    def iter_stats(
        self, samples: Iterable[Sample], batch_size: int = 256
    ) -> Iterator[tuple[Sample, TokenStats | Drop]]:
        """Streaming: (sample, stats or drop) in input order, in bounded memory."""
        batch: list[Sample] = []
        for s in samples:
            batch.append(s)
            if len(batch) >= batch_size:
                yield from zip(batch, self.check_many(batch))
                batch = []
        if batch:
            yield from zip(batch, self.check_many(batch))


def collator_counts(processor, rows: Sequence[dict[str, Any]], max_length: int | None = None) -> list[TokenStats]:
    """The reference: counts read off the training collator's own batch (decoded images, one row per call so no
    padding). Slow; used to check the fast path and as the benchmark's baseline."""
    from aloevision.model.masking import IGNORE_INDEX, collate

    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    out = []
    for row in rows:
        batch = collate(processor, [row], max_length=max_length)
        ids = batch["input_ids"][0]
        total = int(batch["attention_mask"][0].sum())
        image = int((ids == image_id).sum())
        loss = int((batch["labels"][0] != IGNORE_INDEX).sum())
        out.append(TokenStats(total=total, loss=loss, text=total - image, image=image, images=len(row.get("images") or [])))
    return out


# -- per-source summary (what the planner reads) -------------------------------------------------------------------
STAT_FIELDS = ("total", "loss", "text", "image")


def summarize(records: Iterable[tuple[Sample, TokenStats]]) -> list[dict[str, Any]]:
    """Per source: name, domain, modality, samples and token sums (loss_tokens, total_tokens, text_tokens,
    image_tokens): the stats file format `aloevision.planning.load_stats` reads."""
    acc: dict[str, dict[str, Any]] = {}
    for s, st in records:
        row = acc.setdefault(
            s.source,
            {"name": s.source, "domain": s.domain, "modality": s.modality, "samples": 0}
            | {f"{k}_tokens": 0 for k in STAT_FIELDS},
        )
        row["samples"] += 1
        for k in STAT_FIELDS:
            row[f"{k}_tokens"] += getattr(st, k)
    return [acc[k] for k in sorted(acc)]
