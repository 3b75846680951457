"""The SFT label mask, in one place: training, answer perplexity and loss-token counts all use it, so the filter,
the token statistics and the loss agree on exactly which tokens are trained (assistant turns and their <|im_end|>;
never system, user or image tokens)."""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def training_chat_template(processor) -> str:
    """The chat template with {% generation %} markers TRL uses for assistant-only loss (Qwen2-VL's, patched)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = processor.chat_template
    if has_generation_markers(template):
        return template
    patched = get_training_chat_template(processor)
    if patched is None:
        raise ValueError(
            "This processor's chat template has no {% generation %} markers and TRL has no training variant for it; "
            "add generation markers around assistant turns (see TRL's chat_templates/qwen2_5_vl_training.jinja)."
        )
    return patched


def build_collator(processor, max_length: int | None):
    """TRL's vision collator with assistant-only labels: the collator SFTTrainer itself builds for our data."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    return DataCollatorForVisionLanguageModeling(
        processor=processor,
        max_length=max_length,
        completion_only_loss=False,
        assistant_only_loss=True,
        chat_template=training_chat_template(processor),
    )


def collate(processor, rows: list[dict[str, Any]], max_length: int | None = None) -> dict[str, Any]:
    """Tokenise unified rows (`messages` + `images` as PIL images) into a training batch with labels."""
    return build_collator(processor, max_length)([dict(r) for r in rows])
