"""64-bit perceptual hash, bit-identical to ``imagehash.phash(img, hash_size=8)`` and several times cheaper per image.

imagehash does ``img.convert("L").resize((32, 32), LANCZOS)``, a 2-D ``scipy.fftpack.dct`` and compares the
top-left 8x8 coefficients with their median. Almost all of its time (beyond decoding) is Pillow's full-resolution
Lanczos pass, so that pass is replaced by :mod:`._resample` (Pillow's exact fixed-point arithmetic, vectorised,
GIL-free) with the RGB->L conversion fused into it. The DCT stays scipy's: a matrix-product DCT rounds differently
and flips bits on images whose coefficients tie at the median (blank or symmetric frames). Plain 8-bit PNGs are
decoded by :mod:`._png` (a faster inflate and unfilter; PNG is lossless, so the pixels are Pillow's).

Anything the fast path does not cover (other Pillow versions, other modes' grey conversion) goes through Pillow's
own ``convert("L")``/``resize`` exactly as imagehash does, so results never depend on which path ran. The integer
value is the one of ``int(str(imagehash.phash(img)), 16)``: bit 63 is the top-left coefficient, row-major.

The hash depends on the Pillow version (Pillow 13 changed the resize pass order of tall images): hash training and
evaluation images with the same pinned versions (:func:`version_tag` goes into every cache key).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import PIL
import scipy
import scipy.fftpack
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from .cache import PHashCache

HASH_SIZE = 8
SMALL = HASH_SIZE * 4
# Pillow versions whose resize the numba kernels were verified against (tests/unit/test_phash.py); others use Pillow.
VERIFIED_PILLOW = ("13.0.0",)
FAST_GREY_MODES = ("L", "RGB", "RGBA", "RGBX")
PNG_DIRECT = True  # plain 8-bit L/RGB PNGs decoded by ._png (same pixels); False: Pillow (benchmark A/B)

ImageRef = Any  # str path / "archive::member" / bytes / os.PathLike
Reader = Callable[[Any], bytes]


def version_tag() -> str:
    """Everything a pHash value depends on; part of every cache key."""
    import imagehash

    return f"phash{HASH_SIZE}-pillow{PIL.__version__}-imagehash{imagehash.__version__}-scipy{scipy.__version__}" \
           f"-numpy{np.__version__}"


# ------------------------------------------------------------------------------------------------ reference


def phash_reference(img: Image.Image) -> int:
    """``imagehash.phash`` itself, as an int (the ground truth every fast result must equal)."""
    import imagehash

    return int(str(imagehash.phash(img, hash_size=HASH_SIZE)), 16)


# -------------------------------------------------------------------------------------------- fast path gate

_fast_state: dict[str, Any] = {}
_fast_lock = threading.Lock()


def fast_path_enabled() -> bool:
    """True when the numba resize is used: verified Pillow version, numba importable, and a start-up self-check
    against Pillow's own resize on awkward sizes passes (else a warning and the exact Pillow path)."""
    if "ok" in _fast_state:
        return _fast_state["ok"]
    with _fast_lock:
        if "ok" in _fast_state:
            return _fast_state["ok"]
        ok, why = False, ""
        if os.environ.get("ALOEVISION_PHASH_FAST", "1") == "0":
            why = "disabled by ALOEVISION_PHASH_FAST=0"
        elif PIL.__version__ not in VERIFIED_PILLOW:
            why = f"Pillow {PIL.__version__} not in verified {VERIFIED_PILLOW}"
        else:
            try:
                ok, why = _self_check()
            except Exception as e:  # numba missing or failing to compile: stay correct, just slower
                ok, why = False, f"fast resize unavailable: {type(e).__name__}: {e}"
        if not ok:
            warnings.warn(f"pHash fast path off ({why}); using Pillow's resize (identical hashes, slower)",
                          RuntimeWarning, stacklevel=3)
        _fast_state["ok"] = ok
        _fast_state["why"] = why
        return ok


def _self_check() -> tuple[bool, str]:
    from ._resample import resize32

    rng = np.random.default_rng(12345)
    for w, h in ((31, 200), (200, 31), (33, 35), (40, 49), (40, 48), (97, 64), (64, 500), (700, 300), (32, 90),
                 (90, 32), (5, 7), (32, 32), (1, 300)):
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a, "L").resize((SMALL, SMALL), Image.Resampling.LANCZOS))
        if not np.array_equal(resize32(a), ref):
            return False, f"self-check mismatch at {w}x{h}"
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(rgb, "RGB")
        ref = np.asarray(im.convert("L").resize((SMALL, SMALL), Image.Resampling.LANCZOS))
        px = np.ascontiguousarray(np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2))
        px = px.view(np.uint32).reshape(h, w)
        if sys.byteorder == "little" and not np.array_equal(resize32(px), ref):
            return False, f"self-check (RGB) mismatch at {w}x{h}"
    return True, "verified"


# ---------------------------------------------------------------------------------------------- pixel access

try:  # zero-copy view of Pillow's pixel memory (Arrow C data interface, Pillow >= 11.2); optional
    import pyarrow as _pa
except Exception:  # pragma: no cover - pyarrow comes with `datasets`
    _pa = None


def _fast_pixels(img: Image.Image) -> tuple[np.ndarray, Any] | None:
    """(pixels, keepalive): grey (h, w) uint8 or RGBX (h, w) uint32 for modes whose grey conversion is fused."""
    mode = img.mode
    if mode not in FAST_GREY_MODES:
        return None
    w, h = img.size
    if _pa is not None:
        try:
            arr = _pa.array(img)  # shares Pillow's buffer; refuses images split over several memory blocks
            if mode == "L":
                return arr.to_numpy(zero_copy_only=True).reshape(h, w), arr
            if sys.byteorder != "little":  # the uint32 view assumes R in the low byte
                return None
            return arr.values.to_numpy(zero_copy_only=True).view(np.uint32).reshape(h, w), arr
        except (ValueError, TypeError, NotImplementedError, _pa.ArrowException):
            pass
    if mode == "L":
        return np.asarray(img), None
    return None  # RGB without Arrow: Pillow's C convert + a 1-byte copy beats a 3-byte copy


def small_image(img: Image.Image, fast: bool | None = None) -> np.ndarray:
    """The 32x32 grey image imagehash computes the DCT of (``img.convert("L").resize((32, 32), LANCZOS)``).
    ``fast=False`` forces Pillow's own convert/resize (imagehash's code path); None/True use the numba resize when
    :func:`fast_path_enabled` (which never enables it unverified). Both give identical bits."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"empty image {w}x{h}")
    if fast is not False and fast_path_enabled():
        from ._resample import resize32

        got = _fast_pixels(img)
        if got is None:
            grey = img.convert("L")
            got = (np.asarray(grey), grey)
        return resize32(got[0])
    return np.asarray(img.convert("L").resize((SMALL, SMALL), Image.Resampling.LANCZOS))


def hashes_from_small(small: np.ndarray) -> np.ndarray:
    """(N, 32, 32) uint8 -> (N,) uint64 pHashes. scipy's DCT over the batch axis gives the same bits as one image
    at a time (checked in tests); a plain matrix-product DCT would not."""
    small = np.asarray(small)
    if small.ndim == 2:
        small = small[None]
    n = small.shape[0]
    if n == 0:
        return np.zeros(0, np.uint64)
    d = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=1), axis=2)
    low = d[:, :HASH_SIZE, :HASH_SIZE].reshape(n, HASH_SIZE * HASH_SIZE)
    med = np.median(low, axis=1)
    bits = low > med[:, None]
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def phash_image(img: Image.Image, fast: bool | None = None) -> int:
    """pHash of a Pillow image as an int in [0, 2**64); equals ``int(str(imagehash.phash(img)), 16)``."""
    return int(hashes_from_small(small_image(img, fast))[0])


# ------------------------------------------------------------------------------------------ files and bytes


def _image_error(reason: str, detail: str) -> Exception:
    try:
        from aloevision.images import ImageError

        return ImageError(reason, detail)
    except Exception:  # pragma: no cover - images.py is always there in the package
        return ValueError(f"{reason}: {detail}")


def default_reader(ref: ImageRef) -> bytes:
    """Bytes of a reference: raw bytes pass through; paths and ``archive::member`` go to ``aloevision.images``."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    from aloevision.images import read_image_bytes

    return read_image_bytes(os.fspath(ref))


def decode(data: bytes, name: str = "<bytes>", load: bool = True) -> Image.Image:
    """Open and fully decode image bytes; failures raise ``aloevision.images.ImageError`` with a reason.
    ``load=False`` only parses the header (and runs Pillow's decompression-bomb check)."""
    if not data:
        raise _image_error("truncated_image", f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if load:
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _image_error("decompression_bomb", f"{name}: {e}") from None
    except UnidentifiedImageError:
        raise _image_error("unreadable_image", f"{name}: not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        msg = str(e).lower()
        reason = "truncated_image" if ("truncated" in msg or isinstance(e, EOFError)) else "corrupt_image"
        raise _image_error(reason, f"{name}: {type(e).__name__}: {e}") from None
    return img


def _small_from_bytes(data: bytes, name: str, fast: bool | None = None) -> np.ndarray:
    if PNG_DIRECT and fast is not False and data[:8] == b"\x89PNG\r\n\x1a\n" and fast_path_enabled():
        # Plain 8-bit L/RGB PNGs: a fast inflate + one fused unfilter/grey pass instead of Pillow's row-by-row
        # decode into RGBX (lossless, so the pixels are Pillow's); anything unusual returns None -> Pillow.
        img = decode(data, name, load=False)  # header, mode and the decompression-bomb check stay Pillow's
        if img.format == "PNG" and img.mode in ("L", "RGB") and "transparency" not in img.info:
            from ._png import grey_pixels
            from ._resample import resize32

            grey = grey_pixels(data)
            if grey is not None and grey.shape == (img.size[1], img.size[0]):
                return resize32(grey)
    return _small_from_image(decode(data, name), name, fast)


def _small_from_image(img: Image.Image, name: str, fast: bool | None) -> np.ndarray:
    try:
        return small_image(img, fast)
    except Exception as e:  # a mode Pillow cannot convert to L, a zero-size frame, ...
        raise _image_error("corrupt_image", f"{name}: cannot hash ({type(e).__name__}: {e})") from None


def phash_file(ref: ImageRef, reader: Reader | None = None, fast: bool | None = None) -> int:
    """pHash of an image file, ``archive::member`` reference or encoded bytes. Raises ``ImageError`` on bad input."""
    data = (reader or default_reader)(ref)
    name = "<bytes>" if isinstance(ref, (bytes, bytearray, memoryview)) else os.fspath(ref)
    return int(hashes_from_small(_small_from_bytes(data, name, fast))[0])


# ------------------------------------------------------------------------------------------------- batches


def _describe(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    if reason:
        return str(e)
    return f"unreadable_image: {type(e).__name__}: {e}"


def hash_many(refs: Iterable[ImageRef], workers: int = 1, progress: bool = False, reader: Reader | None = None,
              cache: "PHashCache | None" = None, chunk_size: int = 512,
              fast: bool | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """pHash every reference. Returns ``(hashes, errors)``: ``hashes[i]`` is the uint64 hash of ``refs[i]`` (0 where
    it failed) and ``errors`` lists ``(i, reason)`` for each reference that could not be read or decoded; nothing
    raises for a bad image. Threads parallelise (decoders and the resize kernels release the GIL).

    With a :class:`~aloevision.leakage.cache.PHashCache`, images are keyed by the sha1 of their bytes: an image
    already hashed (by any process, any earlier run) is read but not decoded, and new hashes are stored.
    ``fast=False`` hashes with Pillow's resize (imagehash's own path); the bits, and so the cache, are the same."""
    refs = list(refs)
    read = reader or default_reader
    n = len(refs)
    out = np.zeros(n, np.uint64)
    errors: list[tuple[int, str]] = []
    if n == 0:
        return out, errors
    if fast is not False:
        fast_path_enabled()  # compile + self-check once, before threads start
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="pHash", unit="img")

    def work(i: int) -> tuple[int, Any, bytes | None]:
        ref = refs[i]
        try:
            data = read(ref)
            digest = hashlib.sha1(data).digest() if cache is not None else None
            if digest is not None:
                hit = cache.get(digest)
                if hit is not None:
                    return i, int(hit), None
            name = "<bytes>" if isinstance(ref, (bytes, bytearray, memoryview)) else str(ref)
            return i, _small_from_bytes(data, name, fast), digest
        except Exception as e:  # every failure becomes a counted error, never a crash of the batch
            return i, e, None

    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, n, chunk_size):
            idx = range(start, min(n, start + chunk_size))
            results = list(pool.map(work, idx)) if pool is not None else [work(i) for i in idx]
            small_idx, smalls, digests = [], [], []
            for i, val, digest in results:
                if isinstance(val, BaseException):
                    errors.append((i, _describe(val)))
                elif isinstance(val, np.ndarray):
                    small_idx.append(i)
                    smalls.append(val)
                    digests.append(digest)
                else:
                    out[i] = val
            if smalls:
                h = hashes_from_small(np.stack(smalls))
                out[np.asarray(small_idx)] = h
                if cache is not None:
                    cache.put_many([d for d in digests], h)
            if bar is not None:
                bar.update(len(idx))
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.flush()
    return out, errors


def to_hex(h: int | np.integer) -> str:
    """16-digit hex, the string ``str(imagehash.phash(img))`` gives."""
    return f"{int(h):016x}"


__all__: Sequence[str] = ("phash_image", "phash_file", "phash_reference", "hash_many", "small_image",
                          "hashes_from_small", "version_tag", "fast_path_enabled", "default_reader", "decode", "to_hex")
