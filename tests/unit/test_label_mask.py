"""The SFT label mask, token by token: image tokens, system and user turns never in the loss; every assistant token
and its <|im_end|> in it (multi-turn, multi-image)."""

from PIL import Image

from aloevision.model.masking import IGNORE_INDEX, collate
from aloevision.model.processor import load_processor


def test_assistant_only_mask_multi_turn_multi_image(tiny_path):
    proc = load_processor(tiny_path, min_pixels=3136, max_pixels=12544)
    tok = proc.tokenizer
    imgs = [Image.new("RGB", (120, 90), (40, 40, 40)), Image.new("L", (64, 200), 200)]
    row = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are a radiologist."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare the scans."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "The first shows a mass."}]},
            {"role": "user", "content": [{"type": "text", "text": "Where is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "In the upper left region."}]},
        ],
        "images": imgs,
    }
    batch = collate(proc, [row])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert all(l in (IGNORE_INDEX, i) for i, l in zip(ids, labels))  # labels are the ids themselves, or ignored

    # Exactly the two assistant answers, each with its end-of-turn token (and the template's newline after it).
    expected = []
    for answer in ("The first shows a mass.", "In the upper left region."):
        expected += tok(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert trained == expected

    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    n_image_tokens = sum(1 for i in ids if i == image_pad)
    assert n_image_tokens == sum(int(t * h * w) // 4 for t, h, w in batch["image_grid_thw"].tolist())
    for special in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>"):
        sid = tok.convert_tokens_to_ids(special)
        assert all(l == IGNORE_INDEX for i, l in zip(ids, labels) if i == sid), special
    # Nothing of the system prompt, the user turns or the assistant header is trained.
    text_of_untrained = tok.decode([i for i, l in zip(ids, labels) if l == IGNORE_INDEX])
    assert "radiologist" in text_of_untrained and "Compare the scans." in text_of_untrained
    assert "Where is it?" in text_of_untrained and text_of_untrained.count("<|im_start|>assistant\n") == 2


def test_text_only_row_in_a_batch_with_images(tiny_path):
    proc = load_processor(tiny_path, min_pixels=3136, max_pixels=12544)
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Explain gravity."}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Gravity pulls."}]}], "images": []},
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What modality?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "CT"}]}],
         "images": [Image.new("RGB", (80, 80))]},
    ]
    batch = collate(proc, rows)
    tok = proc.tokenizer
    for b, answer in enumerate(("Gravity pulls.", "CT")):
        trained = [i for i, l in zip(batch["input_ids"][b].tolist(), batch["labels"][b].tolist()) if l != IGNORE_INDEX]
        assert trained == tok(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
