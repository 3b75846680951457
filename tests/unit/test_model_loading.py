"""One model-loading path for training, scoring and evaluation: where a model runs (one GPU / a node's GPUs / CPU),
which attention kernel, which dtype, and the settings a device cannot run refused with the key to change. The GPU
nodes are described as data (the placement rules are a pure function); the CPU load is real."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from aloevision.config import ConfigError
from aloevision.model import loading
from aloevision.model.loading import Devices, placement
from conftest import REPO

H100x4 = Devices("cuda", ["NVIDIA H100"] * 4, [64.0] * 4, [(9, 0)] * 4)  # MareNostrum 5 node
A100x4 = Devices("cuda", ["NVIDIA A100-SXM-64GB"] * 4, [64.0] * 4, [(8, 0)] * 4)  # Leonardo node
V100x4 = Devices("cuda", ["Tesla V100-SXM2-32GB"] * 4, [32.0] * 4, [(7, 0)] * 4)
CPU = Devices()
GB_7B, GB_72B = 8.29e9 * 2 / 2**30, 73.4e9 * 2 / 2**30  # bf16 weights as stored


def model(name):
    return OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")


@pytest.mark.parametrize("node", [H100x4, A100x4])
def test_7b_inference_on_one_gpu_72b_across_the_node(node):
    p = placement(model("qwen2vl_7b"), node, size_gb=GB_7B, local_rank=2)
    assert p.device_map == {"": "cuda:2"} and p.dtype == "bfloat16"
    p = placement(model("qwen2vl_72b"), node, size_gb=GB_72B)
    assert p.device_map == "auto" and p.max_memory == {i: "57GiB" for i in range(4)}
    assert any("spread over the node's 4 GPUs" in n for n in p.notes)


def test_72b_that_does_not_fit_the_node_is_refused():
    two = Devices("cuda", ["NVIDIA H100"] * 2, [64.0] * 2, [(9, 0)] * 2)
    with pytest.raises(ConfigError, match="do not fit this node's 2 GPU"):
        placement(model("qwen2vl_72b"), two, size_gb=GB_72B)


def test_training_leaves_placement_to_the_trainer():
    p = placement(model("qwen2vl_72b"), H100x4, for_training=True, size_gb=GB_72B)
    assert p.device_map is None and p.dtype == "bfloat16"


def test_flash_attention_when_installed_else_sdpa(monkeypatch):
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: False)
    p = placement(model("qwen2vl_7b"), H100x4, size_gb=GB_7B)
    assert p.attn_implementation == "sdpa" and any("--no-build-isolation" in n for n in p.notes)
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    assert placement(model("qwen2vl_7b"), H100x4, size_gb=GB_7B).attn_implementation == "flash_attention_2"


def test_settings_the_device_cannot_run_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match=r"model.dtype=bfloat16 needs an Ampere .*Tesla V100.*7\.0"):
        placement(model("qwen2vl_7b"), V100x4, size_gb=GB_7B)
    fp16 = model("qwen2vl_7b")
    fp16.dtype = "float16"
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    with pytest.raises(ConfigError, match="model.attn_implementation=sdpa"):
        placement(fp16, V100x4, size_gb=GB_7B)
    fp32 = model("qwen2vl_7b")
    fp32.dtype = "float32"
    with pytest.raises(ConfigError, match="runs in bf16/fp16 only"):
        placement(fp32, H100x4, size_gb=GB_7B)


def test_cpu_inference_is_fp32_sdpa_and_loads_for_real(tiny_path):
    p = placement(model("qwen2vl_7b"), CPU)
    assert (p.dtype, p.attn_implementation, p.device_map) == ("float32", "sdpa", None)
    assert placement(model("qwen2vl_7b"), CPU, for_training=True).dtype == "bfloat16"
    tiny = model("tiny")
    m = loading.load_model(tiny, tiny_path, devices=CPU)
    assert str(m.device) == "cpu" and m.config._attn_implementation == "sdpa"
    assert 0 < loading.weights_gb(tiny_path) < 0.1
