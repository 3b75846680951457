"""The scorers' GPU layout (config level, by arithmetic: vLLM is not installable on this CPU machine): the paper's
72B tagger + 7B perplexity model and a 7B tagger, on both clusters' nodes (4 x 64 GB H100 / A100), are valid by
construction, and the perplexity model never shares a GPU's memory budget blindly with vLLM."""

from __future__ import annotations

import pytest

from aloevision.config import ConfigError
from aloevision.gpus import (
    CUDA_CONTEXT_GIB, MODEL_SPECS, USABLE, VLLM_RESERVE_GIB, gpu_layout, layout_for, ppl_reserve_gib)
from conftest import compose

TAG72, TAG7, PPL7 = "Qwen/Qwen2.5-VL-72B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"


def _check_budget(layout, tag, ppl, gpu_gib, max_model_len, ppl_tokens):
    """The invariants vLLM and torch will enforce at start-up / first batch, recomputed independently."""
    tp, u = layout.tensor_parallel_size, layout.gpu_memory_utilization
    assert tag.attention_heads % tp == 0 and 0 < u < 1
    weights = tag.params * 2 / 2**30 / tp
    kv_one = max_model_len * (2 * tag.layers * tag.kv_heads * tag.head_dim * 2) / tp / 2**30
    assert weights + VLLM_RESERVE_GIB + kv_one <= u * gpu_gib  # vLLM starts and can serve one full request
    if ppl is not None:
        need = ppl.params * 2 / 2**30 + ppl_reserve_gib(ppl, ppl_tokens) + CUDA_CONTEXT_GIB
        if layout.shared:
            assert layout.ppl_gpu in layout.vllm_gpus
            assert u * gpu_gib + need <= USABLE * gpu_gib + 1e-9  # both fit on the shared GPU
        else:
            assert layout.ppl_gpu not in layout.vllm_gpus and need <= USABLE * gpu_gib


@pytest.mark.parametrize("cluster", ["marenostrum5", "leonardo"])
@pytest.mark.parametrize("tag_model,tp,shared", [(TAG72, 4, True), (TAG7, 1, False)])
def test_paper_scorer_configs_on_both_clusters(tmp_path, cluster, tag_model, tp, shared):
    cfg = compose(["filter=paper", f"cluster={cluster}", f"filter.scorer.tag_model={tag_model}"], root=tmp_path)
    sc = cfg.filter.scorer
    layout = layout_for(sc, cfg.cluster, tag_model=sc.tag_model, ppl_model=sc.ppl_model)
    assert (layout.tensor_parallel_size, layout.shared) == (tp, shared)
    _check_budget(layout, MODEL_SPECS[tag_model], MODEL_SPECS[PPL7], cfg.cluster.gpu_memory_gb, sc.max_model_len,
                  sc.ppl_batch_tokens)
    assert layout.kv_cache_tokens >= sc.max_model_len


def test_72b_alone_gets_the_default_share_and_more_kv():
    tag = MODEL_SPECS[TAG72]
    alone = gpu_layout(tag, None, gpus=4, gpu_gib=64, max_model_len=8192)
    beside = gpu_layout(tag, MODEL_SPECS[PPL7], gpus=4, gpu_gib=64, max_model_len=8192)
    assert alone.gpu_memory_utilization == 0.9 and alone.ppl_gpu is None
    assert beside.gpu_memory_utilization < 0.65 and beside.kv_cache_tokens < alone.kv_cache_tokens
    _check_budget(alone, tag, None, 64, 8192, 4096)


def test_blind_sharing_and_impossible_layouts_are_refused():
    tag, ppl = MODEL_SPECS[TAG72], MODEL_SPECS[PPL7]
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization=0.9 leaves .* perplexity model needs"):
        gpu_layout(tag, ppl, gpus=4, gpu_gib=64, max_model_len=8192, gpu_memory_utilization=0.9)
    with pytest.raises(ConfigError, match="does not divide 64 attention heads"):
        gpu_layout(tag, ppl, gpus=4, gpu_gib=64, max_model_len=8192, tensor_parallel_size=3)
    with pytest.raises(ConfigError, match="no vLLM layout fits 2 x 64 GiB"):
        gpu_layout(tag, ppl, gpus=2, gpu_gib=64, max_model_len=8192)
    with pytest.raises(ConfigError, match="KV cache of one 32768-token request"):
        gpu_layout(tag, ppl, gpus=4, gpu_gib=64, max_model_len=32768)


def test_config_without_gpus_has_no_layout(tmp_path):
    cfg = compose(["filter=paper"], root=tmp_path)  # cluster=local: no GPUs declared
    sc = cfg.filter.scorer
    assert layout_for(sc, cfg.cluster, tag_model=sc.tag_model, ppl_model=sc.ppl_model) is None


def test_measured_scoring_rates_reach_the_plan(tmp_path, tiny_path):
    """A real (tiny, CPU) scoring pass times itself; the file it writes is what plan.measured reads."""
    from PIL import Image

    from aloevision.planning import _measured
    from aloevision.schema import image_part, text_part, turn
    from aloevision.scoring.backends import TransformersBackend, write_throughput

    backend = TransformersBackend(tiny_path, tiny_path, device="cpu", max_new_tokens=4)
    row = {"messages": [turn("user", image_part(), text_part("What is it?")), turn("assistant", text_part("A cyst."))],
           "images": [Image.new("RGB", (56, 56))]}
    backend.generate([(row["messages"][:1], row["images"])] * 2)
    backend.perplexity([row, row])
    path = write_throughput(backend, tmp_path, gpus=4)
    rates = _measured([str(tmp_path)])
    assert rates["tag"][0] > 0 and rates["perplexity"][0] > 0 and str(path) in rates["tag"][1]
    assert backend.timing["generate_items"] == 2 and backend.timing["perplexity_items"] == 2
