"""Model shapes and GPUs: the numbers the memory and cost arithmetic needs (planning, the scorers' GPU layout,
pre-flight), in one library with no heavy imports.

`gpu_layout` places the vLLM tagger and the perplexity model on a node's GPUs with budgets that add up (vLLM's rules
read from its source and docs: `gpu_memory_utilization` is a per-instance share of each GPU's total memory, vLLM
refuses to start when less memory is free or when the KV cache cannot hold one `max_model_len` request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aloevision.config import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """What the cost and memory arithmetic needs of a model: its config.json, parameters from its model card."""

    params: float
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int = 128
    hidden: int = 0
    intermediate: int = 0
    vocab: int = 152064

    @property
    def weights_gib(self) -> float:  # bf16
        return self.params * 2 / 2**30

    @property
    def kv_bytes_per_token(self) -> int:  # K and V of every layer, bf16
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    @property
    def largest_layer_params(self) -> int:  # the (untied) embedding / LM head
        return self.vocab * self.hidden


_Q72 = ModelSpec(73.4e9, 80, 64, 8, 128, 8192, 29568)
_Q7 = ModelSpec(8.29e9, 28, 28, 4, 128, 3584, 18944)
MODEL_SPECS = {
    "Qwen/Qwen2.5-VL-72B-Instruct": _Q72, "Qwen/Qwen2-VL-72B-Instruct": _Q72, "qwen2vl_72b": _Q72,
    "Qwen/Qwen2.5-VL-32B-Instruct": ModelSpec(33.5e9, 64, 40, 8, 128, 5120, 27648),
    "Qwen/Qwen2.5-VL-7B-Instruct": _Q7, "Qwen/Qwen2-VL-7B-Instruct": _Q7, "qwen2vl_7b": _Q7,
    "meta-llama/Llama-3.3-70B-Instruct": ModelSpec(70.6e9, 80, 64, 8, 128, 8192, 28672, 128256),
    "allenai/Olmo-3.1-32B-Instruct": ModelSpec(32.2e9, 64, 40, 8, 128, 5120, 27648, 100278),
}

# Nominal figures (datasheets), NOT measurements: replaced by measured throughput (plan.measured / plan.throughput).
GPU_SPECS = {
    "H100 64GB": {"bf16_tflops": 989.0, "hbm_tb_s": 1.6, "source": "NVIDIA H100 SXM dense bf16; 64 GB HBM2 variant"},
    "A100 64GB": {"bf16_tflops": 312.0, "hbm_tb_s": 1.6, "source": "NVIDIA A100 SXM dense bf16; 64 GB HBM2e variant"},
}


USABLE = 0.95  # of a GPU's memory: CUDA context, allocator fragmentation
VLLM_RESERVE_GIB = 4.0  # vLLM's activation peak while profiling + CUDA graphs + NCCL buffers (assumption)
CUDA_CONTEXT_GIB = 1.0  # a second model's CUDA context / allocator slack on a shared GPU


def ppl_reserve_gib(spec: ModelSpec, batch_tokens: int) -> float:
    """Activation memory of one no-grad perplexity forward of `batch_tokens` tokens (the chunk bound of
    `batch_perplexity`): a few hidden- and intermediate-size tensors live at a time, plus fp32 logits of at most
    every token (logits are computed only at trained positions, so this is the worst case)."""
    per_token = 8 * spec.hidden + 4 * spec.intermediate + 6 * spec.vocab
    return batch_tokens * per_token / 2**30


@dataclass
class GpuLayout:
    tensor_parallel_size: int
    gpu_memory_utilization: float
    vllm_gpus: list[int]
    ppl_gpu: int | None  # None: no perplexity model
    shared: bool  # the perplexity model sits beside a vLLM shard on ppl_gpu
    kv_cache_tokens: int  # vLLM's KV cache capacity over all its GPUs
    budget: dict[str, float] = field(default_factory=dict)  # GiB per GPU: weights, reserve, kv, ppl
    notes: list[str] = field(default_factory=list)


def gpu_layout(tag: ModelSpec, ppl: ModelSpec | None, *, gpus: int, gpu_gib: float, max_model_len: int,
               ppl_batch_tokens: int = 4096, tensor_parallel_size: int | None = None,
               gpu_memory_utilization: float | None = None) -> GpuLayout:
    """Where the vLLM tagger and the perplexity model go on a node of `gpus` x `gpu_gib`, with budgets that add up.

    Tensor parallel: the smallest power of two dividing the attention heads that holds the tagger's weights, vLLM's
    reserve and the KV cache of one `max_model_len` request (vLLM refuses to start without that). vLLM takes
    `gpu_memory_utilization` x memory on each of its GPUs (a per-instance limit; it also refuses to start when less
    is free). The perplexity model gets its own GPU when one is left; else it shares GPU 0 and vLLM's share is
    capped so that the perplexity weights + a chunk's activations fit beside it. An explicit utilization that would
    not leave that room is refused (the OOM on the first perplexity batch, at config time)."""
    usable = gpu_gib * USABLE
    ppl_need = 0.0 if ppl is None else ppl.weights_gib + ppl_reserve_gib(ppl, ppl_batch_tokens) + CUDA_CONTEXT_GIB
    if ppl is not None and ppl_need > usable:
        raise ConfigError(f"the perplexity model needs {ppl_need:.1f} GiB > one GPU's {usable:.1f} GiB; lower "
                          "filter.scorer.ppl_batch_tokens")
    candidates = [int(tensor_parallel_size)] if tensor_parallel_size else [t for t in (1, 2, 4, 8) if t <= gpus]
    reasons = []
    for tp in candidates:
        if tp > gpus:
            reasons.append(f"tensor_parallel_size={tp} > {gpus} GPUs per node")
            continue
        if tag.attention_heads % tp:
            reasons.append(f"tensor_parallel_size={tp} does not divide {tag.attention_heads} attention heads")
            continue
        shared = ppl is not None and tp == gpus
        u_max = (usable - (ppl_need if shared else 0.0)) / gpu_gib
        if gpu_memory_utilization is not None:
            u = float(gpu_memory_utilization)
        else:
            u = math.floor(min(u_max, 0.90) * 100) / 100 - (0.01 if shared else 0.0)
        if shared and u > u_max + 1e-9:
            raise ConfigError(
                f"filter.scorer.gpu_memory_utilization={u} leaves {gpu_gib * (USABLE - u):.1f} GiB beside vLLM on GPU 0,"
                f" but the perplexity model needs {ppl_need:.1f} GiB there (weights {ppl.weights_gib:.1f} + activations"
                f" + context): use <= {u_max:.2f}, or leave it unset")
        weights = tag.weights_gib / tp
        kv_one = max_model_len * tag.kv_bytes_per_token / tp / 2**30
        kv_room = u * gpu_gib - weights - VLLM_RESERVE_GIB
        if kv_room < kv_one:
            reasons.append(f"tensor_parallel_size={tp}: {u:.2f} x {gpu_gib:.0f} GiB holds {weights:.1f} GiB of weights"
                           f" + {VLLM_RESERVE_GIB:.0f} GiB reserve but not the {kv_one:.2f} GiB KV cache of one "
                           f"{max_model_len}-token request" + (" beside the perplexity model" if shared else ""))
            continue
        kv_tokens = int(kv_room * 2**30 * tp / tag.kv_bytes_per_token)
        notes = []
        if kv_tokens < 4 * max_model_len:
            notes.append(f"KV cache holds {kv_tokens:,} tokens (< 4 requests of max_model_len={max_model_len}): "
                         "vLLM batches fewer requests; lower max_model_len for throughput")
        return GpuLayout(tp, u, list(range(tp)), None if ppl is None else (0 if shared else tp), shared, kv_tokens,
                         {"tag_weights": round(weights, 2), "vllm_reserve": VLLM_RESERVE_GIB,
                          "kv_cache": round(kv_room, 2), "ppl": round(ppl_need, 2), "gpu": gpu_gib}, notes)
    raise ConfigError(f"no vLLM layout fits {gpus} x {gpu_gib:.0f} GiB: " + "; ".join(reasons))


def layout_for(scorer_cfg, cluster_cfg, *, tag_model: str, ppl_model: str | None) -> GpuLayout | None:
    """gpu_layout for the configured scorer on the configured cluster; None when a model or the GPUs are unknown."""
    tag = MODEL_SPECS.get(tag_model)
    gpus = int(getattr(cluster_cfg, "gpus_per_node", 0) or 0)
    mem = getattr(cluster_cfg, "gpu_memory_gb", None)
    if tag is None or not gpus or not mem:
        return None
    return gpu_layout(tag, MODEL_SPECS.get(ppl_model) if ppl_model else None, gpus=gpus, gpu_gib=float(mem),
                      max_model_len=int(scorer_cfg.max_model_len), ppl_batch_tokens=int(scorer_cfg.ppl_batch_tokens),
                      tensor_parallel_size=scorer_cfg.tensor_parallel_size,
                      gpu_memory_utilization=scorer_cfg.gpu_memory_utilization)
