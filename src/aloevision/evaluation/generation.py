"""Greedy generation and option log-likelihood for evaluation (library code shared by the eval stage, the HEART
robustness benchmark and the demo/benchmark scripts).

Prompts: `item_prompt` builds what VLMEvalKit's Qwen2-VL entry sends for the item's prompt style
(aloevision.evaluation.protocol); `prompt_text` is the short instruction prompt used for text MCQ scored by
log-likelihood. Images go first in the user turn, one `{"type": "image"}` per image, as Qwen2VLChat sends them.
Inputs are moved to the model's device (its first device when the model is spread over several GPUs).
"""

from __future__ import annotations

from typing import Any

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
YESNO_INSTRUCTION = "Answer yes or no."
OPEN_INSTRUCTION = "Answer the question briefly."


def prompt_text(item) -> str:
    """The short instruction prompt (text MCQ by log-likelihood; `options.prompt: short` for other sets)."""
    if item.kind in ("mcq", "text_mcq"):
        opts = "\n".join(f"{k}. {v}" for k, v in sorted(item.options.items()))
        return f"{item.question}\n{opts}\n{MCQ_INSTRUCTION}"
    if item.kind in ("yesno", "probmed"):
        return f"{item.question}\n{YESNO_INSTRUCTION}"
    return f"{item.question}\n{OPEN_INSTRUCTION}"


def default_style(item) -> str:
    """VLMEvalKit's dataset type for an item: MMMU's own builder, MCQ, Y/N or VQA (open)."""
    if item.meta.get("prompt_style"):
        return str(item.meta["prompt_style"])
    if item.kind in ("mcq", "text_mcq"):
        return "mcq"
    if item.kind in ("yesno", "probmed"):
        return "yorn"
    return "vqa"


def item_prompt(item, style: str | None = None) -> str:
    """The user text for an item. style: mcq | mmmu | yorn | vqa (VLMEvalKit, Qwen2-VL) or short (`prompt_text`)."""
    from aloevision.evaluation.protocol import build_prompt

    style = style or default_style(item)
    if style == "short":
        return prompt_text(item)
    # MMMU's open questions carry their two-option rewrite for scoring but are prompted without options.
    options = {} if item.meta.get("open_question") else item.options
    return build_prompt(style, item.question, options, item.meta.get("hint"))


def load_pil(image) -> Any:
    from aloevision.images import decode_image  # the decode training and ingest use (EXIF orientation, modes)

    return decode_image(image)


def _device(model):
    return getattr(model, "device", None) or next(model.parameters()).device


class UndecodableImage(str):
    """The answer slot of a turn whose image could not be decoded (the reason is the string): the turn is not sent
    to the model, and the caller counts the item as dropped instead of scoring it."""


def generate_chat(model, processor, turns, max_new_tokens: int, batch_size: int, desc: str,
                  progress: bool = True) -> list[str]:
    """Greedy answers to single user turns, batched with left padding. `turns`: (content parts, images) pairs, the
    parts in TRL's format ({"type": "image"} / {"type": "text", "text": ...}), images in placeholder order. A turn
    whose image fails to decode gets an `UndecodableImage` (with the reason) instead of an answer."""
    import torch
    from tqdm.auto import tqdm

    from aloevision.images import ImageError

    tok = processor.tokenizer
    tok.padding_side = "left"  # decoder-only batch generation pads on the left
    device = _device(model)
    out: list[str] = []
    starts = range(0, len(turns), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress):
        batch = turns[start : start + batch_size]
        answers: list = [None] * len(batch)
        texts, images, slots = [], [], []
        for i, (content, imgs) in enumerate(batch):
            try:
                decoded = [load_pil(im) for im in imgs]
            except ImageError as e:  # one bad image costs its item (counted by the caller), not the benchmark
                answers[i] = UndecodableImage(str(e)[:200])
                continue
            texts.append(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                       add_generation_prompt=True))
            images.extend(decoded)
            slots.append(i)
        if texts:
            enc = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            decoded_out = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
            for i, text in zip(slots, decoded_out):
                answers[i] = text
        out.extend(answers)
    return out


def chat_turn(item, style: str | None = None) -> tuple[list[dict], list[Any]]:
    return ([{"type": "image"} for _ in item.images] + [{"type": "text", "text": item_prompt(item, style)}],
            item.images)


def generate(model, processor, items, max_new_tokens: int, batch_size: int, desc: str, style: str | None = None,
             progress: bool = True) -> list[str]:
    """Greedy answers for eval items (their images, then the prompt, in one user turn)."""
    turns = [chat_turn(it, style) for it in items]
    return generate_chat(model, processor, turns, max_new_tokens, batch_size, desc, progress=progress)


def loglik_choices(model, processor, items, desc: str, progress: bool = True) -> list[str]:
    """Text MCQ by highest log-likelihood of the option letter after the prompt (as lm-eval scores MCQ)."""
    import torch
    from tqdm.auto import tqdm

    tok = processor.tokenizer
    device = _device(model)
    preds = []
    for it in tqdm(items, desc=desc, leave=False, disable=not progress):
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": prompt_text(it)}]}], tokenize=False,
            add_generation_prompt=True)
        ctx_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        best, best_lp = None, float("-inf")
        for letter in sorted(it.options):
            cont = tok(letter, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx_ids + cont], device=device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(ctx_ids) - 1 : -1].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(cont, device=device)[:, None]).sum().item()
            if lp > best_lp:
                best, best_lp = letter, lp
        preds.append(best or "")
    return preds
