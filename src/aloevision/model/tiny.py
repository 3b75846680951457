"""A tiny Qwen2-VL built offline: seeded random weights, a locally trained byte-level BPE tokenizer that carries every
Qwen2-VL special token, the Qwen2-VL chat template and image processor.

It is built deterministically on first use into a cache folder and then loaded with exactly the code that loads
`Qwen/Qwen2-VL-7B-Instruct`, so the demo and the tests exercise the real loading path without the Hub.
"""

from __future__ import annotations

import json
from pathlib import Path

from aloevision.utils.locks import file_lock

# Qwen2-VL's added tokens, in the real id order (151643-151656 in the real vocabulary).
QWEN2VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CHAT_TEMPLATE_PATH = Path(__file__).with_name("qwen2_vl_chat_template.jinja")
# Bump when anything below changes what is built, so caches rebuild.
TINY_BUILD_VERSION = "1"


def _training_corpus() -> list[str]:
    """A small deterministic English/medical corpus: enough merges for words the demo uses."""
    from aloevision.demo.vocabulary import corpus_sentences

    return corpus_sentences()


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(_training_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN2VL_SPECIAL_TOKENS[1:],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN2VL_SPECIAL_TOKENS})
    tok.chat_template = CHAT_TEMPLATE_PATH.read_text()
    return tok


def build_tiny(out_dir: Path, spec: dict) -> Path:
    """Build the tiny model, tokenizer and processor into `out_dir` (atomically)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from aloevision.model.processor import ImageOnlyQwen2VLProcessor

    tok = build_tokenizer(spec["tokenizer_vocab_size"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    hidden = spec["hidden_size"]
    heads = spec["num_attention_heads"]
    head_dim = hidden // heads
    # M-RoPE splits head_dim/2 rotary frequencies over (temporal, height, width), highest frequencies first: the
    # spec's `mrope_section` (None: Qwen2-VL's 2:1:1-like split) and `rope_theta` decide how well the LLM sees where
    # an image token is (with Qwen2-VL's 1e6 the height/width pairs of a 16-dim head barely rotate over a 4x4 grid).
    half = head_dim // 2
    mrope = list(spec.get("mrope_section") or [half - 2 * (half // 3), half // 3, half // 3])
    if sum(mrope) != half:
        raise ValueError(f"tiny model: mrope_section {mrope} must sum to head_dim/2 = {half} "
                         f"(hidden_size {hidden} / num_attention_heads {heads} / 2)")
    rope_theta = float(spec.get("rope_theta", 1000000.0))
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=spec["intermediate_size"],
            num_hidden_layers=spec["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=spec["num_key_value_heads"],
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
            tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=spec["vision_depth"],
            embed_dim=spec["vision_embed_dim"],
            num_heads=spec["vision_num_heads"],
            hidden_size=hidden,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec["seed"])
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False

    image_processor = Qwen2VLImageProcessorPil(min_pixels=spec["min_pixels"], max_pixels=spec["max_pixels"])
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "tiny_spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))

    from aloevision.artifacts import write_folder_atomic

    return write_folder_atomic(out_dir, fill)


def ensure_tiny(cache_dir: str | Path, spec: dict) -> Path:
    """Path of the tiny checkpoint for `spec`, building it once (safe when several jobs ask at once)."""
    from aloevision.utils.fingerprint import fingerprint

    key = fingerprint({"spec": spec, "build": TINY_BUILD_VERSION, "corpus": _training_corpus()})
    out = Path(cache_dir) / f"tiny-qwen2vl-{key}"
    if (out / "tiny_spec.json").is_file():
        return out
    with file_lock(out.with_suffix(".lock")):
        if not (out / "tiny_spec.json").is_file():
            build_tiny(out, spec)
    return out
