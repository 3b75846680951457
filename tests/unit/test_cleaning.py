"""Cleaning rules (every drop reason), every image mode real data has, hostile paths, decompression bombs, archive
access (zip / tar / tar.gz with checkpoints / split parts / tar.zst), seeded caps and the drop counter."""

from __future__ import annotations

import io
import os
import random
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from PIL import Image

import aloevision.images as images_mod
from aloevision.cleaning import (
    DropCounter,
    ImageCheck,
    PathEscape,
    clean,
    default_rules,
)
from aloevision.images import (
    ImageError,
    get_archive,
    image_size,
    iter_archive,
    make_ref,
    open_image,
    read_image_bytes,
    resolve_ref,
    to_rgb,
    verify_image,
)
from aloevision.schema import Drop, Sample, image_part, text_part
from aloevision.sources.base import ImageLocator


@pytest.fixture(autouse=True)
def _index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOEVISION_INDEX_CACHE", str(tmp_path / "index-cache"))


def save(path: Path, im: Image.Image, fmt: str | None = None) -> str:
    im.save(path, fmt)
    return str(path)


def sample(refs: list[str], sid: str = "s", user: str = "What is this?", answer: str = "A scan.") -> Sample:
    content = [image_part() for _ in refs] + [text_part(user)]
    return Sample(f"t/{sid}", "t", "medical", "multimodal",
                  [{"role": "user", "content": content}, {"role": "assistant", "content": [text_part(answer)]}],
                  list(refs))


def reason(s: Sample, **kw) -> str | None:
    out = list(clean([s], default_rules(**kw)))
    assert len(out) == 1
    return out[0].reason if isinstance(out[0], Drop) else None


# ------------------------------------------------------------------------------------------------ image modes


def mode_images(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    out = {}
    out["L"] = save(tmp_path / "l.png", Image.fromarray(rng.integers(0, 255, (70, 64), dtype=np.uint8)))
    i16 = Image.fromarray(rng.integers(0, 4000, (70, 64), dtype=np.uint16))
    assert i16.mode == "I;16"
    out["I;16"] = save(tmp_path / "i16.png", i16)
    out["I;16 tiff"] = save(tmp_path / "i16.tif", i16)
    out["I"] = save(tmp_path / "i32.tif", Image.fromarray(rng.integers(-500, 70000, (70, 64), dtype=np.int32)))
    out["F"] = save(tmp_path / "f.tif", Image.fromarray(rng.normal(0, 100, (70, 64)).astype(np.float32)))
    out["RGB"] = save(tmp_path / "rgb.jpg", Image.new("RGB", (64, 70), (10, 200, 30)))
    out["RGBA"] = save(tmp_path / "rgba.png", Image.new("RGBA", (64, 70), (10, 200, 30, 128)))
    out["P"] = save(tmp_path / "p.png", Image.new("RGB", (64, 70), (9, 9, 9)).convert("P"))
    out["P gif"] = save(tmp_path / "p.gif", Image.new("P", (64, 70), 3))
    out["CMYK"] = save(tmp_path / "cmyk.jpg", Image.new("CMYK", (64, 70), (0, 50, 100, 0)))
    out["CMYK tiff"] = save(tmp_path / "cmyk.tif", Image.new("CMYK", (64, 70), (0, 50, 100, 0)))
    out["LA"] = save(tmp_path / "la.png", Image.new("LA", (64, 70), (100, 200)))
    return out


def test_every_image_mode_passes_checks_and_converts(tmp_path):
    modes = mode_images(tmp_path)
    for label, ref in modes.items():
        mode = label.split()[0]
        assert reason(sample([ref])) is None, label
        assert verify_image(ref, decode=True) == (64, 70), label
        im = open_image(ref)
        assert im.mode.startswith(mode if mode != "I;16" else "I;16") or (mode, im.mode) in {("I", "I;32")}, label
        rgb = to_rgb(im)
        assert rgb.mode == "RGB" and rgb.size == (64, 70), label
    # High-bit-depth images are scaled, not clipped to white by a plain convert.
    arr = np.asarray(to_rgb(open_image(modes["I;16"])))
    assert 0 <= arr.min() < 20 and arr.max() > 235 and arr.std() > 30


# ---------------------------------------------------------------------------------------------- each reason


def png_with_size(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (the pixel data is a single row; only the header is read)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature + length/type of IHDR
    data[ihdr:ihdr + 8] = struct.pack(">II", w, h)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    return bytes(data)


def test_every_image_reason(tmp_path):
    good = save(tmp_path / "good.png", Image.new("RGB", (60, 60)))
    jpg = tmp_path / "good.jpg"
    Image.effect_noise((120, 120), 60).convert("RGB").save(jpg, quality=90)
    (tmp_path / "trunc.jpg").write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    png_bytes = Path(good).read_bytes()
    (tmp_path / "trunc.png").write_bytes(png_bytes[: len(png_bytes) - 20])
    bad_crc = bytearray(png_bytes)
    bad_crc[-13] ^= 0xFF  # flip a CRC byte of the last IDAT chunk (IEND is the final 12 bytes)
    (tmp_path / "crc.png").write_bytes(bytes(bad_crc))
    (tmp_path / "garbage.png").write_bytes(os.urandom(300))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(png_with_size(30000, 30000))
    (tmp_path / "big.png").write_bytes(png_with_size(5000, 5000))
    small = save(tmp_path / "small.png", Image.new("RGB", (49, 200)))

    assert reason(sample([good])) is None
    assert reason(sample([str(jpg)])) is None
    assert reason(sample([str(tmp_path / "nope.png")])) == "missing_image"
    assert reason(sample([str(tmp_path)])) == "unreadable_image"  # a directory
    assert reason(sample([str(tmp_path / "garbage.png")])) == "unreadable_image"
    assert reason(sample([str(tmp_path / "trunc.jpg")])) == "truncated_image"
    assert reason(sample([str(tmp_path / "trunc.png")])) == "truncated_image"
    assert reason(sample([str(tmp_path / "empty.png")])) == "truncated_image"
    assert reason(sample([str(tmp_path / "crc.png")])) == "corrupt_image"
    assert reason(sample([str(tmp_path / "bomb.png")])) == "decompression_bomb"  # over Pillow's own hard limit
    # 25 Mpx declared, a few bytes of data: refused from the header (expansion ratio), never decoded
    assert reason(sample([str(tmp_path / "big.png")])) == "decompression_bomb"
    assert reason(sample([good]), max_pixels=100) == "decompression_bomb"
    assert reason(sample([small])) == "image_too_small"
    assert reason(sample([small]), min_size=40) is None
    assert reason(sample([good] * 6)) == "too_many_images"
    assert reason(sample([good] * 5)) is None
    with pytest.raises(ImageError) as e:
        image_size(str(tmp_path / "bomb.png"))
    assert e.value.reason == "decompression_bomb"


def test_structure_reasons(tmp_path):
    good = save(tmp_path / "good.png", Image.new("RGB", (60, 60)))
    s = sample([good])
    assert reason(s) is None
    s.messages[1]["content"] = [text_part("  ")]
    assert reason(s) == "empty_turn"
    s = sample([good])
    s.messages.append({"role": "assistant", "content": [text_part("again")]})
    assert reason(s) == "non_alternating_turns"
    s = sample([good])
    s.messages = s.messages[:1]
    assert reason(s) == "no_assistant_turn"
    s = sample([good])
    s.images.append(good)
    assert reason(s) == "placeholder_mismatch"
    s = sample([good])
    s.messages[1]["content"].append(image_part())
    s.images.append(good)
    assert reason(s) == "placeholder_mismatch"  # images only in user turns
    s = sample([str(tmp_path / "missing.png")], answer="")
    assert reason(s) == "empty_turn"  # cheap structural rules run before image reads
    text_only = Sample("t/x", "t", "general", "text", [{"role": "system", "content": [text_part("sys")]},
                       {"role": "user", "content": [text_part("q")]},
                       {"role": "assistant", "content": [text_part("a")]}])
    assert reason(text_only) is None


def test_cheap_check_reads_headers_decode_is_thorough(tmp_path):
    # A PNG whose compressed pixel data is damaged but whose chunk CRCs are recomputed: the cheap check passes (no
    # pixel decode), decode=True catches it.
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 80).convert("L").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    for k in range(idat + 40, idat + 4 + length, 5):
        data[k] ^= 0x5A
    data[idat + 4 + length:idat + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[idat:idat + 4 + length])))
    (tmp_path / "x.png").write_bytes(bytes(data))
    ref = str(tmp_path / "x.png")
    assert ImageCheck(decode=False).check(sample([ref])) is None
    verdict = ImageCheck().check(sample([ref]))  # the default: the full shared decode
    assert verdict is not None and verdict[0] in ("corrupt_image", "truncated_image")


# -------------------------------------------------------------------------------------------- hostile paths


def test_resolve_ref_rejects_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (root / "link_out.png").symlink_to(outside)
    (root / "link_in.png").symlink_to(root / "sub" / "a.png")
    (root / "dir_out").symlink_to(tmp_path)
    assert resolve_ref(root, "sub/a.png") == str((root / "sub" / "a.png").resolve())
    assert resolve_ref(root, "link_in.png") == str((root / "sub" / "a.png").resolve())
    for rel in ["../secret.png", "sub/../../secret.png", str(outside), "/etc/passwd", "link_out.png",
                "dir_out/secret.png", "..\\secret.png", "C:\\Windows\\x.png"]:
        with pytest.raises(ImageError) as e:
            resolve_ref(root, rel)
        assert e.value.reason == "path_escape", rel
    with pytest.raises(ImageError) as e:
        resolve_ref(root, "")
    assert e.value.reason == "missing_image"


def test_locator_and_rules_reject_hostile_paths(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    loc = ImageLocator(root, None)
    for rel in ["../secret.png", "/etc/passwd"]:
        with pytest.raises(ImageError) as e:
            loc.locate(rel)
        assert e.value.reason == "path_escape"
    with pytest.raises(ImageError) as e:
        loc.locate("/abs/../../etc/passwd", absolute_ok=True)
    assert e.value.reason == "path_escape"
    good = save(root / "ok.png", Image.new("RGB", (60, 60)))
    rule = PathEscape([str(root)])
    assert rule.check(sample([good])) is None
    assert rule.check(sample([str(tmp_path / "secret.png")]))[0] == "path_escape"
    assert rule.check(sample([str(root) + "/../secret.png"]))[0] == "path_escape"
    assert rule.check(sample([make_ref(root / "a.zip", "../../etc/passwd")]))[0] == "path_escape"
    assert reason(sample([make_ref(root / "a.zip", "/etc/passwd")])) == "path_escape"


def test_hostile_archive_members_are_never_read(tmp_path):
    payload = io.BytesIO()
    Image.new("RGB", (60, 60)).save(payload, "PNG")
    with tarfile.open(tmp_path / "evil.tar", "w") as tf:
        for name in ("../evil.png", "ok/fine.png"):
            info = tarfile.TarInfo(name)
            info.size = len(payload.getvalue())
            tf.addfile(info, io.BytesIO(payload.getvalue()))
    arc = str(tmp_path / "evil.tar")
    assert image_size(make_ref(arc, "ok/fine.png")) == (60, 60)
    with pytest.raises(ImageError) as e:
        read_image_bytes(make_ref(arc, "../evil.png"))
    assert e.value.reason == "path_escape"
    assert not (tmp_path.parent / "evil.png").exists()


# ---------------------------------------------------------------------------------------------------- archives


def build_members(tmp_path: Path, n: int = 30) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        buf = io.BytesIO()
        Image.effect_noise((60 + i, 50), 40).convert("L").save(buf, "PNG")
        out[f"imgs/{i:03d}.png"] = buf.getvalue()
    return out


def write_tar(path: Path, members: dict[str, bytes], mode: str) -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "split", "tar.zst", "pigz"])
def test_archives_random_access(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(images_mod, "GZ_CHECKPOINT_BYTES", 20_000)
    members = build_members(tmp_path)
    if kind == "zip":
        arc = tmp_path / "a.zip"
        with zipfile.ZipFile(arc, "w") as z:
            for k, v in members.items():
                z.writestr(k, v)
    elif kind == "tar.zst":
        write_tar(tmp_path / "a.tar", members, "w")
        arc = tmp_path / "a.tar.zst"
        arc.write_bytes(zstandard.ZstdCompressor().compress((tmp_path / "a.tar").read_bytes()))
    elif kind == "pigz":  # several concatenated gzip members, as pigz / parallel compressors write
        write_tar(tmp_path / "a.tar", members, "w")
        raw = (tmp_path / "a.tar").read_bytes()
        arc = tmp_path / "p.tar.gz"
        import gzip
        arc.write_bytes(b"".join(gzip.compress(raw[k:k + 30000]) for k in range(0, len(raw), 30000)))
    else:
        arc = tmp_path / ("a.tar" if kind == "tar" else "a.tar.gz")
        write_tar(arc, members, "w" if kind == "tar" else "w:gz")
        if kind == "split":
            data = arc.read_bytes()
            for j, k in enumerate(range(0, len(data), len(data) // 3 + 1)):
                (tmp_path / f"a.tar.gz.a{chr(97 + j)}").write_bytes(data[k:k + len(data) // 3 + 1])
            arc.unlink()
    names = list(members)
    order = names[::-1] + random.Random(0).sample(names, len(names))  # backward jumps and random order
    for name in order:
        assert read_image_bytes(make_ref(arc, name)) == members[name], name
    assert image_size(make_ref(arc, "imgs/007.png")) == (67, 50)
    assert sorted(m for m, _ in iter_archive(arc)) == sorted(names)
    a = get_archive(arc)
    if kind in ("tar.gz", "split", "pigz"):
        assert len(a._stream.checkpoints) > 3  # backward reads restart from a checkpoint, not the beginning
    with pytest.raises(ImageError) as e:
        read_image_bytes(make_ref(arc, "imgs/none.png"))
    assert e.value.reason == "missing_image"


def test_archive_index_is_cached_on_disk(tmp_path):
    members = build_members(tmp_path, 5)
    write_tar(tmp_path / "c.tar.gz", members, "w:gz")
    get_archive(tmp_path / "c.tar.gz").index()
    cache = list((tmp_path / "index-cache").glob("*.json"))
    assert len(cache) == 1
    fresh = images_mod.Archive(str(tmp_path / "c.tar.gz"))
    assert fresh.index() == get_archive(tmp_path / "c.tar.gz").index() and fresh._stream is None  # no re-scan


def test_broken_archives_give_image_errors(tmp_path):
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(500))
    (tmp_path / "bad.zip").write_bytes(os.urandom(100))
    for arc in ("bad.tar.gz", "bad.zip", "nothing.tar"):
        with pytest.raises(ImageError) as e:
            read_image_bytes(make_ref(tmp_path / arc, "x.png"))
        assert e.value.reason in ("corrupt_image", "missing_image"), arc
    members = build_members(tmp_path, 10)
    write_tar(tmp_path / "cut.tar.gz", members, "w:gz")
    data = (tmp_path / "cut.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    reasons = set()
    for name in members:
        try:
            read_image_bytes(make_ref(tmp_path / "cut.tar.gz", name))
            reasons.add("ok")
        except ImageError as e:
            reasons.add(e.reason)
    assert reasons <= {"ok", "truncated_image", "missing_image", "corrupt_image"} and reasons != {"ok"}


# ------------------------------------------------------------------------------------------- caps and counts


def text_sample(i: int, source: str = "src") -> Sample:
    return Sample(f"{source}/{i}", source, "medical", "text",
                  [{"role": "user", "content": [text_part("q")]}, {"role": "assistant", "content": [text_part("a")]}])


def test_drop_counter_report(tmp_path):
    counter = DropCounter(examples=2)
    good = save(tmp_path / "g.png", Image.new("RGB", (60, 60)))
    stream = [sample([good], "a"), sample([str(tmp_path / "x.png")], "b"), sample([str(tmp_path / "y.png")], "c"),
              sample([str(tmp_path / "z.png")], "d"), Drop("t/e", "t", "generation_task", "image answer")]
    kept = list(counter.count(clean(stream), drops_only=True))
    assert [s.id for s in kept] == ["t/a"]
    d = counter.to_dict()["t"]
    assert d["rows_in"] == 5 and d["rows_out"] == 1
    assert d["drops"] == {"generation_task": 1, "missing_image": 3}
    assert len(d["examples"]["missing_image"]) == 2 and d["examples"]["missing_image"][0]["id"] == "t/b"
    table = counter.markdown()
    assert "missing_image | 3" in table and "| t | 5 | 1 |" in table
    other = DropCounter.from_dict(counter.to_dict())
    other.merge(counter)
    assert other.to_dict()["t"]["drops"]["missing_image"] == 6 and other.rows_out["t"] == 2
