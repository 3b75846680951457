"""One image decode everywhere (aloevision.images.decode_image): EXIF orientation, modes, limits; ingest validates
with it, so training, scoring, evaluation and the attacks all read what ingest kept, as the same pixels."""

from __future__ import annotations

import io
import os
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from aloevision import images as images_mod
from aloevision.cleaning import ImageCheck
from aloevision.images import ImageError, decode_image, read_image_bytes
from aloevision.schema import Sample


def rotated_jpeg() -> bytes:
    """A 60x40 JPEG (left half black, right half white) whose EXIF says "rotate 90 CW" (orientation 6)."""
    im = Image.new("RGB", (60, 40), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def sample(ref: str) -> Sample:
    return Sample("t/s", "t", "medical", "multimodal",
                  [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "a"}]}], [ref])


def test_exif_orientation_is_the_same_for_every_stage(tmp_path):
    from datasets import Image as HFImage

    from aloevision.adversarial.attacks import load_image
    from aloevision.scoring.score import default_image_loader
    from aloevision.training.collator import decoded_rows

    data = rotated_jpeg()
    path = tmp_path / "r.jpg"
    path.write_bytes(data)
    ref = decode_image(str(path))
    assert ref.size == (40, 60) and ref.mode == "RGB"  # rotated as a viewer shows it
    a = np.asarray(ref)
    assert a[:5].mean() < 40 and a[-5:].mean() > 215  # the black half is now on top
    from_datasets = HFImage().decode_example({"bytes": data, "path": None})  # what the trainer's rows hold
    views = {
        "bytes": decode_image(data),
        "attacks": load_image(str(path)),
        "scoring": default_image_loader()(str(path)),
        "training": decoded_rows([{"images": [from_datasets]}])[0]["images"][0],
        "training_bytes": decoded_rows([{"images": [{"bytes": data, "path": None}]}])[0]["images"][0],
    }
    for name, im in views.items():
        assert im.size == (40, 60) and im.mode == "RGB", name
        assert np.array_equal(np.asarray(im), a), name
    assert ImageCheck(min_size=20).check(sample(str(path))) is None


def test_png_text_chunk_past_pillows_limit_is_dropped_at_ingest(tmp_path):
    from datasets import Image as HFImage

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "PNG")
    png = buf.getvalue()
    # A zTXt chunk after IDAT that inflates to 4 MB (Pillow's MAX_TEXT_CHUNK is 1 MB): read only by a full load.
    ztxt = chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"A" * (4 << 20)))
    bad = png[:-12] + ztxt + png[-12:]
    (tmp_path / "text.png").write_bytes(bad)
    with pytest.raises(Exception):  # what training would hit without the shared decode at ingest
        HFImage().decode_example({"bytes": bad, "path": None}).load()
    verdict = ImageCheck().check(sample(str(tmp_path / "text.png")))
    assert verdict is not None and verdict[0] == "corrupt_image" and "text" in verdict[1].lower()


def test_header_declares_huge_image_with_almost_no_data(tmp_path):
    # 9000 x 9000 (81 Mpx, under Pillow's bomb limit) of zeros: a few hundred KB that would decode to 243 MB.
    raw = zlib.compress(b"".join(b"\x00" + bytes(9000) for _ in range(9000)), 9)
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    (tmp_path / "zeros.png").write_bytes(png)
    t = time.perf_counter()
    verdict = ImageCheck().check(sample(str(tmp_path / "zeros.png")))
    assert verdict is not None and verdict[0] == "decompression_bomb" and "holds only" in verdict[1]
    assert time.perf_counter() - t < 1.0  # refused from the header, never decoded


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "img.png"
    os.mkfifo(fifo)
    t = time.perf_counter()
    with pytest.raises(ImageError) as e:
        read_image_bytes(str(fifo))
    assert e.value.reason == "unreadable_image" and "not a regular file" in e.value.detail
    assert ImageCheck().check(sample(str(fifo)))[0] == "unreadable_image"
    fifo_zip = tmp_path / "images.zip"
    os.mkfifo(fifo_zip)
    with pytest.raises(ImageError):
        read_image_bytes(f"{fifo_zip}::a.png")
    assert time.perf_counter() - t < 2.0


def test_size_limits_refuse_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_IMAGE_BYTES", 1 << 20)
    (tmp_path / "big.bin").write_bytes(b"\x00" * (2 << 20))
    with pytest.raises(ImageError) as e:
        read_image_bytes(str(tmp_path / "big.bin"))
    assert e.value.reason == "decompression_bomb"
    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("huge.png", b"\x00" * (8 << 20))  # 8 MB that deflates to a few KB
    with pytest.raises(ImageError) as e:
        read_image_bytes(f"{tmp_path / 'z.zip'}::huge.png")
    assert e.value.reason == "decompression_bomb" and "expands to" in e.value.detail
    with pytest.raises(ImageError) as e:
        read_image_bytes(str(tmp_path / "bad\x00name.png"))
    assert e.value.reason == "invalid_path"
