"""Where the scorer models run: `transformers` (CPU or GPU, batched) or `vllm` (cluster throughput for the 72B
tagger; imported only when chosen). A backend does two things: greedy generation of the tagging answer, and answer
perplexity (always through transformers + the SFT collator, so filter and loss agree on the trained tokens)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

from aloevision.scoring.perplexity import PplResult, batch_perplexity

log = logging.getLogger(__name__)

# The paper's scorers (section 3): tags + 1-5 score from Qwen2.5-VL-72B-Instruct, perplexity under Qwen2-VL-7B-Instruct.
PAPER_TAG_MODEL = "Qwen/Qwen2.5-VL-72B-Instruct"
PAPER_PPL_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
BACKENDS = ("transformers", "vllm", "rules")
RULES_TAGGER = "rules-v2"  # the tag_model identity of the rules backend (part of the score cache key)


class ScorerBackend(Protocol):
    tag_model: str
    ppl_model: str

    def tag(self, batch: list[tuple[Any, list[Any]]]) -> list[str]: ...

    def perplexity(self, rows: list[dict[str, Any]]) -> list[PplResult]: ...


def model_identity(path_or_id: str) -> str:
    """What a model IS, for cache keys: a Hub id as is; a local folder by its name, config and weights' head, so two
    runs' `checkpoint-500` folders do not collide and moving a folder does not invalidate scores."""
    p = Path(path_or_id)
    if not p.is_dir():
        return path_or_id
    h = hashlib.sha256(p.name.encode())
    for name in ("config.json", "model.safetensors", "model.safetensors.index.json"):
        f = p / name
        if f.is_file():
            with open(f, "rb") as fh:
                h.update(name.encode() + fh.read(1 << 20))
            h.update(str(f.stat().st_size).encode())
    return f"{p.name}@{h.hexdigest()[:16]}"


def _torch_dtype(dtype: str | None, device: str):
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


class TransformersBackend:
    """Both scorers with transformers. The tag and perplexity models are loaded once (shared when they are the same
    checkpoint). `calls` counts model invocations (logged by the stage; the resume test checks them)."""

    def __init__(
        self,
        tag_model: str,
        ppl_model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        max_new_tokens: int = 96,
        max_length: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        attn_implementation: str | None = None,
    ):
        import torch

        self.tag_model, self.ppl_model = tag_model, ppl_model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = _torch_dtype(dtype, self.device)
        self.trust_remote_code = trust_remote_code
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        self.attn_implementation = attn_implementation
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self.calls = {"generate": 0, "perplexity": 0}

    def _load(self, path: str):
        if path not in self._loaded:
            from transformers import AutoModelForImageTextToText

            from aloevision.model.processor import load_processor

            extra = {"trust_remote_code": True} if self.trust_remote_code else {}
            processor = load_processor(path, **self.pixels, **extra)
            kwargs: dict[str, Any] = {"dtype": self.dtype, **extra}
            if self.attn_implementation:
                kwargs["attn_implementation"] = self.attn_implementation
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).to(self.device).eval()
            self._loaded[path] = (model, processor)
        return self._loaded[path]

    def tag(self, batch: list[tuple[Any, list[Any]]]) -> list[str]:
        """The tagging answer (raw text) for each (Sample, its PIL images): the Appendix A.1 prompt, greedy."""
        from aloevision.scoring.taxonomy import build_prompt

        return self.generate([(build_prompt(sample), images) for sample, images in batch])

    def generate(self, requests: list[tuple[list[dict[str, Any]], list[Any]]]) -> list[str]:
        """Greedy answers to chat `requests` ((messages, PIL images) pairs), batched with left padding."""
        import torch

        if not requests:
            return []
        self.calls["generate"] += 1
        model, processor = self._load(self.tag_model)
        texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in requests]
        images = [im for _, ims in requests for im in ims]  # Qwen2-VL's processor consumes images in text order
        inputs = processor(
            text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        ).to(self.device)
        pad_id = processor.tokenizer.pad_token_id
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id,
                temperature=None, top_p=None, top_k=None,
            )
        new = out[:, inputs["input_ids"].shape[1]:]
        return processor.batch_decode(new, skip_special_tokens=True)

    def perplexity(self, rows: list[dict[str, Any]]) -> list[PplResult]:
        if not rows:
            return []
        self.calls["perplexity"] += 1
        model, processor = self._load(self.ppl_model)
        return batch_perplexity(model, processor, rows, max_length=self.max_length)


class VllmBackend(TransformersBackend):
    """Tag generation with vLLM (the 72B tagger's throughput); perplexity stays on transformers + the SFT collator
    because the trained-token mask must be the training code's, not a re-implementation. Not exercised by the test
    suite here (vLLM is not installed on CPU machines)."""

    def __init__(self, tag_model: str, ppl_model: str, *, tensor_parallel_size: int | None = None, **kwargs):
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "filter.scorer.backend=vllm needs vLLM, which is not installed. On a GPU node: "
                "`pip install vllm` (a build matching your CUDA/torch), or use filter.scorer.backend=transformers."
            ) from e
        super().__init__(tag_model, ppl_model, **kwargs)
        self.tensor_parallel_size = tensor_parallel_size
        self._llm = None

    def generate(self, requests: list[tuple[list[dict[str, Any]], list[Any]]]) -> list[str]:
        if not requests:
            return []
        import torch
        from vllm import LLM, SamplingParams

        from aloevision.model.processor import load_processor

        self.calls["generate"] += 1
        if self._llm is None:
            tp = self.tensor_parallel_size or max(1, torch.cuda.device_count())
            max_images = max(1, max(len(ims) for _, ims in requests))
            self._llm = LLM(
                model=self.tag_model, tensor_parallel_size=tp, trust_remote_code=self.trust_remote_code,
                limit_mm_per_prompt={"image": max(5, max_images)},
                mm_processor_kwargs={k: v for k, v in self.pixels.items() if v is not None},
            )
            self._vllm_processor = load_processor(self.tag_model, **self.pixels)
        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        prompts = []
        for messages, images in requests:
            text = self._vllm_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt: dict[str, Any] = {"prompt": text}
            if images:
                prompt["multi_modal_data"] = {"image": images}
            prompts.append(prompt)
        outs = self._llm.generate(prompts, params, use_tqdm=False)
        return [o.outputs[0].text if o.outputs else "" for o in outs]


class RulesBackend(TransformersBackend):
    """Tags and score from `aloevision.scoring.rules` (keywords + answer-type checks, no model); perplexity from the
    ppl model as usual. For the CPU demo, whose tiny random model cannot tag; see docs/filtering.md."""

    def __init__(self, tag_model: str, ppl_model: str, **kwargs):
        super().__init__(RULES_TAGGER, ppl_model, **kwargs)

    def tag(self, batch: list[tuple[Any, list[Any]]]) -> list[str]:
        from aloevision.scoring.rules import rules_output

        return [rules_output(sample.messages, len(images)) for sample, images in batch]


def make_backend(
    scorer_cfg,
    *,
    default_model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    attn_implementation: str | None = None,
) -> ScorerBackend:
    """The backend `scorer_cfg` (a ScorerConfig) asks for. `tag_model`/`ppl_model` None means `default_model` (the
    run's model, e.g. the tiny one in the demo) or, without one, the paper's scorers."""
    backend = scorer_cfg.backend
    if backend not in BACKENDS:
        raise ValueError(f"filter.scorer.backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    tag_model = scorer_cfg.tag_model or default_model or PAPER_TAG_MODEL
    ppl_model = scorer_cfg.ppl_model or default_model or PAPER_PPL_MODEL
    kwargs = dict(
        device=device, dtype=dtype, trust_remote_code=bool(scorer_cfg.trust_remote_code),
        max_new_tokens=scorer_cfg.max_new_tokens, max_length=max_length, min_pixels=min_pixels,
        max_pixels=max_pixels, attn_implementation=attn_implementation,
    )
    cls = {"vllm": VllmBackend, "rules": RulesBackend}.get(backend, TransformersBackend)
    return cls(tag_model, ppl_model, **kwargs)

