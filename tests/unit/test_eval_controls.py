"""The evaluation engine's controls: `eval.blank_images` (every image replaced by a grey one of the same size) and
`eval.leaked_items` (which items count as leaked, read from a PLANTED.json-style list)."""

from __future__ import annotations

import io
import json

from PIL import Image

from aloevision.evalsets.base import EvalItem
from aloevision.evaluation.runner import blank_images, leaked_item_ids


def _jpeg(size, colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_blank_images_keeps_sizes_and_drops_the_pixels(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (64, 40), 255).save(path)
    item = EvalItem("1", "b", "mcq", "q?", "A", {"A": "x", "B": "y"}, [_jpeg((96, 80), (200, 10, 10)), str(path)])
    out = blank_images(item)
    assert [im.size for im in out.images] == [(96, 80), (64, 40)]
    assert all(im.getextrema() == ((128, 128),) * 3 for im in out.images)
    assert item.images[1] == str(path) and out.question == item.question  # the original item is unchanged
    broken = EvalItem("2", "b", "open", "q?", "a", images=[b"not an image at all"])
    assert blank_images(broken).images == [b"not an image at all"]  # left for the generator to count as undecodable


def test_leaked_item_ids_reads_eval_items_only(tmp_path):
    planted = [{"kind": "eval_leak_item", "eval_items": [{"benchmark": "careqa_vision_mcq", "id": "cqv-close-001"}]},
               {"kind": "eval_leak_item", "eval_items": [{"benchmark": "careqa_vision_mcq", "id": "cqv-close-001"}]},
               {"kind": "eval_leak_exact", "eval_benchmark": "demo_open", "eval_id": "3"},
               {"kind": "corrupt_image", "source": "pubmedvision"}]
    f = tmp_path / "PLANTED.json"
    f.write_text(json.dumps(planted))
    assert leaked_item_ids(str(f)) == {("careqa_vision_mcq", "cqv-close-001")}
    assert leaked_item_ids(None) == set()
