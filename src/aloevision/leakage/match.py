"""Train-vs-eval pHash matching at a Hamming radius: every (train_idx, eval_idx, distance) with distance <= radius.

Radius 0 (the paper's exact 64-bit match) is a hash join: an open-addressing table over the smaller side, probed by
every hash of the larger side. Radius > 0 uses multi-index hashing (Norouzi et al., 2012): the 64 bits are split into
m chunks; if two hashes differ in <= r bits, then (pigeonhole) some chunk differs in <= s = r // m bits. The larger
side is bucket-sorted by each chunk (counting sort, direct-addressed offsets, the hashes copied in bucket order so
a bucket scan is sequential); each query probes, in every chunk, all keys within s bit flips of its own and verifies
the candidates with a 64-bit popcount. A pair is reported only from the first chunk that can find it, so there are
no duplicates and no set operations. m is picked by a cost model (probes x expected bucket size).

Real pHashes are not uniform bits: 32 of the 64 bits are always set (so distances are even), and the low-frequency
coefficients are biased (the DC bit is nearly always 1). Bits are therefore dealt to chunks by a greedy balance of
their measured entropy, which keeps buckets close to uniform; ``MatchStats`` reports the candidate counts.

Everything heavy is numba ``nogil`` code run on a thread pool (``workers``), memory is O(m * N) int32/uint64.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

@intrinsic
def _ctpop(typingctx, x):
    """LLVM's ctpop: one POPCNT instruction (and vectorisable), which numba does not expose."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(cache=True, nogil=True, inline="always")
def popcount64(x):
    return _ctpop(x)


@dataclass
class MatchStats:
    radius: int
    n_train: int
    n_eval: int
    scheme: str
    chunks: int = 0
    probe_radius: int = 0
    chunk_bits: list[int] = field(default_factory=list)
    candidates: int = 0  # popcount verifications performed (radius > 0)
    probes: int = 0
    matches: int = 0
    max_bucket: int = 0


# ------------------------------------------------------------------------------------------------- radius 0


@njit(cache=True, nogil=True)
def _mix(h, shift):
    return (h * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift)


@njit(cache=True, nogil=True)
def _build_table(uniq, bits):
    size = 1 << bits
    slots = np.full(size, -1, np.int64)
    shift = 64 - bits
    for j in range(uniq.shape[0]):
        p = np.int64(_mix(uniq[j], shift))
        while slots[p] != -1:
            p = (p + 1) & (size - 1)
        slots[p] = j
    return slots


@njit(cache=True, nogil=True)
def _probe_exact(probe, lo, hi, uniq, slots, bits, starts, order, out_p, out_b, count_only):
    """For probe[lo:hi]: every build index with the same hash. Returns the number of pairs (fills out_* unless
    count_only)."""
    size = 1 << bits
    shift = 64 - bits
    n = 0
    for i in range(lo, hi):
        h = probe[i]
        p = np.int64(_mix(h, shift))
        while True:
            j = slots[p]
            if j == -1:
                break
            if uniq[j] == h:
                for t in range(starts[j], starts[j + 1]):
                    if not count_only:
                        out_p[n] = i
                        out_b[n] = order[t]
                    n += 1
                break
            p = (p + 1) & (size - 1)
    return n


def _join_exact(build: np.ndarray, probe: np.ndarray, workers: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(build, kind="stable")
    sb = build[order]
    if len(sb):
        first = np.ones(len(sb), bool)
        first[1:] = sb[1:] != sb[:-1]
        uniq = sb[first]
        starts = np.append(np.flatnonzero(first), len(sb)).astype(np.int64)
    else:
        uniq, starts = sb, np.zeros(1, np.int64)
    bits = max(4, int(math.ceil(math.log2(max(2 * len(uniq), 2)))))
    slots = _build_table(uniq, bits)
    dummy = np.zeros(0, np.int64)

    def run(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        n = _probe_exact(probe, lo, hi, uniq, slots, bits, starts, order, dummy, dummy, True)
        op, ob = np.empty(n, np.int64), np.empty(n, np.int64)
        _probe_exact(probe, lo, hi, uniq, slots, bits, starts, order, op, ob, False)
        return op, ob

    parts = _parallel_blocks(run, len(probe), workers)
    return (np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64))


def _parallel_blocks(fn, n: int, workers: int, min_block: int = 4096):
    if n == 0:
        return []
    nblocks = max(1, min(workers * 4, n // min_block))
    edges = np.linspace(0, n, nblocks + 1).astype(np.int64)
    spans = [(int(edges[i]), int(edges[i + 1])) for i in range(nblocks) if edges[i + 1] > edges[i]]
    if workers <= 1 or len(spans) == 1:
        return [fn(lo, hi) for lo, hi in spans]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: fn(*s), spans))


# ------------------------------------------------------------------------------------- multi-index hashing


def _bit_entropy(hashes: np.ndarray, sample: int = 200_000) -> np.ndarray:
    """Entropy (bits) of each of the 64 bit positions, on a sample."""
    h = hashes if len(hashes) <= sample else hashes[np.random.default_rng(0).integers(0, len(hashes), sample)]
    bits = np.unpackbits(h.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)  # column 0 = bit 63
    p = bits.mean(axis=0)[::-1]  # index = bit position
    with np.errstate(divide="ignore", invalid="ignore"):
        e = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(e)


def _assign_bits(entropy: np.ndarray, m: int) -> list[np.ndarray]:
    """Deal bit positions to m chunks of near-equal size, balancing the summed entropy greedily."""
    sizes = [64 // m + (1 if c < 64 % m else 0) for c in range(m)]
    chunks: list[list[int]] = [[] for _ in range(m)]
    total = np.zeros(m)
    for b in np.argsort(-entropy, kind="stable"):
        open_ = [c for c in range(m) if len(chunks[c]) < sizes[c]]
        c = min(open_, key=lambda c: (total[c], c))
        chunks[c].append(int(b))
        total[c] += entropy[b]
    return [np.array(sorted(c), np.int64) for c in chunks]


def _key_tables(chunk_bits: list[np.ndarray]) -> np.ndarray:
    """tables[c, byte_j, value] = the chunk-c key bits contributed by byte j of a hash (8 lookups = a pext)."""
    m = len(chunk_bits)
    tables = np.zeros((m, 8, 256), np.uint64)
    vals = np.arange(256, dtype=np.uint64)
    for c, bits in enumerate(chunk_bits):
        for k, b in enumerate(bits):  # hash bit b -> key bit k
            j, o = divmod(int(b), 8)
            tables[c, j] |= ((vals >> np.uint64(o)) & np.uint64(1)) << np.uint64(k)
    return tables


@njit(cache=True, nogil=True, inline="always")
def _key(h, tables, c):
    k = np.uint64(0)
    for j in range(8):
        k |= tables[c, j, (h >> np.uint64(8 * j)) & np.uint64(0xFF)]
    return k


@njit(cache=True, nogil=True)
def _bucket_sort(hashes, tables, c, nbits):
    """Counting sort of `hashes` by chunk-c key: (offsets[2^nbits + 1], sorted hashes, original indices)."""
    n = hashes.shape[0]
    nb = 1 << nbits
    keys = np.empty(n, np.int64)
    counts = np.zeros(nb + 1, np.int64)
    for i in range(n):
        k = np.int64(_key(hashes[i], tables, c))
        keys[i] = k
        counts[k + 1] += 1
    for b in range(nb):
        counts[b + 1] += counts[b]
    offsets = counts.copy()
    sh = np.empty(n, np.uint64)
    idx = np.empty(n, np.int32)
    for i in range(n):
        p = counts[keys[i]]
        counts[keys[i]] += 1
        sh[p] = hashes[i]
        idx[p] = i
    return offsets, sh, idx


@njit(cache=True, nogil=True)
def _scan(q, qi, key, offsets, sh, idx, radius, s, masks, c, out_i, out_q, out_d, n, cap, count_only):
    a = offsets[key]
    b = offsets[key + 1]
    hit = 0
    for p in range(a, b):  # branch-free, vectorised popcount over a contiguous bucket; hits are rare
        hit += popcount64(sh[p] ^ q) <= radius
    if hit == 0:
        return n
    for p in range(a, b):
        x = sh[p] ^ q
        d = popcount64(x)
        if d <= radius:
            first = True
            for c2 in range(c):  # found earlier through chunk c2? then it was reported there
                if popcount64(x & masks[c2]) <= s:
                    first = False
                    break
            if first:
                if not count_only and n < cap:
                    out_i[n] = idx[p]
                    out_q[n] = qi
                    out_d[n] = d
                n += 1
    return n


@njit(cache=True, nogil=True)
def _mih_query(queries, lo, hi, tables, offsets_all, sh_all, idx_all, nbits, masks, radius, s, out_i, out_q,
               out_d, count_only):
    """Queries lo..hi against the m bucket-sorted chunk indexes. Returns (pairs, candidates scanned, probes)."""
    m = tables.shape[0]
    cap = out_i.shape[0]
    n = 0
    cand = 0
    probes = 0
    for qi in range(lo, hi):
        q = queries[qi]
        for c in range(m):
            offsets = offsets_all[c]
            sh = sh_all[c]
            idx = idx_all[c]
            b = nbits[c]
            key = np.int64(_key(q, tables, c))
            # all keys within s flips: s <= 2 covers radius <= 3 * m - 1 (<= 8 for m = 3)
            cand += offsets[key + 1] - offsets[key]
            probes += 1
            n = _scan(q, qi, key, offsets, sh, idx, radius, s, masks, c, out_i, out_q, out_d, n, cap, count_only)
            if s >= 1:
                for i in range(b):
                    k1 = key ^ (np.int64(1) << i)
                    cand += offsets[k1 + 1] - offsets[k1]
                    probes += 1
                    n = _scan(q, qi, k1, offsets, sh, idx, radius, s, masks, c, out_i, out_q, out_d, n, cap,
                              count_only)
                    if s >= 2:
                        for j in range(i + 1, b):
                            k2 = k1 ^ (np.int64(1) << j)
                            cand += offsets[k2 + 1] - offsets[k2]
                            probes += 1
                            n = _scan(q, qi, k2, offsets, sh, idx, radius, s, masks, c, out_i, out_q, out_d, n,
                                      cap, count_only)
    return n, cand, probes


def _choose_chunks(n_index: int, radius: int, max_bits: int = 24) -> tuple[int, int]:
    """(m, s) minimising probes * (1 + expected bucket size), with tables of at most 2**max_bits buckets and s <= 2."""
    best = None
    for m in range(2, 17):
        b = math.ceil(64 / m)
        s = radius // m
        if b > max_bits or s > 2:
            continue
        probes = m * sum(math.comb(b, i) for i in range(s + 1))
        # A probe is a random memory access (~100 ns in a big table); a candidate is one step of a sequential,
        # vectorised popcount scan (~1 ns): measured on this machine kind, see docs/leakage.md.
        cost = probes * (100.0 + n_index / 2 ** (64 // m))
        if best is None or cost < best[0]:
            best = (cost, m, s)
    if best is None:
        raise ValueError(f"radius {radius} is too large for multi-index hashing (use radius <= 8)")
    return best[1], best[2]


class MIHIndex:
    """Multi-index hash table over a set of 64-bit hashes, queried at a fixed radius."""

    def __init__(self, hashes: np.ndarray, radius: int, workers: int = 1, chunks: int | None = None):
        self.hashes = np.ascontiguousarray(hashes, np.uint64)
        self.radius = radius
        m, s = _choose_chunks(len(self.hashes), radius)
        if chunks is not None:
            m, s = chunks, radius // chunks
        self.m, self.s = m, s
        self.chunk_bits = _assign_bits(_bit_entropy(self.hashes), m)
        self.tables = _key_tables(self.chunk_bits)
        self.nbits = np.array([len(b) for b in self.chunk_bits], np.int64)
        masks = np.zeros(m, np.uint64)
        for c, bits in enumerate(self.chunk_bits):
            for b in bits:
                masks[c] |= np.uint64(1) << np.uint64(int(b))
        self.masks = masks

        def build(c: int):
            return _bucket_sort(self.hashes, self.tables, c, int(self.nbits[c]))

        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                built = list(pool.map(build, range(m)))
        else:
            built = [build(c) for c in range(m)]
        from numba.typed import List

        self.offsets = List([b[0] for b in built])
        self.sorted_hashes = List([b[1] for b in built])
        self.indices = List([b[2] for b in built])
        self.max_bucket = int(max(np.diff(b[0]).max() for b in built)) if len(self.hashes) else 0

    @property
    def nbytes(self) -> int:
        return int(sum(o.nbytes + h.nbytes + i.nbytes for o, h, i in
                       zip(self.offsets, self.sorted_hashes, self.indices)))

    def query(self, queries: np.ndarray, workers: int = 1):
        """(index_idx, query_idx, distance, candidates, probes) for all pairs within the radius."""
        queries = np.ascontiguousarray(queries, np.uint64)
        args = (self.tables, self.offsets, self.sorted_hashes, self.indices, self.nbits, self.masks, self.radius,
                self.s)

        def run(lo: int, hi: int):
            cap = max(1024, 4 * (hi - lo))
            while True:
                oi, oq, od = np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int8)
                n, cand, probes = _mih_query(queries, lo, hi, *args, oi, oq, od, False)
                if n <= cap:
                    return oi[:n], oq[:n], od[:n], cand, probes
                cap = n  # rare: many near-duplicates; rerun the block with room for all

        parts = _parallel_blocks(run, len(queries), workers, min_block=1024)
        if not parts:
            z = np.zeros(0, np.int64)
            return z, z, np.zeros(0, np.int8), 0, 0
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]), sum(p[3] for p in parts), sum(p[4] for p in parts))


# --------------------------------------------------------------------------------------------------- public


def _workers(workers: int | None) -> int:
    if workers is None:
        return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
                          or 1))
    return max(1, int(workers))


def match(train_hashes, eval_hashes, radius: int = 0, workers: int | None = None,
          return_stats: bool = False):
    """All pairs with Hamming distance <= radius, as a structured array with fields ``train_idx`` (int64),
    ``eval_idx`` (int64) and ``distance`` (int8), sorted by (eval_idx, train_idx). Inputs: uint64 hash arrays
    (or anything ``np.asarray(..., np.uint64)`` accepts). ``return_stats=True`` also returns a :class:`MatchStats`."""
    if radius < 0 or radius > 64:
        raise ValueError(f"radius must be in 0..64, got {radius}")
    train = np.ascontiguousarray(np.asarray(train_hashes, dtype=np.uint64).ravel())
    ev = np.ascontiguousarray(np.asarray(eval_hashes, dtype=np.uint64).ravel())
    w = _workers(workers)
    stats = MatchStats(radius=radius, n_train=len(train), n_eval=len(ev), scheme="")
    if len(train) == 0 or len(ev) == 0:
        ti = ei = np.zeros(0, np.int64)
        d = np.zeros(0, np.int8)
        stats.scheme = "empty"
    elif radius == 0:
        stats.scheme = "hash-join"
        if len(ev) <= len(train):  # table over the smaller side, probed by the larger
            ti, ei = _join_exact(ev, train, w)
        else:
            ei, ti = _join_exact(train, ev, w)
        d = np.zeros(len(ti), np.int8)
    elif radius > 8 or min(len(train), len(ev)) * max(len(train), len(ev)) <= 5_000_000:
        stats.scheme = "brute-force"
        ti, ei, d = brute_force(train, ev, radius, workers=w, arrays=True)
    else:
        swap = len(ev) > len(train)  # index the larger side, query with the smaller
        base, qry = (ev, train) if swap else (train, ev)
        index = MIHIndex(base, radius, workers=w)
        bi, qi, d, cand, probes = index.query(qry, workers=w)
        ti, ei = (qi, bi) if swap else (bi, qi)
        stats.scheme = "multi-index-hashing"
        stats.chunks, stats.probe_radius = index.m, index.s
        stats.chunk_bits = [int(x) for x in index.nbits]
        stats.candidates, stats.probes, stats.max_bucket = int(cand), int(probes), index.max_bucket
    out = np.empty(len(ti), dtype=[("train_idx", np.int64), ("eval_idx", np.int64), ("distance", np.int8)])
    out["train_idx"], out["eval_idx"], out["distance"] = ti, ei, d
    out = out[np.lexsort((out["train_idx"], out["eval_idx"]))]
    stats.matches = len(out)
    return (out, stats) if return_stats else out


@njit(cache=True, nogil=True)
def _brute(train, ev, lo, hi, radius, out_t, out_e, out_d, count_only):
    n = 0
    for j in range(lo, hi):
        q = ev[j]
        for i in range(train.shape[0]):
            d = popcount64(train[i] ^ q)
            if d <= radius:
                if not count_only:
                    out_t[n] = i
                    out_e[n] = j
                    out_d[n] = d
                n += 1
    return n


def brute_force(train_hashes, eval_hashes, radius: int, workers: int = 1, arrays: bool = False):
    """The O(N*M) reference: every pair within the radius (same output format as :func:`match`)."""
    train = np.ascontiguousarray(np.asarray(train_hashes, np.uint64).ravel())
    ev = np.ascontiguousarray(np.asarray(eval_hashes, np.uint64).ravel())
    z = np.zeros(0, np.int64)

    def run(lo: int, hi: int):
        n = _brute(train, ev, lo, hi, radius, z, z, np.zeros(0, np.int8), True)
        t, e, d = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int8)
        _brute(train, ev, lo, hi, radius, t, e, d, False)
        return t, e, d

    parts = _parallel_blocks(run, len(ev), max(1, workers), min_block=64)
    t = np.concatenate([p[0] for p in parts]) if parts else z
    e = np.concatenate([p[1] for p in parts]) if parts else z
    d = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int8)
    if arrays:
        return t, e, d
    out = np.empty(len(t), dtype=[("train_idx", np.int64), ("eval_idx", np.int64), ("distance", np.int8)])
    out["train_idx"], out["eval_idx"], out["distance"] = t, e, d
    return out[np.lexsort((out["train_idx"], out["eval_idx"]))]
