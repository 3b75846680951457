"""The tiny offline Qwen2-VL: deterministic build, every Qwen2-VL special token, and the real loading path."""

import dataclasses

import torch
from PIL import Image

from aloevision.config import TinySpec
from aloevision.model.tiny import QWEN2VL_SPECIAL_TOKENS, ensure_tiny


def test_build_is_deterministic_and_cached(tmp_path):
    spec = dataclasses.asdict(TinySpec())
    a = ensure_tiny(tmp_path / "a", spec)
    b = ensure_tiny(tmp_path / "b", spec)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    mtime = (a / "model.safetensors").stat().st_mtime
    assert ensure_tiny(tmp_path / "a", spec) == a and (a / "model.safetensors").stat().st_mtime == mtime  # no rebuild


def test_round_trip_through_the_real_loading_path(tiny_path):
    from omegaconf import OmegaConf

    from aloevision.model.loading import load_model, load_processor_for
    from aloevision.model.processor import ImageOnlyQwen2VLProcessor

    mcfg = OmegaConf.create({"min_pixels": 3136, "max_pixels": 12544, "trust_remote_code": False,
                             "dtype": "float32", "attn_implementation": "sdpa"})
    proc = load_processor_for(mcfg, tiny_path)
    model = load_model(mcfg, tiny_path)
    assert isinstance(proc, ImageOnlyQwen2VLProcessor)  # no torchvision here: the shim
    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 1_000_000, n_params
    tok = proc.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS]
    assert len(set(ids)) == len(QWEN2VL_SPECIAL_TOKENS) and tok.unk_token_id not in ids
    # Special tokens are atomic, and the box format survives a round trip.
    text = "<|object_ref_start|>the nodule<|object_ref_end|><|box_start|>(120,340),(560,780)<|box_end|>"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|box_start|>") in enc and tok.decode(enc) == text
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the lesion?"}]}]
    prompt = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    enc = proc(text=[prompt], images=[Image.new("RGB", (200, 150), (90, 90, 90))], return_tensors="pt")
    t, h, w = enc["image_grid_thw"][0].tolist()
    assert (enc["input_ids"] == model.config.image_token_id).sum().item() == t * h * w // 4
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 or out[0, -1].item() in model.generation_config.eos_token_id


def test_position_settings_reach_the_config(tmp_path):
    """TinySpec.rope_theta / mrope_section (conf/model/tiny.yaml `tiny:`) are the built model's M-RoPE; a split that
    does not cover head_dim/2 is refused with the sizes."""
    import json

    import pytest

    spec = {**dataclasses.asdict(TinySpec()), "rope_theta": 100.0, "mrope_section": [2, 3, 3]}
    cfg = json.loads((ensure_tiny(tmp_path, spec) / "config.json").read_text())
    rope = (cfg.get("text_config") or cfg)["rope_parameters"]
    assert rope["rope_theta"] == 100.0 and rope["mrope_section"] == [2, 3, 3]
    default = json.loads((ensure_tiny(tmp_path, dataclasses.asdict(TinySpec())) / "config.json").read_text())
    assert (default.get("text_config") or default)["rope_parameters"]["mrope_section"] == [4, 2, 2]
    with pytest.raises(ValueError, match="must sum to head_dim/2 = 8"):
        ensure_tiny(tmp_path, {**spec, "mrope_section": [2, 2, 2]})
