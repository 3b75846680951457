"""The one place that builds a Qwen2-VL processor without torchvision.

transformers' `Qwen2VLProcessor` insists on a video processor, and the only video/fast image processors need
torchvision, whose only wheel here is a CUDA build that breaks the image processors. Medical SFT never uses video, so
this subclass takes just the PIL image processor and the tokenizer. On a GPU cluster with torchvision installed the
stock processor is used instead (see `load_processor`).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without a video processor (no torchvision needed)."""

    # ProcessorMixin reads `attributes` to decide what to save / load and what to type-check.
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # Bypass Qwen2VLProcessor.__init__ (it requires a video processor) but keep its token attributes.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        super(Qwen2VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, path, *, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs):
        kwargs.pop("trust_remote_code", None)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        ip_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **ip_kwargs, **kwargs)
        chat_template = tokenizer.chat_template or _read_chat_template(path)
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def _read_chat_template(path) -> str | None:
    p = Path(str(path))
    for name in ("chat_template.jinja", "chat_template.json"):
        if (p / name).is_file():
            text = (p / name).read_text()
            if name.endswith(".json"):
                import json

                return json.loads(text)["chat_template"]
            return text
    return None


def load_processor(path: str, *, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs):
    """The processor for `path` (local folder or Hub id): the stock one when torchvision works, else the shim."""
    try:
        import torchvision  # noqa: F401

        from transformers import AutoProcessor

        extra = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        return AutoProcessor.from_pretrained(path, **extra, **kwargs)
    except Exception:  # no (working) torchvision: the image-only shim
        return ImageOnlyQwen2VLProcessor.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels, **kwargs)
