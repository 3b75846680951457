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


