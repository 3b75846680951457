"""Direct grey decoding of plain 8-bit PNGs for pHash: bit-identical to Pillow by construction (PNG is lossless).

Pillow decodes a PNG row by row (inflate, unfilter, unpack RGB into its 4-byte RGBX layout) and imagehash then
converts the whole image to L. Here the consecutive IDAT chunks are inflated in one call into an exactly sized
buffer (stdlib zlib, the same zlib 1.2.x as Pillow's), and one numba pass unfilters each row and converts it to grey
with Pillow's formula ``(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`` while it is still in cache. Only the simplest,
most common layout is covered: 8-bit grey (colour type 0) or RGB (type 2), not interlaced, no tRNS, not animated,
valid chunk CRCs, a zlib stream of exactly the expected length. Anything else returns None and the caller uses
Pillow, so a file Pillow rejects is never hashed here, and odd files keep Pillow's exact behaviour.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from numba import njit

SIGNATURE = b"\x89PNG\r\n\x1a\n"


@njit(cache=True, nogil=True)
def _unfilter_grey(raw, h, w, bpp, grey):
    """Unfilter rows of `raw` (h * (1 + w*bpp) bytes) and write grey pixels; returns the first bad row or -1.
    bpp = 1 (L) or 3 (RGB). All index ranges are fixed by (h, w, bpp), which the caller checked against len(raw).
    Neighbours are read through shifted slices (index >= 0), so numba drops its wraparound checks and LLVM can
    vectorise the filters without a left-neighbour dependency (None, Up, and the grey conversion)."""
    stride = w * bpp
    prev = np.zeros(stride, np.uint8)
    cur = np.zeros(stride, np.uint8)
    n = stride - bpp
    for y in range(h):
        if bpp == 1:  # grey: unfilter straight into the output rows (no copy)
            cur = grey[y]
            if y > 0:
                prev = grey[y - 1]
        base = y * (stride + 1)
        f = raw[base]
        row = raw[base + 1:base + 1 + stride]
        rr = row[bpp:]  # byte i + bpp of the row, for i in range(n)
        cl = cur[:n]  # left neighbour (a) of byte i + bpp
        cr = cur[bpp:]
        pu = prev[bpp:]  # up (b)
        pl = prev[:n]  # up-left (c)
        if f == 0:
            for i in range(stride):
                cur[i] = row[i]
        elif f == 1:
            for i in range(bpp):
                cur[i] = row[i]
            for i in range(n):
                cr[i] = (np.int32(rr[i]) + cl[i]) & 255
        elif f == 2:
            for i in range(stride):
                cur[i] = (np.int32(row[i]) + prev[i]) & 255
        elif f == 3:
            for i in range(bpp):
                cur[i] = (np.int32(row[i]) + (np.int32(prev[i]) >> 1)) & 255
            for i in range(n):
                cr[i] = (np.int32(rr[i]) + ((np.int32(cl[i]) + pu[i]) >> 1)) & 255
        elif f == 4:
            for i in range(bpp):  # a = c = 0: the predictor is b
                cur[i] = (np.int32(row[i]) + prev[i]) & 255
            for i in range(n):
                a = np.int32(cl[i])
                b = np.int32(pu[i])
                c = np.int32(pl[i])
                pa = abs(b - c)  # |p - a| with p = a + b - c
                pb = abs(a - c)
                pc = abs(a + b - c - c)
                if pa <= pb and pa <= pc:
                    pr = a
                elif pb <= pc:
                    pr = b
                else:
                    pr = c
                cr[i] = (np.int32(rr[i]) + pr) & 255
        else:
            return y
        if bpp == 3:
            out = grey[y]
            for x in range(w):
                out[x] = (np.uint32(cur[3 * x]) * np.uint32(19595) + np.uint32(cur[3 * x + 1]) * np.uint32(38470)
                          + np.uint32(cur[3 * x + 2]) * np.uint32(7471) + np.uint32(0x8000)) >> 16
            prev, cur = cur, prev
    return -1


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
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n:
            return None
        body = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            return None
        if ihdr is None:
            if ctype != b"IHDR" or length != 13:
                return None
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            if idat and not in_idat:  # IDAT chunks must be consecutive (Pillow stops at the first gap)
                return None
            idat.append(body)
            in_idat = True
        else:
            if ctype in (b"tRNS", b"acTL", b"fcTL", b"fdAT", b"PLTE"):
                return None
            if in_idat:
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
    expected = h * (1 + w * bpp)
    d = zlib.decompressobj()
    try:
        raw = d.decompress(b"".join(idat), expected)
    except zlib.error:
        return None
    if len(raw) == expected and not d.eof:  # the output is complete; let zlib read the end of the stream
        if d.decompress(d.unconsumed_tail, 1):
            return None
    if len(raw) != expected or not d.eof:
        return None
    grey = np.empty((h, w), np.uint8)
    if _unfilter_grey(np.frombuffer(raw, np.uint8), h, w, bpp, grey) != -1:
        return None
    return grey
