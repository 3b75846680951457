"""match() must return exactly the brute-force pair set at every radius, on uniform and on pHash-like hashes (32 one
bits, biased low-frequency bits) with planted near-duplicates, whichever scheme it picks."""

from __future__ import annotations

import numpy as np
import pytest

from aloevision.leakage.match import MIHIndex, brute_force, match


def hashes_32_ones(n: int, rng: np.random.Generator, bias: bool = False) -> np.ndarray:
    """Random hashes with exactly 32 one bits, like real pHashes; `bias` skews some bits as real pHashes do."""
    w = rng.random((n, 64))
    if bias:
        w[:, 0] += 5.0  # bit 63 (the DC coefficient) nearly always set
        w[:, 1:8] += np.linspace(0.6, 0.1, 7)
    top = np.argsort(-w, axis=1)[:, :32]
    bits = np.zeros((n, 64), np.uint8)
    np.put_along_axis(bits, top, 1, axis=1)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def near(h: int, flips: int, rng: np.random.Generator, keep_weight: bool) -> int:
    if keep_weight:  # swap flips/2 one-bits with zero-bits: the even distances real pHashes show
        ones = [i for i in range(64) if h >> i & 1]
        zeros = [i for i in range(64) if not h >> i & 1]
        for a, b in zip(rng.choice(ones, flips // 2, replace=False), rng.choice(zeros, flips // 2, replace=False)):
            h ^= (1 << int(a)) | (1 << int(b))
        return h
    for i in rng.choice(64, flips, replace=False):
        h ^= 1 << int(i)
    return h


def planted(n_train: int, n_eval: int, seed: int, bias: bool, keep_weight: bool):
    rng = np.random.default_rng(seed)
    train = hashes_32_ones(n_train, rng, bias)
    ev = hashes_32_ones(n_eval, rng, bias)
    k = n_eval // 3
    src = rng.integers(0, n_train, k)
    for j in range(k):
        flips = int(rng.integers(0, 7))
        ev[j] = near(int(train[src[j]]), flips - (flips % 2) if keep_weight else flips, rng, keep_weight)
    train[: n_train // 50] = train[rng.integers(0, n_train, n_train // 50)]  # duplicate training images
    ev[k: k + 20] = ev[:20]  # the same eval image in two benchmarks
    return train, ev


@pytest.mark.parametrize("bias,keep_weight", [(False, False), (True, True)])
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4])
def test_match_equals_brute_force(radius, bias, keep_weight):
    train, ev = planted(40_000, 1_500, seed=radius + 10 * bias, bias=bias, keep_weight=keep_weight)
    got, stats = match(train, ev, radius, workers=2, return_stats=True)
    ref = brute_force(train, ev, radius, workers=2)
    assert stats.scheme == ("hash-join" if radius == 0 else "multi-index-hashing")
    assert len(ref) > 0
    assert np.array_equal(got, ref)
    assert (got["distance"] <= radius).all()
    if keep_weight:
        assert (got["distance"] % 2 == 0).all()  # equal weights -> even distances


@pytest.mark.parametrize("radius", [1, 2, 4, 5, 7])
@pytest.mark.parametrize("chunks", [3, 4, 5, 6])
def test_index_every_chunking(radius, chunks):
    """Every (chunks, probe radius) pair, including probe radius 1 and 2, against brute force."""
    train, ev = planted(3_000, 300, seed=radius * 7 + chunks, bias=True, keep_weight=False)
    idx = MIHIndex(train, radius, chunks=chunks)
    bi, qi, d, _, _ = idx.query(ev, workers=2)
    got = np.empty(len(bi), dtype=[("train_idx", np.int64), ("eval_idx", np.int64), ("distance", np.int8)])
    got["train_idx"], got["eval_idx"], got["distance"] = bi, qi, d
    got = got[np.lexsort((got["train_idx"], got["eval_idx"]))]
    assert np.array_equal(got, brute_force(train, ev, radius))


def test_swapped_sides_and_edge_cases():
    train, ev = planted(2_000, 30_000, seed=3, bias=False, keep_weight=False)  # eval larger than train
    for r in (0, 3):
        assert np.array_equal(match(ev, train, r), brute_force(ev, train, r))
        assert np.array_equal(match(train, ev, r), brute_force(train, ev, r))
    assert len(match(np.zeros(0, np.uint64), ev, 2)) == 0
    assert len(match(train, [], 0)) == 0
    with pytest.raises(ValueError):
        match(train, ev, -1)
    one = match([2**64 - 1, 5], [2**64 - 1], 0)
    assert one.tolist() == [(0, 0, 0)]


def test_end_to_end_planted_leaks_and_gallery(tmp_path):
    """Images -> hashes -> matches -> gallery: an exact copy leaks at radius 0, a re-encoded resized copy only at
    radius > 0, an unrelated image never; a corrupt eval image is an error, and the gallery files are written."""
    import io

    from PIL import Image

    from aloevision.leakage.gallery import LeakPair, write_gallery
    from aloevision.leakage.phash import hash_many

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    imgs = []
    for k in range(4):
        a = np.stack([(xx * (k + 1) + yy) % 256, (yy * (k + 2)) % 256, (xx ^ yy * (k + 1)) % 256], -1)
        imgs.append(Image.fromarray((a + rng.integers(0, 30, a.shape)).clip(0, 255).astype(np.uint8)))

    def enc(im, fmt="PNG", **kw):
        b = io.BytesIO()
        im.save(b, format=fmt, **kw)
        return b.getvalue()

    train = [enc(im) for im in imgs[:3]]
    ev = [train[0], enc(imgs[1].crop((2, 2, 320, 240)).resize((300, 225)), "JPEG", quality=60), enc(imgs[3]), b"\xff\xd8broken"]
    th, terr = hash_many(train)
    eh, eerr = hash_many(ev)
    assert not terr and [i for i, _ in eerr] == [3]
    ok = np.array([i for i in range(len(ev)) if i not in dict(eerr)])
    exact = match(th, eh[ok], 0)
    assert [(int(t), int(ok[e])) for t, e, _ in exact] == [(0, 0)]
    d = bin(int(th[1]) ^ int(eh[1])).count("1")
    assert 0 < d <= 6, d
    near_ = match(th, eh[ok], d)
    assert (1, 1) in {(int(t), int(ok[e])) for t, e, _ in near_}
    assert 2 not in {int(ok[e]) for _, e, _ in near_}  # the unrelated image
    pairs = [LeakPair(train[t], ev[ok[e]], "demo_source", "demo_eval", int(dist), int(th[t]), int(eh[ok[e]]))
             for t, e, dist in near_]
    pairs.append(LeakPair(str(tmp_path / "missing.png"), ev[3], "demo_source", "demo_eval", 0))
    out = write_gallery(pairs, tmp_path / "gallery")
    assert Image.open(out["png"]).size[0] > 0
    page = out["html"].read_text()
    assert page.count("<tr>") == len(pairs) + 1 and "missing_image" in page
