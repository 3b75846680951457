"""Numba re-implementation of Pillow 13's 8-bit LANCZOS resize to 32x32, bit for bit.

Follows ``src/libImaging/Resample.c`` of Pillow: double-precision filter weights normalised per output pixel, then
rounded to 22-bit fixed point (``PRECISION_BITS = 32 - 8 - 2``); each pass accumulates ``pixel * coeff`` in integers
starting from ``1 << 21`` and clips ``sum >> 22`` to 0..255; the horizontal pass only covers the rows the vertical
pass will read. Pillow 13 runs the vertical pass first when ``in_h - 32 > 2 * (in_w - 32)`` (height reduced "more"
than width); earlier Pillow always ran horizontal first. Integer sums are exact, so the summation order (and SIMD
vectorisation) cannot change a result: these kernels may reorder freely, unlike float code.

The RGB(A/X) kernels fuse Pillow's RGB->L conversion (``(r*19595 + g*38470 + b*7471 + 0x8000) >> 16``, Convert.c
``rgb2l``) so the full-resolution grey image is never materialised for the common horizontal-first case.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

PRECISION_BITS = 22
OUT = 32


@njit(cache=True, nogil=True)
def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@njit(cache=True, nogil=True)
def _lanczos(x: float) -> float:
    if -3.0 <= x and x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@njit(cache=True, nogil=True)
def coeffs(in_size: int, out_size: int):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for box (0, in_size): (bounds[out, 2], kk[out, ksize])."""
    scale = np.float64(np.float32(in_size)) / out_size  # box edges are C floats
    filterscale = scale if scale >= 1.0 else 1.0
    support = 3.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    kk = np.zeros((out_size, ksize), np.int32)
    pre = np.zeros(ksize, np.float64)
    inv_filterscale = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = int(center - support + 0.5)  # C (int) truncates toward zero, like Python int()
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        ww = 0.0
        for x in range(xmax):
            w = _lanczos((x + xmin - center + 0.5) * inv_filterscale)
            pre[x] = w
            ww += w
        for x in range(xmax):
            v = pre[x] / ww if ww != 0.0 else pre[x]
            if v < 0:
                kk[xx, x] = np.int32(int(-0.5 + v * (1 << PRECISION_BITS)))
            else:
                kk[xx, x] = np.int32(int(0.5 + v * (1 << PRECISION_BITS)))
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, kk


@njit(cache=True, nogil=True, inline="always")
def _clip8(s):
    v = s >> PRECISION_BITS
    if v < 0:
        return 0
    if v > 255:
        return 255
    return v


@njit(cache=True, nogil=True)
def _horiz_row(row, bounds, kk, out_row):
    for xx in range(bounds.shape[0]):
        xmin = bounds[xx, 0]
        n = bounds[xx, 1]
        seg = row[xmin:xmin + n]  # slices keep the index non-negative: no wraparound checks, so LLVM vectorises
        k = kk[xx, :n]
        s = np.int32(1 << (PRECISION_BITS - 1))
        for x in range(n):
            s += np.int32(seg[x]) * k[x]
        out_row[xx] = _clip8(s)


@njit(cache=True, nogil=True)
def horiz_l(img, y0, nrows, bounds, kk):
    out = np.empty((nrows, bounds.shape[0]), np.uint8)
    for yy in range(nrows):
        _horiz_row(img[yy + y0], bounds, kk, out[yy])
    return out


@njit(cache=True, nogil=True)
def _grey_row(px, grey):
    # px: one row of RGBX pixels read as little-endian uint32 (R in the low byte); shifts vectorise, byte gathers not
    for x in range(grey.shape[0]):
        v = px[x]
        grey[x] = ((v & 0xFF) * np.uint32(19595) + ((v >> 8) & 0xFF) * np.uint32(38470)
                   + ((v >> 16) & 0xFF) * np.uint32(7471) + np.uint32(0x8000)) >> 16


@njit(cache=True, nogil=True)
def horiz_rgbx(img, y0, nrows, bounds, kk):
    """Horizontal pass over RGB(X/A) pixels (h, w) uint32, grey-converting one row at a time."""
    out = np.empty((nrows, bounds.shape[0]), np.uint8)
    grey = np.empty(img.shape[1], np.uint8)
    for yy in range(nrows):
        _grey_row(img[yy + y0], grey)
        _horiz_row(grey, bounds, kk, out[yy])
    return out


@njit(cache=True, nogil=True)
def grey_rgbx(img):
    out = np.empty((img.shape[0], img.shape[1]), np.uint8)
    for y in range(img.shape[0]):
        _grey_row(img[y], out[y])
    return out


@njit(cache=True, nogil=True)
def vert(img, bounds, kk, shift):
    """Vertical pass; row `bounds[yy, 0] - shift` of `img` is the first input row of output row yy."""
    w = img.shape[1]
    out = np.empty((bounds.shape[0], w), np.uint8)
    acc = np.empty(w, np.int32)
    for yy in range(bounds.shape[0]):
        ymin = bounds[yy, 0] - shift
        n = bounds[yy, 1]
        acc[:] = 1 << (PRECISION_BITS - 1)
        for y in range(n):
            k = kk[yy, y]
            row = img[ymin + y]
            for xx in range(w):
                acc[xx] += np.int32(row[xx]) * k
        for xx in range(w):
            out[yy, xx] = _clip8(acc[xx])
    return out


_COEFFS: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_COEFFS_LOCK = threading.Lock()


def cached_coeffs(in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients for in_size -> 32; image sizes repeat a lot, so they are computed once per size."""
    c = _COEFFS.get(in_size)
    if c is None:
        c = coeffs(in_size, OUT)
        with _COEFFS_LOCK:
            if len(_COEFFS) > 4096:
                _COEFFS.clear()
            _COEFFS[in_size] = c
    return c


def vertical_first(w: int, h: int) -> bool:
    """Pillow 13's pass order for a full-image box: vertical first when the height shrinks more than twice the width
    does (Resample.c ImagingResampleInner; measured boundary h >= 2w - 31 for a 32x32 target)."""
    return h > OUT and (h - OUT) > 2 * (w - OUT)


def resize32(pixels: np.ndarray) -> np.ndarray:
    """Pillow-identical LANCZOS resize to 32x32 of grey (h, w) uint8 pixels or RGB(X/A) pixels given as (h, w)
    little-endian uint32 (Pillow's 4-byte layout viewed as words) -> (32, 32) uint8."""
    rgbx = pixels.dtype == np.uint32
    h, w = pixels.shape
    need_h = w != OUT
    need_v = h != OUT
    if not need_h and not need_v:
        return grey_rgbx(pixels) if rgbx else np.array(pixels, copy=True)
    if need_h and need_v and vertical_first(w, h):
        grey = grey_rgbx(pixels) if rgbx else pixels
        bv, kv = cached_coeffs(h)
        tmp = vert(grey, bv, kv, 0)
        bh, kh = cached_coeffs(w)
        return horiz_l(tmp, 0, OUT, bh, kh)
    if need_h:
        bh, kh = cached_coeffs(w)
        if need_v:
            bv, kv = cached_coeffs(h)
            y0 = int(bv[0, 0])
            y1 = int(bv[-1, 0] + bv[-1, 1])
        else:
            y0, y1 = 0, h
        tmp = (horiz_rgbx if rgbx else horiz_l)(pixels, y0, y1 - y0, bh, kh)
        return vert(tmp, bv, kv, y0) if need_v else tmp
    # Only the height changes.
    grey = grey_rgbx(pixels) if rgbx else pixels
    bv, kv = cached_coeffs(h)
    return vert(grey, bv, kv, 0)
