"""Answer perplexity over exactly the tokens SFT trains on.

Batches come from `aloevision.model.masking.collate` (TRL's vision collator with assistant-only labels, the code
training uses), so "the answer" here is bit-for-bit the set of label != -100 tokens of the loss: assistant turns and
their <|im_end|>, never system, user or image tokens. Per sample: mean NLL of those tokens with the causal-LM shift
(logits at t predict labels at t+1), perplexity = exp(mean NLL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from aloevision.model.masking import IGNORE_INDEX, collate


@dataclass
class PplResult:
    ppl: float | None
    nll_mean: float | None
    n_tokens: int
    failure: str | None = None  # no_loss_tokens: nothing trained on (e.g. truncated away by max_length)


def per_sample_nll(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of NLL and token count per sample, from logits at the `keep` positions (bool B x T, flattened in
    row-major order as transformers' `logits_to_keep` returns them) against the next-position labels."""
    targets = labels[:, 1:][keep[:, :-1]]
    nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    batch_index = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=nll.device)
    sums.index_add_(0, batch_index, nll.double())
    counts = keep.sum(dim=1)
    return sums, counts


@torch.no_grad()
def batch_perplexity(model, processor, rows: list[dict[str, Any]], max_length: int | None = None,
                     max_batch_tokens: int | None = None) -> list[PplResult]:
    """Perplexity of each row (`messages` + `images` as PIL images), in one forward pass, or, when the padded batch
    exceeds `max_batch_tokens` (rows x longest row), in chunks of similar-length rows that stay within it: activation
    memory is bounded by the config, not by the longest sample (the GPU budget of aloevision.gpus.gpu_layout)."""
    batch = collate(processor, rows, max_length=max_length)
    if max_batch_tokens and len(rows) > 1 and batch["input_ids"].numel() > max_batch_tokens:
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        order = sorted(range(len(rows)), key=lambda i: lengths[i])
        chunks: list[list[int]] = [[]]
        for i in order:  # ascending lengths: the newest row is the chunk's longest
            if chunks[-1] and (len(chunks[-1]) + 1) * lengths[i] > max_batch_tokens:
                chunks.append([])
            chunks[-1].append(i)
        results: list[PplResult | None] = [None] * len(rows)
        for chunk in chunks:
            for i, r in zip(chunk, _forward(model, collate(processor, [rows[i] for i in chunk], max_length=max_length),
                                            len(chunk))):
                results[i] = r
        return results  # type: ignore[return-value]
    return _forward(model, batch, len(rows))


def _forward(model, batch: dict[str, Any], n_rows: int) -> list[PplResult]:
    labels = batch.pop("labels")
    # Position t's logits predict token t+1: keep the positions whose NEXT label is trained. Asking the model for
    # only those logits avoids a B x T x vocab tensor (152K vocab on the real models).
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if keep.any():
        out = model(**inputs, logits_to_keep=keep.to(device), use_cache=False)
        sums, counts = per_sample_nll(out.logits, labels.to(device), keep.to(device))
    else:
        sums = torch.zeros(n_rows, dtype=torch.float64)
        counts = torch.zeros(n_rows, dtype=torch.long)
    results = []
    for s, c in zip(sums.tolist(), counts.tolist()):
        if c == 0:
            results.append(PplResult(None, None, 0, "no_loss_tokens"))
        else:
            mean = s / c
            results.append(PplResult(math.exp(mean), mean, int(c)))
    return results
