"""Where the scorer models run: `transformers` (CPU or GPU, batched) or `vllm` (cluster throughput for the 72B
tagger; imported only when chosen). A backend does two things: greedy generation of the tagging answer, and answer
perplexity (always through transformers + the SFT collator, so filter and loss agree on the trained tokens)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from aloevision.config import ConfigError
from aloevision.gpus import (  # noqa: F401  (re-exported: the scorer's layout lives with the model shapes)
    CUDA_CONTEXT_GIB, MODEL_SPECS, USABLE, VLLM_RESERVE_GIB, GpuLayout, ModelSpec, gpu_layout, layout_for, ppl_reserve_gib)
from aloevision.scoring.perplexity import PplResult, batch_perplexity

log = logging.getLogger(__name__)

# The paper's scorers (section 3): tags + 1-5 score from Qwen2.5-VL-72B-Instruct, perplexity under Qwen2-VL-7B-Instruct.
PAPER_TAG_MODEL = "Qwen/Qwen2.5-VL-72B-Instruct"
PAPER_PPL_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
BACKENDS = ("transformers", "vllm", "rules")
RULES_TAGGER = "rules-v2"  # the tag_model identity of the rules backend (part of the score cache key)
# `filter.scorer.ppl_model=none`: perplexity off, no perplexity model is ever loaded. With backend=rules, the
# model-free scoring of dry runs at scale (docs/filtering.md); thresholds on perplexity are then a config error.
PPL_OFF = "none"
PPL_OFF_FAILURE = "ppl_off"  # the records' ppl_failure: no perplexity by configuration, not by a sample's fault


def ppl_off(scorer_cfg) -> bool:
    """Whether `scorer_cfg` switches perplexity off (`ppl_model: none`)."""
    v = getattr(scorer_cfg, "ppl_model", None)
    return isinstance(v, str) and v.strip().lower() == PPL_OFF


def model_free(scorer_cfg) -> bool:
    """Rules tags and no perplexity: scoring loads no model at all (not even the run's)."""
    return scorer_cfg.backend == "rules" and ppl_off(scorer_cfg)


class ScorerBackend(Protocol):
    tag_model: str
    ppl_model: str

    def tag(self, batch: list[tuple[Any, list[Any]]]) -> list[str]: ...

    def perplexity(self, rows: list[dict[str, Any]]) -> list[PplResult]: ...


def model_identity(path_or_id: str) -> str:
    """What a model IS, for cache keys: a Hub id as is; a local folder by its name, config and weights' head, so two
    runs' `checkpoint-500` folders do not collide and moving a folder does not invalidate scores."""
    p = Path(path_or_id)
    if path_or_id in (PPL_OFF, RULES_TAGGER) or not p.is_dir():
        return path_or_id
    h = hashlib.sha256(p.name.encode())
    for name in ("config.json", "model.safetensors", "model.safetensors.index.json"):
        f = p / name
        if f.is_file():
            with open(f, "rb") as fh:
                h.update(name.encode() + fh.read(1 << 20))
            h.update(str(f.stat().st_size).encode())
    return f"{p.name}@{h.hexdigest()[:16]}"


# -- GPU layout of the scorers (config-level, valid by construction) -----------------------------------------------
class TransformersBackend:
    """Both scorers with transformers. The tag and perplexity models are loaded once (shared when they are the same
    checkpoint), through `aloevision.model.loading` (one GPU, or the node's GPUs for a model larger than one; SDPA
    where flash-attn is missing). `calls` counts model invocations (logged by the stage; the resume test checks
    them); `timing` accumulates seconds, items and tokens per kind of call (`throughput()`: what a plan calibrates
    from)."""

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
        ppl_batch_tokens: int | None = None,
    ):
        from aloevision.model.loading import Devices

        self.tag_model, self.ppl_model = tag_model, ppl_model
        self.devices = Devices() if device == "cpu" else Devices.detect()
        self.device = device or ("cuda" if self.devices.count else "cpu")
        self.dtype = dtype or ("bfloat16" if self.devices.count else "float32")
        self.trust_remote_code = trust_remote_code
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        self.attn_implementation = attn_implementation or "flash_attention_2"  # SDPA where it cannot run
        self.ppl_batch_tokens = ppl_batch_tokens
        self.ppl_gpu: int | None = None  # the vLLM backend puts the perplexity model on its own / a budgeted GPU
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self.calls = {"generate": 0, "perplexity": 0}
        self.timing = {"generate_s": 0.0, "generate_items": 0, "prompt_tokens": 0, "generated_tokens": 0,
                       "perplexity_s": 0.0, "perplexity_items": 0}

    def throughput(self) -> dict[str, float]:
        t = self.timing
        out = {}
        if t["generate_s"]:
            out.update(tag_samples_per_s=t["generate_items"] / t["generate_s"],
                       tag_tokens_per_s=(t["prompt_tokens"] + t["generated_tokens"]) / t["generate_s"])
        if t["perplexity_s"]:
            out["ppl_samples_per_s"] = t["perplexity_items"] / t["perplexity_s"]
        return out

    def _load(self, path: str):
        if path not in self._loaded:
            from types import SimpleNamespace

            from aloevision.model.loading import Devices, load_pretrained, placement, weights_gb
            from aloevision.model.processor import load_processor

            extra = {"trust_remote_code": True} if self.trust_remote_code else {}
            processor = load_processor(path, **self.pixels, **extra)
            spec = SimpleNamespace(name=path, dtype=self.dtype, attn_implementation=self.attn_implementation)
            devices = self.devices if self.device != "cpu" else Devices()
            rank = self.ppl_gpu if (path == self.ppl_model and self.ppl_gpu is not None) else 0
            p = placement(spec, devices, size_gb=weights_gb(path) if devices.count else None, local_rank=rank)
            model = load_pretrained(path, p, trust_remote_code=self.trust_remote_code).eval()
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
        start = time.perf_counter()
        model, processor = self._load(self.tag_model)
        texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in requests]
        images = [im for _, ims in requests for im in ims]  # Qwen2-VL's processor consumes images in text order
        inputs = processor(
            text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        ).to(model.device)
        pad_id = processor.tokenizer.pad_token_id
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id,
                temperature=None, top_p=None, top_k=None,
            )
        new = out[:, inputs["input_ids"].shape[1]:]
        self._timed("generate", start, len(requests), int(inputs["attention_mask"].sum()),
                    int((new != pad_id).sum()))
        return processor.batch_decode(new, skip_special_tokens=True)

    def _timed(self, kind: str, start: float, items: int, prompt_tokens: int = 0, generated: int = 0) -> None:
        self.timing[f"{kind}_s"] += time.perf_counter() - start
        self.timing[f"{kind}_items"] += items
        if kind == "generate":
            self.timing["prompt_tokens"] += prompt_tokens
            self.timing["generated_tokens"] += generated

    def perplexity(self, rows: list[dict[str, Any]]) -> list[PplResult]:
        if self.ppl_model == PPL_OFF:  # perplexity off: nothing loaded, nothing counted as a model call
            return [PplResult(None, None, 0, PPL_OFF_FAILURE) for _ in rows]
        if not rows:
            return []
        self.calls["perplexity"] += 1
        start = time.perf_counter()
        model, processor = self._load(self.ppl_model)
        out = batch_perplexity(model, processor, rows, max_length=self.max_length,
                               max_batch_tokens=self.ppl_batch_tokens)
        self._timed("perplexity", start, len(rows))
        return out


class VllmBackend(TransformersBackend):
    """Tag generation with vLLM (the 72B tagger's throughput), tensor parallel over the node's GPUs with an explicit
    memory share and max_model_len (`gpu_layout`); perplexity stays on transformers + the SFT collator (the
    trained-token mask must be the training code's), on its own GPU when one is left, else beside vLLM's shard on
    GPU 0 within the budget `gpu_layout` leaves. Never run here: vLLM is not installed on CPU machines
    (scripts/gpu_check.sh runs it on a GPU node)."""

    def __init__(self, tag_model: str, ppl_model: str, *, tensor_parallel_size: int | None = None,
                 gpu_memory_utilization: float | None = None, max_model_len: int = 8192, **kwargs):
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "filter.scorer.backend=vllm needs vLLM, which is not installed. On a GPU node: "
                "`pip install -e .[vllm]` (a build matching your CUDA/torch), or use filter.scorer.backend=transformers."
            ) from e
        super().__init__(tag_model, ppl_model, **kwargs)
        if not self.devices.count:
            raise ConfigError("filter.scorer.backend=vllm needs CUDA GPUs; this machine has none")
        self.max_model_len = int(max_model_len)
        spec = MODEL_SPECS.get(tag_model)
        if spec is not None:
            self.layout = gpu_layout(spec, MODEL_SPECS.get(ppl_model), gpus=self.devices.count,
                                     gpu_gib=min(self.devices.memory_gb), max_model_len=self.max_model_len,
                                     ppl_batch_tokens=self.ppl_batch_tokens or 4096,
                                     tensor_parallel_size=tensor_parallel_size,
                                     gpu_memory_utilization=gpu_memory_utilization)
        elif tensor_parallel_size and gpu_memory_utilization:
            tp = int(tensor_parallel_size)
            self.layout = GpuLayout(tp, float(gpu_memory_utilization), list(range(tp)),
                                    tp if tp < self.devices.count else 0, tp >= self.devices.count, 0,
                                    notes=["explicit settings for a model without a MODEL_SPECS entry"])
        else:
            raise ConfigError(f"filter.scorer.tag_model={tag_model} has no entry in aloevision.gpus.MODEL_SPECS: set "
                              "filter.scorer.tensor_parallel_size and filter.scorer.gpu_memory_utilization explicitly")
        self.ppl_gpu = self.layout.ppl_gpu
        for note in self.layout.notes:
            log.warning("vLLM layout: %s", note)
        self._llm = None

    def generate(self, requests: list[tuple[list[dict[str, Any]], list[Any]]]) -> list[str]:
        if not requests:
            return []
        from vllm import LLM, SamplingParams

        from aloevision.model.processor import load_processor

        self.calls["generate"] += 1
        start = time.perf_counter()
        if self._llm is None:
            max_images = max(1, max(len(ims) for _, ims in requests))
            log.info("vLLM %s: tensor_parallel_size=%d gpu_memory_utilization=%.2f max_model_len=%d (%s)",
                     self.tag_model, self.layout.tensor_parallel_size, self.layout.gpu_memory_utilization,
                     self.max_model_len, self.layout.budget)
            self._llm = LLM(
                model=self.tag_model, tensor_parallel_size=self.layout.tensor_parallel_size,
                gpu_memory_utilization=self.layout.gpu_memory_utilization, max_model_len=self.max_model_len,
                trust_remote_code=self.trust_remote_code, seed=0,
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
        self._timed("generate", start, len(requests), sum(len(o.prompt_token_ids or []) for o in outs),
                    sum(len(o.outputs[0].token_ids) for o in outs if o.outputs))
        return [o.outputs[0].text if o.outputs else "" for o in outs]


class RulesBackend(TransformersBackend):
    """Tags and score from `aloevision.scoring.rules` (keywords + answer-type checks, no model); perplexity from the
    ppl model as usual, or none with `ppl_model: none` (model-free). For the CPU demo, whose tiny random model cannot
    tag, and for dry runs of the data chain at scale; see docs/filtering.md."""

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
    ppl_model = PPL_OFF if ppl_off(scorer_cfg) else (scorer_cfg.ppl_model or default_model or PAPER_PPL_MODEL)
    kwargs: dict[str, Any] = dict(
        device=device, dtype=dtype, trust_remote_code=bool(scorer_cfg.trust_remote_code),
        max_new_tokens=scorer_cfg.max_new_tokens, max_length=max_length, min_pixels=min_pixels,
        max_pixels=max_pixels, attn_implementation=attn_implementation,
        ppl_batch_tokens=getattr(scorer_cfg, "ppl_batch_tokens", None),
    )
    if backend == "vllm":
        kwargs.update(tensor_parallel_size=getattr(scorer_cfg, "tensor_parallel_size", None),
                      gpu_memory_utilization=getattr(scorer_cfg, "gpu_memory_utilization", None),
                      max_model_len=getattr(scorer_cfg, "max_model_len", None) or 8192)
    cls = {"vllm": VllmBackend, "rules": RulesBackend}.get(backend, TransformersBackend)
    return cls(tag_model, ppl_model, **kwargs)



THROUGHPUT_FILE = "score_throughput.json"  # what `plan.measured=[<run folder>]` reads (planning._measured)


def write_throughput(backend: Any, run_dir: str | Path, *, gpus: int | None = None) -> Path | None:
    """The measured scoring rates of this job (`backend.throughput()`), per GPU held (the node's GPUs: tag and
    perplexity hold them together), into `<run_dir>/score_throughput.json`; None when nothing was timed."""
    import json

    rates = backend.throughput() if hasattr(backend, "throughput") else {}
    if not rates:
        return None
    held = max(1, int(gpus if gpus is not None else getattr(getattr(backend, "devices", None), "count", 0) or 1))
    out = {**rates, "gpus": held, "timing": dict(getattr(backend, "timing", {}))}
    if "tag_samples_per_s" in rates:
        out["tag_samples_per_gpu_second"] = rates["tag_samples_per_s"] / held
    if "ppl_samples_per_s" in rates:
        out["perplexity_samples_per_gpu_second"] = rates["ppl_samples_per_s"] / held
    path = Path(run_dir) / THROUGHPUT_FILE
    path.write_text(json.dumps(out, indent=1))
    return path
