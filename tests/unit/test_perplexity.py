"""Answer perplexity = exp(mean NLL over exactly the tokens the SFT label mask trains on), checked against a value
computed independently: a plain forward pass with full logits and a hand-written loss over the assistant tokens,
which are located here by scanning the token ids, not through the collator's labels."""

import math

import pytest
import torch
from PIL import Image

from aloevision.model.masking import collate
from aloevision.model.processor import load_processor
from aloevision.schema import image_part, text_part, turn
from aloevision.scoring.perplexity import batch_perplexity


@pytest.fixture(scope="module")
def model_and_processor(tiny_path):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_path, dtype=torch.float32).eval()
    return model, load_processor(tiny_path)


def _rows():
    img = Image.new("RGB", (64, 56), (120, 80, 40))
    img2 = Image.new("RGB", (56, 84), (10, 200, 90))
    return [
        {"messages": [turn("user", image_part(), text_part("Where is the finding located?")),
                      turn("assistant", text_part("The nodule is in the upper left region."))], "images": [img]},
        {"messages": [turn("system", text_part("Be brief.")), turn("user", text_part("Explain gravity.")),
                      turn("assistant", text_part("Gravity is a topic of science.")),
                      turn("user", image_part(), text_part("And this?")),
                      turn("assistant", text_part("This is a MRI image."))], "images": [img2]},
        {"messages": [turn("user", text_part("Is there a cyst?")), turn("assistant", text_part("No."))], "images": []},
    ]


def _assistant_positions(ids: list[int], tok) -> list[int]:
    """Token positions of each assistant turn's content, its <|im_end|> and the newline after it."""
    start = tok.convert_tokens_to_ids("<|im_start|>")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    header = tok.encode("assistant\n", add_special_tokens=False)
    out, i = [], 0
    while i < len(ids):
        if ids[i] == start and ids[i + 1 : i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while ids[j] != end:
                out.append(j)
                j += 1
            out.append(j)  # <|im_end|>
            if j + 1 < len(ids) and tok.decode([ids[j + 1]]) == "\n":
                out.append(j + 1)
            i = j
        i += 1
    return out


def _independent_ppl(model, processor, row) -> float:
    """One sample, no padding: full logits, manual log-softmax NLL over the assistant tokens."""
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    enc = processor(text=[text], images=row["images"] or None, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    pos = _assistant_positions(ids, processor.tokenizer)
    assert pos, "no assistant tokens found"
    with torch.no_grad():
        logits = model(**enc).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    nll = [-logp[p - 1, ids[p]].item() for p in pos]  # token p is predicted at position p-1
    return math.exp(sum(nll) / len(nll))


def test_ppl_equals_independent_loss_over_assistant_tokens(model_and_processor):
    model, processor = model_and_processor
    rows = _rows()
    batched = batch_perplexity(model, processor, rows)  # one padded batch of three
    for row, got in zip(rows, batched):
        want = _independent_ppl(model, processor, row)
        assert got.failure is None and got.n_tokens > 0
        assert got.ppl == pytest.approx(want, rel=1e-4), (got.ppl, want)


def test_ppl_matches_the_training_loss(model_and_processor):
    """For one sample, log(ppl) is exactly the causal-LM loss transformers computes on the collator's batch."""
    model, processor = model_and_processor
    row = _rows()[1]
    batch = collate(processor, [row])
    with torch.no_grad():
        loss = model(**batch).loss.item()
    got = batch_perplexity(model, processor, [row])[0]
    assert got.nll_mean == pytest.approx(loss, rel=1e-5)
    assert got.n_tokens == int((batch["labels"][0, 1:] != -100).sum())


def test_no_trained_tokens_is_a_reported_failure(model_and_processor):
    model, processor = model_and_processor
    rows = _rows()[2:]  # text-only: truncating through an image is a processor error, not a silent zero
    res = batch_perplexity(model, processor, rows, max_length=8)  # truncation cuts every assistant token
    assert res[0].ppl is None and res[0].failure == "no_loss_tokens" and res[0].n_tokens == 0


def test_token_budget_chunks_give_the_same_perplexities(model_and_processor):
    """ppl_batch_tokens bounds activation memory on the GPU: the rows are scored in length-sorted chunks, each within
    the budget, and every row's perplexity equals the one-batch value."""
    model, processor = model_and_processor
    rows = _rows()
    whole = batch_perplexity(model, processor, rows)
    lengths = collate(processor, rows)["attention_mask"].sum(dim=1).tolist()
    budget = int(max(lengths)) + 1  # one long row per chunk at most
    chunked = batch_perplexity(model, processor, rows, max_batch_tokens=budget)
    for a, b in zip(whole, chunked):
        assert a.n_tokens == b.n_tokens and a.ppl == pytest.approx(b.ppl, rel=1e-5)
