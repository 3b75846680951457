"""Direct grey decoding of plain 8-bit PNGs for pHash: the same pixels as Pillow by construction (PNG is lossless).

Pillow decodes a PNG row by row with zlib 1.2.x (inflate, unfilter, unpack RGB into its 4-byte RGBX layout), and
imagehash then converts the whole image to L. Measured on the benchmark corpus, Pillow's inflate and its scalar
unfilter each cost about as much as our whole resize. Here the consecutive IDAT chunks are inflated in one call by
ISA-L (``isal``, ~5x zlib 1.2's inflate; zlib-ng or the stdlib zlib when it is missing) into an exactly sized
buffer, and one numba pass unfilters each row (running sums in registers, so no store-to-load round trip per byte)
and converts RGB to grey with Pillow's formula ``(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`` while the row is in
cache.

Only the simplest, most common layout is covered: 8-bit grey (colour type 0) or RGB (type 2), not interlaced, no
tRNS, not animated, valid chunk CRCs, consecutive IDATs, a zlib stream of exactly the expected length. Anything else
returns None and the caller uses Pillow, so a file Pillow rejects is never hashed here, and odd files keep Pillow's
exact behaviour.
"""

from __future__ import annotations

import struct

import numpy as np
from numba import njit

try:  # the inflate that decides PNG speed; every backend returns the same bytes (inflate is exact)
    from isal import isal_zlib as _zlib

    INFLATE = "isal"
except ImportError:  # pragma: no cover - isal is a dependency; kept working without it
    try:
        from zlib_ng import zlib_ng as _zlib

        INFLATE = "zlib-ng"
    except ImportError:
        import zlib as _zlib

        INFLATE = "zlib"

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DEFER = (b"tRNS", b"acTL", b"fcTL", b"fdAT", b"PLTE")  # transparency, animation, palettes: Pillow's business


@njit(cache=True, nogil=True, inline="always")
def _paeth(a, b, c):
    pa = abs(b - c)  # |p - a| with p = a + b - c
    pb = abs(a - c)
    pc = abs(a + b - c - c)
    pr = b if pb <= pc else c
    return a if (pa <= pb) & (pa <= pc) else pr


@njit(cache=True, nogil=True, inline="always")
def _grey(r, g, b):
    return (np.uint32(r) * np.uint32(19595) + np.uint32(g) * np.uint32(38470) + np.uint32(b) * np.uint32(7471)
            + np.uint32(0x8000)) >> 16


@njit(cache=True, nogil=True)
def _unfilter_l(f, row, prev, cur):
    """One grey row; False for an unknown filter type."""
    n = row.shape[0]
    if f == 0:
        cur[:] = row
    elif f == 2:
        for i in range(n):
            cur[i] = (np.int32(row[i]) + prev[i]) & 255
    elif f == 1:
        a = np.int32(0)
        for i in range(n):
            a = (a + row[i]) & 255
            cur[i] = a
    elif f == 3:
        a = np.int32(0)
        for i in range(n):
            a = (np.int32(row[i]) + ((a + np.int32(prev[i])) >> 1)) & 255
            cur[i] = a
    elif f == 4:
        a = np.int32(0)
        c = np.int32(0)
        for i in range(n):
            b = np.int32(prev[i])
            a = (np.int32(row[i]) + _paeth(a, b, c)) & 255
            cur[i] = a
            c = b
    else:
        return False
    return True


@njit(cache=True, nogil=True)
def _unfilter_rgb(f, row, prev, cur, out):
    """One RGB row into `cur` (kept as the next row's `prev`) and its grey pixels into `out`."""
    w = out.shape[0]
    if f == 0 or f == 2:  # no left neighbour: vectorisable byte loop, then the grey pass
        if f == 0:
            cur[:] = row
        else:
            for i in range(row.shape[0]):
                cur[i] = (np.int32(row[i]) + prev[i]) & 255
        for x in range(w):
            out[x] = _grey(cur[3 * x], cur[3 * x + 1], cur[3 * x + 2])
        return True
    if f > 4:
        return False
    r = np.int32(0)
    g = np.int32(0)
    b = np.int32(0)
    cr = np.int32(0)
    cg = np.int32(0)
    cb = np.int32(0)
    for x in range(w):  # the left neighbour is the previous pixel: keep its three channels in registers
        i = 3 * x
        ur = np.int32(prev[i])
        ug = np.int32(prev[i + 1])
        ub = np.int32(prev[i + 2])
        if f == 1:
            r = (r + row[i]) & 255
            g = (g + row[i + 1]) & 255
            b = (b + row[i + 2]) & 255
        elif f == 3:
            r = (np.int32(row[i]) + ((r + ur) >> 1)) & 255
            g = (np.int32(row[i + 1]) + ((g + ug) >> 1)) & 255
            b = (np.int32(row[i + 2]) + ((b + ub) >> 1)) & 255
        else:
            r = (np.int32(row[i]) + _paeth(r, ur, cr)) & 255
            g = (np.int32(row[i + 1]) + _paeth(g, ug, cg)) & 255
            b = (np.int32(row[i + 2]) + _paeth(b, ub, cb)) & 255
            cr = ur
            cg = ug
            cb = ub
        cur[i] = r
        cur[i + 1] = g
        cur[i + 2] = b
        out[x] = _grey(r, g, b)
    return True


@njit(cache=True, nogil=True)
def _unfilter_grey(raw, h, w, bpp, grey):
    """Unfilter the rows of `raw` (h * (1 + w*bpp) bytes) into grey pixels; returns the first bad row or -1.
    bpp = 1 (L) or 3 (RGB); the caller checked len(raw) against (h, w, bpp)."""
    stride = w * bpp
    prev = np.zeros(stride, np.uint8)
    cur = np.empty(stride, np.uint8)
    for y in range(h):
        base = y * (stride + 1)
        f = raw[base]
        row = raw[base + 1:base + 1 + stride]
        if bpp == 1:  # grey: unfilter straight into the output rows
            cur = grey[y]
            ok = _unfilter_l(f, row, prev, cur)
            prev = cur
        else:
            ok = _unfilter_rgb(f, row, prev, cur, grey[y])
            prev, cur = cur, prev
        if not ok:
            return y
    return -1


def _inflate_exact(stream: bytes, expected: int) -> bytes | None:
    """The zlib stream inflated to exactly `expected` bytes, or None (corrupt, short, or longer than expected)."""
    d = _zlib.decompressobj()
    try:
        raw = d.decompress(stream, expected)
        if len(raw) == expected and not d.eof and d.decompress(d.unconsumed_tail, 1):
            return None  # more data than the image holds
    except _zlib.error:
        return None
    return raw if len(raw) == expected and d.eof else None


def grey_pixels(data: bytes) -> np.ndarray | None:
    """(h, w) uint8 grey pixels equal to ``Image.open(data).convert("L")`` for a plain 8-bit L/RGB PNG, else None."""
    if not data.startswith(SIGNATURE):
        return None
    pos, n = 8, len(data)
    ihdr = None
    idat: list[bytes] = []
    in_idat = False
    while pos + 12 <= n:
        length, = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        if end > n:
            return None
        ctype = data[pos + 4:pos + 8]
        crc, = struct.unpack_from(">I", data, pos + 8 + length)
        if _zlib.crc32(data[pos + 4:pos + 8 + length]) & 0xFFFFFFFF != crc:
            return None
        if ihdr is None:
            if ctype != b"IHDR" or length != 13:
                return None
            ihdr = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif ctype == b"IDAT":
            if idat and not in_idat:  # IDAT chunks must be consecutive (Pillow stops at the first gap)
                return None
            idat.append(data[pos + 8:pos + 8 + length])
            in_idat = True
        else:
            if ctype in _DEFER:
                return None
            in_idat = False
            if ctype == b"IEND":
                break
        pos = end
    else:
        return None  # no IEND: truncated, Pillow decides
    if ihdr is None or not idat:
        return None
    w, h, depth, colour, method, filt, interlace = ihdr
    if depth != 8 or colour not in (0, 2) or method != 0 or filt != 0 or interlace != 0 or w == 0 or h == 0:
        return None
    bpp = 1 if colour == 0 else 3
    raw = _inflate_exact(idat[0] if len(idat) == 1 else b"".join(idat), h * (1 + w * bpp))
    if raw is None:
        return None
    grey = np.empty((h, w), np.uint8)
    if _unfilter_grey(np.frombuffer(raw, np.uint8), h, w, bpp, grey) != -1:
        return None
    return grey
