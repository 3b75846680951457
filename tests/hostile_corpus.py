"""A hostile-input corpus, built on the fly: every training source in its release's file tree (so a plain
`paths.data_dir=<root>` run reads all of them with no per-source override), each holding good rows next to hostile
ones: file-system oddities (FIFOs, directories, escaping and dangling symlinks, NUL bytes in paths), encodings
(non-UTF-8 bytes, lone surrogates, BOM, CRLF), JSON pathologies (deep nesting, a file cut off mid-record, non-object
rows, NaN, wrong types, huge fields), image tricks (PNG text-chunk bombs, header-huge images, truncated / fake /
empty files, EXIF rotation, 16-bit, palette + alpha, CMYK, animated GIF), box and mask edge cases, duplicate ids and
damaged archives / parquet files.

`build(root)` returns {source: number of good rows that must be kept}; everything else must be dropped with a reason
(or, for parts of damaged files, reported as malformed)."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

H = lambda v: {"from": "human", "value": v}  # noqa: E731
G = lambda v: {"from": "gpt", "value": v}  # noqa: E731
DEEP = 200_000  # nesting depth far past Python's recursion limit


def _png(size=(96, 80), color=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        a = (np.arange(size[0] * size[1], dtype=np.uint16).reshape(size[1], size[0]) * 7)
        Image.fromarray(a).save(buf, "PNG")  # uint16 -> mode I;16
    elif mode == "PA":
        im = Image.new("P", size)
        im.putpalette([i % 256 for i in range(768)])
        im.info["transparency"] = 0
        im.save(buf, "PNG", transparency=0)
    else:
        Image.new(mode, size, color if mode == "RGB" else 128).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(size=(96, 80), mode="RGB", exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.effect_noise(size, 40).convert(mode)
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("P", (80, 80), i * 40) for i in range(3)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _text_bomb_png() -> bytes:
    png = _png()
    return png[:-12] + _chunk(b"zTXt", b"c\x00\x00" + zlib.compress(b"A" * (3 << 20))) + png[-12:]


def _header_huge_png() -> bytes:
    raw = zlib.compress(b"".join(b"\x00" + bytes(4100) for _ in range(4100)), 9)  # 16.8 Mpx of zeros
    ihdr = struct.pack(">IIBBBBB", 4100, 4100, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b"")


def _mask(size, rect) -> bytes:
    m = Image.new("L", size, 0)
    if rect:
        ImageDraw.Draw(m).rectangle(rect, fill=255)
    buf = io.BytesIO()
    m.save(buf, "PNG")
    return buf.getvalue()


def _deep(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def _jsonl(path: Path, lines: list) -> None:
    """Rows as JSON lines; a `bytes` item is written raw (for hostile bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for item in lines:
            f.write(item if isinstance(item, bytes) else (json.dumps(item) + "\n").encode())


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def conv(q: str = "What does this image show?", a: str = "A medical image with a finding.") -> list:
    return [H(q), G(a)]


# ------------------------------------------------------------------------------------------------ sources


def pubmedvision(root: Path) -> int:
    d = root / "pubmedvision"
    (d / "images").mkdir(parents=True)
    good = {f"images/pmc_{k}.jpg": _jpeg() for k in range(4)}
    odd = {
        "images/rot.jpg": _jpeg(exif_orientation=6), "images/i16.png": _png(mode="I;16"),
        "images/pa.png": _png(mode="PA"), "images/cmyk.jpg": _jpeg(mode="CMYK"), "images/anim.gif": _gif(),
    }
    hostile = {
        "images/textbomb.png": _text_bomb_png(), "images/huge.png": _header_huge_png(),
        "images/trunc.jpg": _jpeg()[:600], "images/fake.jpg": b"<html>not an image</html>", "images/empty.png": b"",
        "images/tiny.png": _png(size=(4, 4)),
    }
    with zipfile.ZipFile(d / "images_0.zip", "w") as z:
        for name, data in {**good, **odd, **hostile}.items():
            z.writestr(name, data)
        z.writestr("../../evil.jpg", _jpeg())  # a member escaping the archive root
    os.mkfifo(d / "images" / "fifo.jpg")  # an extracted folder with a FIFO where an image should be
    latin = os.path.join(os.fsencode(d / "images"), b"caf\xe9")  # a folder name that is not UTF-8
    os.mkdir(latin)
    with open(os.path.join(latin, b"deep.jpg"), "wb") as f:
        f.write(_jpeg())
    (d / "images" / "adir.jpg").mkdir()
    os.symlink("/etc/hostname", d / "images" / "escape.jpg")
    os.symlink(d / "images" / "nowhere.jpg", d / "images" / "dangling.jpg")
    rows = [{"id": f"ok{k}", "image": [name], "modality": "CT", "conversations": conv()}
            for k, name in enumerate([*good, *odd])]
    bad_images = [*hostile, "images/fifo.jpg", "images/adir.jpg", "images/escape.jpg", "images/dangling.jpg",
                  "../../evil.jpg", "/etc/hostname", "images/nul\u0000.jpg", "images/missing.jpg",
                  "deep.jpg"]  # found by name only inside the non-UTF-8 folder
    rows += [{"id": f"bad{k}", "image": [name], "conversations": conv()} for k, name in enumerate(bad_images)]
    rows += [{"id": "ok0", "image": ["images/pmc_1.jpg"], "conversations": conv()},  # duplicate id
             {"id": "types", "image": ["images/pmc_1.jpg"], "conversations": [H(5), G(["x"])]},
             {"id": "noconv", "image": ["images/pmc_1.jpg"], "conversations": "not json"},
             {"id": "nan", "image": float("nan"), "conversations": [H("<image> q"), G("a")]},
             {"id": {"nested": 1}, "image": ["images/pmc_2.jpg"], "conversations": conv()},
             12345, None, "a string row"]
    body = ",\n".join(json.dumps(r) for r in rows)
    # One element nested far past the recursion limit, then a good row after it, then the file is cut off.
    after = json.dumps({"id": "after_deep", "image": ["images/pmc_3.jpg"], "conversations": conv()})
    text = "[\n" + body + ",\n" + _deep() + ",\n" + after + ",\n" + '{"id": "cut", "conversations": [{"from": "hu'
    (d / "PubMedVision_Alignment_VQA.json").write_text(text)
    # The second file: a wrapper object (rows under "data") with a row of invalid UTF-8 bytes inside.
    good_row = json.dumps({"id": "it_ok", "image": ["images/pmc_0.jpg"], "conversations": conv()}).encode()
    bad_row = (b'{"id": "it_latin1", "image": ["images/pmc_0.jpg"], "conversations": [{"from": "human", '
               b'"value": "caf\xe9"}, {"from": "gpt", "value": "x"}]}')
    surrogate = (b'{"id": "it_sur", "image": ["images/pmc_0.jpg"], "conversations": [{"from": "human", '
                 b'"value": "\\ud800 q"}, {"from": "gpt", "value": "x"}]}')
    (d / "PubMedVision_InstructionTuning_VQA.json").write_bytes(
        b'\xef\xbb\xbf{"version": 1, "data": [' + good_row + b",\n" + bad_row + b",\n" + surrogate + b"]}")
    return len(good) + len(odd) + 3  # + the row with an unusable id (kept under <file>:<row>), after_deep, it_ok


def medmax(root: Path) -> int:
    d = root / "medmax"
    d.mkdir(parents=True)
    imgs = {f"images/m{k}.jpg": _jpeg() for k in range(3)}
    _tar(d / "images.tar.gz", imgs)
    data = (d / "images.tar.gz").read_bytes()  # shipped split in parts, as on the Hub
    (d / "images.tar.gz").unlink()
    (d / "images.tar.gz.aa").write_bytes(data[: len(data) // 2])
    (d / "images.tar.gz.ab").write_bytes(data[len(data) // 2:])
    _tar(d / "slake.tar.gz", {"slake/xmlab1/source.jpg": _jpeg(), "slake/xmlab2/source.jpg": _jpeg()})
    sep = "<reserved08706>"

    def row(i, path, text=None, **kw):
        return {"text": text or f"<image>\nWhat is shown?{sep}A finding {i}.{sep}", "image_path": path,
                "task": "VQA", "source": "s", "credential": "no", **kw}

    lines = [row(0, "images/m0.jpg"), row(1, "images/m1.jpg"), row(2, "slake/xmlab1/source.jpg"),
             row(3, "xmlab2/source.jpg"),  # found in slake.tar.gz by its trailing path
             row(4, "images/nope.jpg"), row(5, "images/m2.jpg", text="no separator here <image>"),
             row(6, "images/m2.jpg", task="Image Generation"), row(7, None, credential="yes"),
             b"\xff\xfe not json and not utf-8\n", b"{\"text\": " + _deep(5000).encode() + b"}\n",
             b"\n", b"   \n", b'{"text": NaN}\n', b"[1, 2, 3]\n", b'{"text": "unterminated\n']
    _jsonl(d / "train.jsonl", lines)
    return 4


def mecovqa(root: Path) -> int:
    d = root / "mecovqa"
    sam = d / "SAMed2Dv1"
    (sam / "images").mkdir(parents=True)
    (sam / "masks").mkdir()
    stem = "ct_00--Demo--case1--z_0001"
    (sam / "images" / f"{stem}.png").write_bytes(_png(size=(200, 100)))
    (sam / "masks" / f"{stem}--0001_000.png").write_bytes(_mask((200, 100), (20, 10, 59, 49)))
    (sam / "masks" / f"{stem}--0001_001.png").write_bytes(_mask((200, 100), (100, 50, 149, 89)))
    (sam / "masks" / f"{stem}--0002_000.png").write_bytes(_mask((100, 50), (10, 10, 20, 20)))  # wrong size
    (sam / "masks" / f"{stem}--0003_000.png").write_bytes(_mask((200, 100), None))  # empty
    img = f"images/{stem}.png"

    def mk(i, a, q="<image>\nSegment it."):
        return {"id": f"g{i}", "image": img, "conversations": [H(q), G(a)]}

    train = d / "MeCoVQA" / "train"
    train.mkdir(parents=True)
    (train / "MeCoVQA-Complex.json").write_text(json.dumps([{"id": "c1", "image": img, "conversations": conv()}]))
    (train / "MeCoVQA-Region.json").write_text(json.dumps([
        {"id": "r1", "image": img, "conversations": [H(f"What is in <region>masks/{stem}--0001_000.png</region>?"),
                                                      G("An organ.")]},
        {"id": "r2", "image": img, "conversations": [H(f"What is in <region>masks/{stem}--0002_000.png</region>?"),
                                                      G("An organ.")]}]))
    (train / "MeCoVQA-Grounding.json").write_text(json.dumps([
        mk(1, f"<SEG><mask>masks_merged/{stem}--0001_merged.png</mask>"),  # merged from two objects
        mk(2, f"<SEG><mask>masks/{stem}--0003_000.png</mask>"),  # empty mask
        mk(3, "<SEG>"),  # no mask
        mk(4, "<SEG><mask>masks/../../../etc/passwd</mask>"),  # escaping mask path
        mk(5, f"<SEG><mask>masks_merged/{stem}--0009_merged.png</mask>"),  # no such class
    ]))
    return 3  # c1, r1, g1


def medgrit(root: Path) -> int:
    d = root / "medgrit"
    (d / "SAMed2Dv1" / "images").mkdir(parents=True)
    for stem in ("ct_001", "mr_002", "x_003"):
        (d / "SAMed2Dv1" / "images" / f"{stem}.png").write_bytes(_png(size=(100, 100)))
    q = "<img>/home/author/SAMed2Dv1/images/ct_001.png</img>Where is the liver?"
    rows = [
        {"id": "ct_001", "conversations": [[q, "<ref>liver</ref><box>(100,200),(400,600)</box>"]]},
        {"id": "mr_002", "conversations": [["<img>mr_002.png</img>Where?",
                                            "<ref>a</ref><box>(0.1,0.2),(0.4,0.6)</box>"]]},
        {"id": "x_003", "conversations": [["Describe the image.", "A chest X-ray."]]},
        {"id": "ct_001", "conversations": [[q, "a duplicate id"]]},
        {"id": "b1", "conversations": [["<img>ct_001.png</img>Where?", "<ref>a</ref><box>(0.5,0.5),(1.02,0.9)</box>"]]},
        {"id": "b2", "conversations": [["<img>ct_001.png</img>Where?", "<ref>a</ref><box>(700,100),(300,400)</box>"]]},
        {"id": "b3", "conversations": [["<img>ct_001.png</img>Where?", "<ref>a</ref><box>(100,100),(1200,400)</box>"]]},
        {"id": "b4", "conversations": [["<img>ct_001.png</img>Where?", "<ref>a</ref><box>(1,2)</box>"]]},
        {"id": "b5", "conversations": [["<img>ct_001.png</img>Where?"]]},
        {"id": "b6", "conversations": [["<img>/etc/shadow</img>Where?", "x"]]},
    ]
    (d / "0301_CombinedAll_7.5w_train1_chatlm_img_coord2.json").write_text(json.dumps(rows))
    return 3


def medtrinity(root: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d = root / "medtrinity"
    (d / "25M_full").mkdir(parents=True)
    (d / "25M_demo").mkdir()
    (d / "25M_accessible").mkdir()
    members = {f"t{k}.jpg": _jpeg() for k in range(3)}
    buf = io.BytesIO()
    _tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=_tar_bytes, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (d / "25M_accessible" / "shard_0.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(_tar_bytes.getvalue()))
    del buf
    rows = {
        "id": ["m0", "m1", "m2", "m3", "m4", "m5"],
        "file_name": ["t0.jpg", "t1.jpg", None, "gone.jpg", "t2.jpg", None],
        "caption": ["A CT slice.", "An MRI.", "An embedded image.", "Missing.", "", "No image at all."],
        "source": ["a", "b", "c", "d", "e", "f"],
        "image": [None, None, {"bytes": _jpeg(), "path": "e.jpg"}, None, None, None],
    }
    pq.write_table(pa.table(rows), d / "25M_full" / "train-00000.parquet")
    # A damaged second parquet (cut in half) and the demo config's file, which a 25M_full run must not read.
    whole = io.BytesIO()
    pq.write_table(pa.table({"id": ["z"], "caption": ["z"], "file_name": ["t0.jpg"]}), whole)
    (d / "25M_full" / "train-00001.parquet").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    pq.write_table(pa.table({"id": ["demo"], "caption": ["demo row"], "file_name": ["t0.jpg"]}),
                   d / "25M_demo" / "train-00000.parquet")
    return 3  # m0, m1, m2 (embedded, written into the artifact cache)


def cambrian(root: Path) -> int:
    d = root / "cambrian"
    (d / "jsons").mkdir(parents=True)
    _tar(d / "coco.tar.gz", {"coco/train2017/a.jpg": _jpeg(), "coco/train2017/b.jpg": _jpeg()})
    (d / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")  # a damaged archive next to the good one
    huge = "word " * 400_000  # a 2 MB answer: ingest keeps it, the token stage drops it as too long
    lines = [
        ("\ufeff" + json.dumps({"id": "t1", "conversations": conv("Hi?", "Hello.")}) + "\r\n").encode(),  # BOM, CRLF
        {"id": "i1", "image": "coco/train2017/a.jpg", "conversations": conv("<image>\nWhat?", "A cat.")},
        {"id": "box", "image": "coco/train2017/b.jpg",
         "conversations": conv("<image>\nWhere is the cat?", "[0.10, 0.20, 0.55, 0.90]")},
        {"id": "badbox", "image": "coco/train2017/b.jpg",
         "conversations": conv("<image>\nWhere?", "[0.10, 0.20, 1.05, 0.90]")},
        {"id": "t1", "conversations": conv("Dup?", "Duplicate id.")},
        {"id": "huge", "conversations": conv("Long?", huge)},
        {"id": "textimg", "image": "None", "conversations": conv("<image>\nWhat?", "x")},
        {"id": "roles", "conversations": [{"from": "alien", "value": "x"}, G("y")]},
        {"id": "empty", "conversations": []},
        {"id": "ctrl", "conversations": conv("nul \u0000 and bell \u0007 inside", "ok \u2028 separators")},
        b'{"id": "lone", "conversations": [{"from": "human", "value": "\\udc80"}, {"from": "gpt", "value": "x"}]}\n',
        b'{"id": "emoji", "conversations": [{"from": "human", "value": "\\ud83d\\ude00 hi"}, '
        b'{"from": "gpt", "value": "x"}]}\n',
        b'{"id": "bytes", "conversations": [{"from": "human", "value": "\xc3\x28"}, {"from": "gpt", "value": "x"}]}\n',
        (_deep() + "\n").encode(),
        b"\x00\x00\x00\x00\n",
    ]
    _jsonl(d / "jsons" / "Cambrian10M.jsonl", lines)
    return 6  # t1, i1, box, huge, ctrl, emoji (huge: kept by ingest, dropped by the token stage as too long)


def aloe_text(root: Path) -> int:
    d = root / "aloe_text"
    d.mkdir(parents=True)
    rows = [{"conversations": conv("What is X?", f"X is {k}.")} for k in range(3)]
    (d / "aloe_medical.json").write_text(json.dumps(rows)[:-1] + ', {"conversations": [{"from"')  # cut off
    (d / "aloe_extra.jsonl").write_bytes(b'{"messages": [{"role": "user", "content": "q"}, '
                                         b'{"role": "assistant", "content": "a"}]}\n' + b"\xff" * 50 + b"\n")
    with open(os.path.join(os.fsencode(d), b"aloe_caf\xe9.jsonl"), "w") as f:  # a file name that is not UTF-8
        f.write(json.dumps({"conversations": conv("Q?", "A.")}) + "\n")
    return 5


def magpie(root: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = root / "magpie" / "data"
    d.mkdir(parents=True)
    conv_ = [[{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"a{k}"}] for k in range(3)]
    conv_.append([{"role": "assistant", "content": "starts with the answer"}])
    pq.write_table(pa.table({"conversation": conv_, "difficulty": ["easy"] * 4}), d / "train-00000.parquet")
    (d / "train-00001.parquet").write_bytes(b"PAR1 not really parquet")
    return 3


BUILDERS = [pubmedvision, medmax, mecovqa, medgrit, medtrinity, cambrian, aloe_text, magpie]


def build(root: Path) -> dict[str, int]:
    root.mkdir(parents=True, exist_ok=True)
    return {b.__name__: b(root) for b in BUILDERS}
