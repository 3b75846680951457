"""The fast pHash must equal imagehash.phash bit for bit on every mode, odd size and tie-heavy image, and bad input
must come back as a counted error, never an exception out of hash_many."""

from __future__ import annotations

import io
import zipfile

import imagehash
import numpy as np
import PIL
import pytest
from PIL import Image

from aloevision.leakage import _resample
from aloevision.leakage.phash import (
    VERIFIED_PILLOW,
    fast_path_enabled,
    hash_many,
    hashes_from_small,
    phash_file,
    phash_image,
    small_image,
    to_hex,
)

RNG = np.random.default_rng(20260101)


def ref_hash(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def photo(w: int, h: int, rng=RNG) -> np.ndarray:
    """Smooth structure + noise, RGB uint8: hashes that depend on the exact resize."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(3, 60, 3)
    base = np.stack([127 + 90 * np.sin(xx / f[0] + yy / f[1]), 127 + 90 * np.cos(yy / f[2]),
                     127 + 90 * np.sin((xx - yy) / (f[0] + f[2]))], -1)
    base += rng.normal(0, 20, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def corpus() -> list[tuple[str, bytes]]:
    items: list[tuple[str, bytes]] = []
    rgb = Image.fromarray(photo(300, 217), "RGB")
    items.append(("rgb.jpg", encode(rgb, "JPEG", quality=85)))
    items.append(("rgb.png", encode(rgb, "PNG")))
    items.append(("rgb-progressive.jpg", encode(rgb, "JPEG", quality=70, progressive=True)))
    items.append(("rgb.webp", encode(rgb, "WEBP", quality=80)))
    items.append(("rgb.bmp", encode(rgb, "BMP")))
    items.append(("L.png", encode(rgb.convert("L"), "PNG")))
    items.append(("L.jpg", encode(rgb.convert("L"), "JPEG")))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(photo(300, 217)[..., 0]))
    items.append(("rgba.png", encode(rgba, "PNG")))
    items.append(("LA.png", encode(rgb.convert("LA"), "PNG")))
    items.append(("P.png", encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")))
    pt = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    items.append(("P-transparent.png", encode(pt, "PNG", transparency=3)))
    items.append(("P-transparent.gif", encode(pt, "GIF", transparency=5)))
    rgba_p = rgba.convert("P")  # palette with per-entry alpha (tRNS chunk)
    items.append(("PA.png", encode(rgba_p, "PNG")))
    items.append(("CMYK.jpg", encode(rgb.convert("CMYK"), "JPEG")))
    items.append(("CMYK.tif", encode(rgb.convert("CMYK"), "TIFF")))
    items.append(("1.png", encode(rgb.convert("1"), "PNG")))
    g16 = (photo(190, 260)[..., 0].astype(np.uint16) * 257 + RNG.integers(0, 257, (260, 190))).astype(np.uint16)
    items.append(("I16.png", encode(Image.fromarray(g16), "PNG")))  # opens as mode I;16
    items.append(("I16.tif", encode(Image.fromarray(g16), "TIFF")))
    i32 = (photo(150, 120)[..., 1].astype(np.int32) * 300 - 20000)
    items.append(("I.tif", encode(Image.fromarray(i32, "I"), "TIFF")))
    f32 = photo(170, 140)[..., 2].astype(np.float32) * 1.7 - 40.5
    items.append(("F.tif", encode(Image.fromarray(f32, "F"), "TIFF")))
    # odd sizes: 1xN, Nx1, huge aspect ratios, just-over/under 32, and both pass orders of Pillow 13
    for w, h in ((1, 1), (1, 7), (7, 1), (1, 3000), (3000, 1), (2, 2500), (2500, 3), (31, 33), (33, 31), (32, 32),
                 (32, 500), (500, 32), (40, 49), (40, 48), (97, 160), (160, 97), (64, 4000), (4000, 64),
                 (300, 569), (300, 568), (1024, 2017), (1024, 2016)):
        items.append((f"odd-{w}x{h}.png", encode(Image.fromarray(photo(w, h)), "PNG")))
    # ties at the median: blank, flat grey, symmetric and stripes
    items.append(("black.png", encode(Image.new("RGB", (640, 480)), "PNG")))
    items.append(("white.jpg", encode(Image.new("L", (512, 512), 255), "JPEG")))
    items.append(("grey.png", encode(Image.new("L", (100, 300), 128), "PNG")))
    sym = np.zeros((256, 256), np.uint8)
    sym[64:192, 64:192] = 200
    items.append(("symmetric.png", encode(Image.fromarray(sym), "PNG")))
    stripes = np.tile((np.arange(400) // 20 % 2 * 255).astype(np.uint8), (300, 1))
    items.append(("stripes.png", encode(Image.fromarray(stripes), "PNG")))
    return items


CORPUS = corpus()


def test_fast_path_is_active():
    if PIL.__version__ not in VERIFIED_PILLOW:
        pytest.skip(f"Pillow {PIL.__version__}: fast path is off by design (falls back to Pillow)")
    assert fast_path_enabled(), "the numba resize failed its self-check"


@pytest.mark.parametrize("name,data", CORPUS, ids=[n for n, _ in CORPUS])
def test_bit_identical_to_imagehash(name, data):
    ref = ref_hash(Image.open(io.BytesIO(data)))
    img = Image.open(io.BytesIO(data))
    assert to_hex(phash_image(img)) == to_hex(ref), f"{name} mode {img.mode} size {img.size}"
    assert phash_file(data) == ref
    assert 0 <= ref < 2**64


def test_fast_false_is_pillows_path_with_the_same_bits():
    """`fast=False` (LeakageConfig.fast_hash=False) must not touch the numba resize and must give identical hashes,
    so both settings share one cache."""
    refs = [d for _, d in CORPUS]
    slow, serr = hash_many(refs, fast=False)
    quick, qerr = hash_many(refs)
    assert serr == qerr and np.array_equal(slow, quick)
    from aloevision.leakage import _resample

    calls = []
    orig = _resample.resize32
    _resample.resize32 = lambda px: calls.append(1) or orig(px)
    try:
        small_image(Image.open(io.BytesIO(CORPUS[0][1])), fast=False)
        assert not calls
        if fast_path_enabled():
            small_image(Image.open(io.BytesIO(CORPUS[0][1])))
            assert calls
    finally:
        _resample.resize32 = orig


def test_modes_covered():
    modes = {Image.open(io.BytesIO(d)).mode for _, d in CORPUS}
    assert {"L", "I;16", "I", "F", "RGB", "RGBA", "P", "CMYK", "LA", "1"} <= modes, modes


def test_resize_identical_to_pillow_on_many_sizes():
    """The numba resize alone, against Pillow's L resize, over a grid that crosses both pass-order regions."""
    if not fast_path_enabled():
        pytest.skip("fast path off")
    rng = np.random.default_rng(7)
    sizes = [(w, h) for w in (1, 2, 5, 17, 31, 32, 33, 34, 45, 63, 64, 65, 100, 333) for h in
             (1, 3, 16, 31, 32, 33, 35, 36, 60, 61, 64, 97, 128, 129, 250, 635, 701)]
    sizes += [(int(rng.integers(1, 1500)), int(rng.integers(1, 3000))) for _ in range(60)]
    for w, h in sizes:
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a, "L").resize((32, 32), Image.Resampling.LANCZOS))
        assert np.array_equal(_resample.resize32(a), ref), (w, h)


def test_batched_dct_equals_single():
    smalls = [small_image(Image.open(io.BytesIO(d))) for _, d in CORPUS]
    smalls += [np.zeros((32, 32), np.uint8), np.full((32, 32), 7, np.uint8)]
    batch = hashes_from_small(np.stack(smalls))
    single = [int(hashes_from_small(s)[0]) for s in smalls]
    assert [int(x) for x in batch] == single


def test_hash_many_matches_and_reports_bad_input(tmp_path):
    good = [d for _, d in CORPUS[:6]]
    (tmp_path / "a.png").write_bytes(CORPUS[1][1])
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        zf.writestr("x/b.jpg", CORPUS[0][1])
    truncated = CORPUS[0][1][: len(CORPUS[0][1]) // 2]
    refs = good + [b"", b"not an image at all", truncated, str(tmp_path / "missing.jpg"), str(tmp_path / "a.png"),
                   f"{tmp_path / 'imgs.zip'}::x/b.jpg", CORPUS[1][1][:60]]
    for workers in (1, 3):
        hashes, errors = hash_many(refs, workers=workers, chunk_size=4)
        assert hashes.dtype == np.uint64 and len(hashes) == len(refs)
        bad = dict(errors)
        assert sorted(bad) == [6, 7, 8, 9, 12], errors
        assert bad[6].startswith("truncated_image") and bad[9].startswith("missing_image")
        assert bad[7].startswith("unreadable_image")
        for i, d in enumerate(good):
            assert int(hashes[i]) == ref_hash(Image.open(io.BytesIO(d)))
        assert int(hashes[10]) == ref_hash(Image.open(io.BytesIO(CORPUS[1][1])))
        assert int(hashes[11]) == ref_hash(Image.open(io.BytesIO(CORPUS[0][1])))
        assert all(int(hashes[i]) == 0 for i in bad)


def test_phash_file_raises_clear_error():
    from aloevision.images import ImageError

    with pytest.raises(ImageError) as e:
        phash_file(b"\x89PNG\r\n\x1a\n garbage")
    assert e.value.reason in ("corrupt_image", "truncated_image", "unreadable_image")


# ------------------------------------------------------------------------------------------------------- cache


def _put_in_child(root: str, version: str, start: int) -> None:
    from aloevision.leakage.cache import PHashCache

    c = PHashCache(root, version=version)
    c.put_many([bytes([start, i]) * 10 for i in range(50)], [start * 1000 + i for i in range(50)])
    c.flush()


def test_cache_content_keyed_and_no_rehash(tmp_path, monkeypatch):
    from aloevision.leakage import phash as ph
    from aloevision.leakage.cache import PHashCache

    refs = [d for _, d in CORPUS[:8]] + [CORPUS[0][1]]  # a duplicate image by content
    cache = PHashCache(tmp_path / "c")
    assert cache.dir.name == ph.version_tag() and "pillow" + PIL.__version__ in cache.dir.name
    h1, e1 = hash_many(refs, cache=cache, workers=2)
    assert not e1 and len(list(cache.dir.glob("part-*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded an image that was cached")

    monkeypatch.setattr(ph, "_small_from_bytes", boom)
    fresh = PHashCache(tmp_path / "c")  # another process / a re-run
    h2, e2 = hash_many(refs, cache=fresh)
    assert not e2 and np.array_equal(h1, h2) and fresh.hits == len(refs)
    vals, found = fresh.get_many([b"\x00" * 20])
    assert not found[0]


def test_cache_concurrent_processes_and_compaction(tmp_path):
    import multiprocessing as mp

    from aloevision.leakage.cache import PHashCache

    root = str(tmp_path / "c")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_put_in_child, args=(root, "v1", s)) for s in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    c = PHashCache(root, version="v1")
    assert len(c) == 150 and c.get(bytes([2, 7]) * 10) == 2007
    assert c.compact() == 3 and len(list(c.dir.glob("part-*.npz"))) == 1
    again = PHashCache(root, version="v1")
    assert len(again) == 150 and again.get(bytes([3, 49]) * 10) == 3049 and again.get(b"x" * 20) is None
    assert len(PHashCache(root, version="v2")) == 0  # other library versions never see these hashes




# ---- direct PNG decoding (leakage/_png.py) -----------------------------------------------------------------------
def _png_bytes(pixels: np.ndarray, filters: list[int], chunks: int = 3, extra: list[tuple[bytes, bytes]] = (),
               interlace: int = 0) -> bytes:
    """A hand-made PNG whose rows use the given filter types (Pillow's encoder rarely picks all five)."""
    import struct
    import zlib

    h, w = pixels.shape[:2]
    bpp = 1 if pixels.ndim == 2 else 3
    rows = pixels.reshape(h, w * bpp).astype(np.int32)
    out = bytearray()
    for y in range(h):
        cur, prev = rows[y], rows[y - 1] if y else np.zeros(w * bpp, np.int32)
        a = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        f = filters[y % len(filters)]
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = a
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (a + prev) >> 1
        else:
            p = a + prev - c
            pa, pb, pc = abs(p - a), abs(p - prev), abs(p - c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, c))
        out.append(f)
        out += ((cur - pred) & 255).astype(np.uint8).tobytes()
    z = zlib.compress(bytes(out), 6)

    def chunk(t: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body) & 0xFFFFFFFF)

    step = max(1, -(-len(z) // chunks))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0 if bpp == 1 else 2, 0, 0, interlace))
    body += b"".join(chunk(t, b) for t, b in extra)
    body += b"".join(chunk(b"IDAT", z[i:i + step]) for i in range(0, len(z), step))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def test_direct_png_decoding_is_pillows_pixels():
    from aloevision.leakage._png import grey_pixels

    rng = np.random.default_rng(3)
    sizes = [(1, 1), (1, 9), (9, 1), (2, 3), (33, 17), (64, 250), (301, 40)]
    n = 0
    for w, h in sizes:
        for shape in ((h, w), (h, w, 3)):
            smooth = np.cumsum(rng.integers(-3, 4, shape), axis=0) + 128
            for px in (rng.integers(0, 256, shape), smooth):
                px = (px % 256).astype(np.uint8)
                for filters in ([0], [1], [2], [3], [4], [4, 3, 2, 1, 0]):
                    data = _png_bytes(px, filters, chunks=1 + n % 3)
                    ref_img = Image.open(io.BytesIO(data))
                    want = np.asarray(ref_img.convert("L"))
                    got = grey_pixels(data)
                    assert got is not None and np.array_equal(got, want), (w, h, shape, filters)
                    h1, _ = hash_many([data])
                    assert int(h1[0]) == ref_hash(Image.open(io.BytesIO(data))), (w, h, filters)
                    n += 1
    for _, data in CORPUS:  # Pillow-written PNGs of every mode: covered ones decode, others defer to Pillow
        got = grey_pixels(data) if data[:4] == b"\x89PNG" else None
        if got is not None:
            assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(data)).convert("L")))


def test_direct_png_defers_to_pillow_on_anything_unusual():
    import struct
    import zlib

    from aloevision.leakage._png import grey_pixels

    px = np.random.default_rng(4).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    good = _png_bytes(px, [4, 1])
    assert grey_pixels(good) is not None
    trns = _png_bytes(px, [4], extra=[(b"tRNS", b"\x00\x01\x00\x02\x00\x03")])
    cases = {
        "truncated": good[:-30], "no IEND": good[:-12], "tRNS": trns,
        "interlaced": _png_bytes(px, [0], interlace=1), "filter type 5": _png_bytes(px, [5]),
        "bad crc": good[:40] + bytes([good[40] ^ 1]) + good[41:],
    }
    two = _png_bytes(px, [0], chunks=2)
    first_idat = two.index(b"IDAT") - 4
    second = first_idat + 12 + struct.unpack(">I", two[first_idat:first_idat + 4])[0]
    text = struct.pack(">I", 1) + b"tEXt" + b"x" + struct.pack(">I", zlib.crc32(b"tEXtx"))
    cases["gap between IDATs"] = two[:second] + text + two[second:]
    # An IDAT body that inflates to the wrong length, with valid CRCs.
    raw = zlib.compress(b"\x00" * 10)
    short = good[:33] + struct.pack(">I", len(raw)) + b"IDAT" + raw + struct.pack(">I", zlib.crc32(b"IDAT" + raw))
    cases["short data"] = short + good[-12:]
    for name, data in cases.items():
        assert grey_pixels(data) is None, name
        # Whatever Pillow says (a hash or a reasoned error), hash_many says the same with or without the fast path.
        fast, ferr = hash_many([data])
        slow, serr = hash_many([data], fast=False)
        assert [e.split(":")[0] for _, e in ferr] == [e.split(":")[0] for _, e in serr], name
        assert np.array_equal(fast, slow), name


def test_direct_png_decoding_on_pillow_written_files():
    """Pillow's own encoder (adaptive filters per row, several IDAT chunks) at every compression level, L and RGB."""
    from aloevision.leakage._png import grey_pixels

    rng = np.random.default_rng(5)
    for mode, shape in (("L", (70, 90)), ("RGB", (70, 90, 3))):
        px = (np.cumsum(rng.integers(-4, 5, shape), axis=1) + 128) % 256
        img = Image.fromarray(px.astype(np.uint8), mode)
        for level in (0, 1, 6, 9):
            data = encode(img, "PNG", compress_level=level)
            want = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
            assert np.array_equal(grey_pixels(data), want), (mode, level)


def test_direct_png_inflate_backends_agree(monkeypatch):
    import zlib

    from aloevision.leakage import _png

    assert _png.INFLATE == "isal"  # a dependency: without it PNGs decode at zlib 1.2 speed (same bits)
    px = np.random.default_rng(6).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    data = _png_bytes(np.cumsum(px, axis=1).astype(np.uint8), [4, 1, 2, 3, 0], chunks=4)
    fast = _png.grey_pixels(data)
    monkeypatch.setattr(_png, "_zlib", zlib)
    assert fast is not None and np.array_equal(_png.grey_pixels(data), fast)
