"""Image references and reading images from the archives datasets ship, without extracting them.

An image reference is a string:

* a filesystem path (absolute once an adapter resolved it), or
* ``<archive>::<member>`` for a member of an archive. ``<archive>`` is one of
  ``*.zip``, ``*.tar``, ``*.tar.gz`` / ``*.tgz``, ``*.tar.zst`` / ``*.tzst``, or a split tarball given by the name
  of the whole (``images.tar.gz``) when only its parts exist next to it (``images.tar.gz.aa``, ``.ab``, ...; parts
  are concatenated in sorted order, as ``cat images.tar.gz.a* | tar -xz`` does).

Archives are indexed once (member name -> where its bytes are) and the index is cached in memory and, for
compressed tarballs whose indexing needs a full decompression pass, on disk under ``$ALOEVISION_INDEX_CACHE``
(default ``~/.cache/aloevision/archive_index``), keyed by the archive's path, size and mtime.

Random access cost by kind: zip and plain tar read a member directly. Gzip tarballs keep zlib checkpoints every
``GZ_CHECKPOINT_BYTES`` of output during the first pass, so a read decompresses at most that much plus the member.
Zstandard tarballs (single frame, as ``tar --zstd`` writes them) can only be read forward: reads in archive order
are cheap, a backward jump restarts decompression from the start (callers that read a whole .tar.zst should use
:func:`iter_archive` instead).

Every failure is an :class:`ImageError` with a machine-readable ``reason`` (one of :data:`REASONS`) that the
cleaning stage counts.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import threading
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import IO, Iterator

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

SEP = "::"
REASONS = (
    "missing_image",
    "unreadable_image",
    "truncated_image",
    "corrupt_image",
    "decompression_bomb",
    "path_escape",
    "invalid_path",
)
# Pillow's own default (~89.5 Mpx); medical figures are far smaller, whole-slide images are not read here.
DEFAULT_MAX_PIXELS = 89_478_485
# The most encoded bytes one image (file or archive member) may have: read with a bound, refused before reading when
# the size is known (a zip member that expands to 1 GiB is refused from its directory entry, never inflated).
MAX_IMAGE_BYTES = int(os.environ.get("ALOEVISION_MAX_IMAGE_BYTES", 256 << 20))
# An image whose header declares this many pixels or more but whose encoded data is smaller than its raw pixels
# divided by MAX_EXPANSION is refused before decoding: no real photograph or scan compresses that well, a crafted
# "81 Mpx of zeros" does (deflate's ceiling is about 1032:1).
BOMB_MIN_PIXELS = 16_000_000
MAX_EXPANSION = 250
GZ_CHECKPOINT_BYTES = 16 << 20
_CHUNK = 1 << 16
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.zstd")


class ImageError(Exception):
    """An image that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown image error reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------------- references


def make_ref(archive: str | os.PathLike, member: str) -> str:
    return f"{os.fspath(archive)}{SEP}{member}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """``"a.zip::x/y.jpg"`` -> ``("a.zip", "x/y.jpg")``; a plain path -> ``(path, None)``."""
    if SEP in ref:
        archive, member = ref.split(SEP, 1)
        return archive, member
    return ref, None


def is_archive(path: str | os.PathLike) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(_ARCHIVE_SUFFIXES)


def normalize_member(name: str) -> str:
    """Archive member names as looked up: forward slashes, no leading ``./``."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def check_path_chars(path: str) -> None:
    """Raises ``invalid_path`` for a path no file system accepts (a NUL byte, lone surrogates from undecodable
    bytes) instead of letting ``os`` raise ``ValueError`` / ``UnicodeEncodeError`` deep inside a stage."""
    if "\x00" in path:
        raise ImageError("invalid_path", f"image path {path[:200]!r} contains a NUL byte")
    try:
        os.fsencode(path)
    except UnicodeError:
        raise ImageError("invalid_path", f"image path {path[:200]!r} is not encodable") from None


def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, read with a size bound. The file is opened non-blocking and checked with
    ``fstat`` before any read, so a FIFO, socket or device never blocks the caller (plain ``open()`` on a FIFO waits
    forever for a writer). Raises :class:`ImageError`."""
    path = os.fspath(path)
    check_path_chars(path)
    limit = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ImageError("missing_image", f"{path} does not exist") from None
    except IsADirectoryError:
        raise ImageError("unreadable_image", f"{path} is a directory") from None
    except OSError as e:
        raise ImageError("unreadable_image", f"{path}: {e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("unreadable_image", f"{path} is not a regular file (mode {stat.filemode(st.st_mode)})")
        if st.st_size > limit:
            raise ImageError("decompression_bomb", f"{path} is {st.st_size} bytes > limit {limit}")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(limit + 1)
    except OSError as e:
        raise ImageError("unreadable_image", f"{path}: {e}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise ImageError("decompression_bomb", f"{path} grew past the limit of {limit} bytes while read")
    return data


def is_regular(path: str | os.PathLike) -> bool:
    """True for a regular file (following symlinks); False for FIFOs, sockets, devices, folders, bad names."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_member(member: str) -> str:
    """A member name an archive may hold without escaping: relative, no ``..``. Raises ``path_escape``."""
    m = normalize_member(member)
    if not m or m.startswith("/") or re.match(r"^[A-Za-z]:", m) or ".." in m.split("/"):
        raise ImageError("path_escape", f"archive member {member!r} is absolute or contains '..'")
    return m


def resolve_ref(root: str | os.PathLike, rel: str) -> str:
    """The absolute path of ``rel`` inside ``root``; raises ``ImageError("path_escape")`` when ``rel`` is absolute,
    contains ``..``, or resolves (through symlinks) outside ``root``. The file need not exist."""
    if not isinstance(rel, str) or not rel.strip():
        raise ImageError("missing_image", f"empty image path {rel!r}")
    check_path_chars(rel)
    rel_n = rel.replace("\\", "/")
    if rel_n.startswith("/") or re.match(r"^[A-Za-z]:", rel_n) or os.path.isabs(rel):
        raise ImageError("path_escape", f"absolute image path {rel!r}")
    if ".." in rel_n.split("/"):
        raise ImageError("path_escape", f"image path {rel!r} contains '..'")
    root_real = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root_real, rel_n))
    if target != root_real and not target.startswith(root_real.rstrip(os.sep) + os.sep):
        raise ImageError("path_escape", f"image path {rel!r} resolves to {target}, outside {root_real}")
    return target


def split_parts(archive: str) -> list[str]:
    """The files that make up ``archive``: itself when it exists, else its sorted split parts ``archive.*``."""
    if os.path.exists(archive):
        return [archive]
    parts = sorted(p for p in glob.glob(glob.escape(archive) + ".*") if re.search(r"\.[A-Za-z0-9_-]{1,8}$", p))
    return parts


# ------------------------------------------------------------------------------------------ raw byte streams


class _MultiFile:
    """Read-only, seekable concatenation of split archive parts."""

    def __init__(self, parts: list[str]):
        self.parts = parts
        self.sizes = [os.path.getsize(p) for p in parts]
        self.starts = [sum(self.sizes[:i]) for i in range(len(parts))]
        self.total = sum(self.sizes)
        self.pos = 0
        self._fh: IO[bytes] | None = None
        self._fh_idx = -1

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        out = []
        while n > 0 and self.pos < self.total:
            idx = max(i for i, s in enumerate(self.starts) if s <= self.pos)
            if idx != self._fh_idx:
                if self._fh:
                    self._fh.close()
                self._fh, self._fh_idx = open(self.parts[idx], "rb"), idx
            self._fh.seek(self.pos - self.starts[idx])
            chunk = self._fh.read(min(n, self.sizes[idx] - (self.pos - self.starts[idx])))
            if not chunk:
                break
            out.append(chunk)
            self.pos += len(chunk)
            n -= len(chunk)
        return b"".join(out)

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


class _DecompressedStream:
    """Seekable read-only view of a compressed stream (gzip or zstd, possibly split in parts).

    Forward seeks decompress and discard. Gzip keeps zlib checkpoints so backward seeks restart from the nearest
    one; zstd restarts from the beginning."""

    def __init__(self, parts: list[str], codec: str):
        self.parts, self.codec = parts, codec
        self.checkpoints: list[tuple[int, int, object]] = []  # (raw_pos, out_pos, zlib decompressor copy)
        self._restart(None)

    # -- decompressor state
    def _restart(self, checkpoint) -> None:
        self.raw = _MultiFile(self.parts)
        self.pending = b""
        self.unconsumed = b""
        if self.codec == "gz":
            if checkpoint is None:
                self.raw_pos, self.out_pos, self.d = 0, 0, None
            else:
                self.raw_pos, self.out_pos, d = checkpoint
                self.d = d.copy()
            self.raw.seek(self.raw_pos)
            self._last_cp = self.out_pos
        else:
            import zstandard

            self.out_pos = 0
            self._zr = zstandard.ZstdDecompressor().stream_reader(self.raw, read_across_frames=True)
        self.pending_start = self.out_pos

    def _produce(self) -> bytes:
        """The next piece of decompressed output (b"" at the end). Invariant: pending_start+len(pending)==out_pos."""
        if self.codec == "zst":
            try:
                piece = self._zr.read(1 << 20)
            except Exception as e:  # zstandard.ZstdError
                raise ImageError("corrupt_image", f"corrupt zstd stream in {self.parts[0]}: {e}") from None
            self.out_pos += len(piece)
            return piece
        while True:
            if self.unconsumed:
                data, self.unconsumed = self.unconsumed, b""
            else:
                if self.d is not None and self.out_pos - self._last_cp >= GZ_CHECKPOINT_BYTES:
                    # At an input-chunk boundary with all output emitted: a safe restart point.
                    self.checkpoints.append((self.raw_pos, self.out_pos, self.d.copy()))
                    self._last_cp = self.out_pos
                data = self.raw.read(_CHUNK)
                self.raw_pos += len(data)
                if not data:
                    return b""
            if self.d is None:  # start of a (further) gzip member; pigz and split archives concatenate members
                if not data.strip(b"\x00"):
                    continue
                self.d = zlib.decompressobj(47)
            try:
                piece = self.d.decompress(data)
            except zlib.error as e:
                raise ImageError("corrupt_image", f"corrupt gzip stream in {self.parts[0]}: {e}") from None
            if self.d.eof:
                self.unconsumed, self.d = self.d.unused_data, None
            if piece:
                self.out_pos += len(piece)
                return piece

    # -- file-like API used by tarfile and readers
    def tell(self) -> int:
        return self.pending_start

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.pending_start
        elif whence == 2:
            raise io.UnsupportedOperation("seek from end of a compressed stream")
        if pos < self.pending_start:
            cps = [c for c in self.checkpoints if c[1] <= pos] if self.codec == "gz" else []
            self.raw.close()
            self._restart(cps[-1] if cps else None)
        while pos > self.pending_start + len(self.pending):
            self.pending_start += len(self.pending)
            self.pending = b""
            piece = self._produce()
            if not piece:
                break
            self.pending = piece
        if pos <= self.pending_start + len(self.pending):
            self.pending = self.pending[pos - self.pending_start:]
            self.pending_start = pos
        return self.pending_start

    def read(self, n: int = -1) -> bytes:
        out = []
        want = n if n is not None and n >= 0 else float("inf")
        got = 0
        while got < want:
            if not self.pending:
                piece = self._produce()
                if not piece:
                    break
                self.pending = piece
            take = self.pending[: int(min(len(self.pending), want - got))]
            out.append(take)
            got += len(take)
            self.pending = self.pending[len(take):]
            self.pending_start += len(take)
        return b"".join(out)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


# -------------------------------------------------------------------------------------------------- archives


def _index_cache_dir() -> Path:
    return Path(os.environ.get("ALOEVISION_INDEX_CACHE", Path.home() / ".cache" / "aloevision" / "archive_index"))


class Archive:
    """One archive (zip / tar / tar.gz / tar.zst, possibly split): a member index and member reads."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.parts = split_parts(self.path)
        if not self.parts:
            raise ImageError("missing_image", f"archive {self.path} not found (nor split parts {self.path}.*)")
        bad = [p for p in self.parts if not is_regular(p)]
        if bad:  # a FIFO named like an archive would block the zip/tar reader forever
            raise ImageError("unreadable_image", f"archive part {bad[0]} is not a regular file")
        low = self.path.lower()
        self.kind = (
            "zip" if low.endswith(".zip")
            else "tar" if low.endswith(".tar")
            else "gz" if low.endswith((".tar.gz", ".tgz"))
            else "zst"
        )
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None
        self._stream: _DecompressedStream | None = None
        self._index: dict[str, tuple[int, int]] | None = None

    # -- index
    def _cache_key(self) -> str:
        sig = [(os.path.realpath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in self.parts]
        return hashlib.sha256(json.dumps(sig).encode()).hexdigest()[:24]

    def index(self) -> dict[str, tuple[int, int]]:
        """member name -> (offset of its data, size); zip offsets are unused (zipfile keeps its own directory)."""
        if self._index is not None:
            return self._index
        with self._lock:
            if self._index is not None:
                return self._index
            if self.kind == "zip":
                zf = self._zipfile()
                self._index = {normalize_member(i.filename): (0, i.file_size) for i in zf.infolist() if not i.is_dir()}
                return self._index
            cache = _index_cache_dir() / f"{self._cache_key()}.json"
            if cache.exists():
                try:
                    self._index = {k: tuple(v) for k, v in json.loads(cache.read_text()).items()}
                    return self._index
                except (OSError, ValueError):
                    pass  # a damaged cache entry is rebuilt below
            index: dict[str, tuple[int, int]] = {}
            fileobj = self._open_stream()
            try:
                with tarfile.open(fileobj=fileobj, mode="r:") as tf:  # type: ignore[arg-type]
                    for info in tf:
                        if info.isfile():
                            index[normalize_member(info.name)] = (info.offset_data, info.size)
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ImageError("corrupt_image", f"cannot index archive {self.path}: {e}") from None
            self._index = index
            try:  # the cache is an optimisation: an unwritable cache dir only costs a re-index
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(index))
                os.replace(tmp, cache)
            except OSError:
                pass
            return index

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                src = self.parts[0] if len(self.parts) == 1 else _MultiFileIO(self.parts)
                self._zip = zipfile.ZipFile(src)
            except (zipfile.BadZipFile, OSError) as e:
                raise ImageError("corrupt_image", f"cannot open zip {self.path}: {e}") from None
        return self._zip

    def _open_stream(self):
        if self.kind == "tar":
            return _MultiFileIO(self.parts)
        if self._stream is None:
            self._stream = _DecompressedStream(self.parts, self.kind)
        return self._stream

    def __contains__(self, member: str) -> bool:
        return normalize_member(member) in self.index()

    def members(self) -> list[str]:
        return list(self.index())

    def read(self, member: str) -> bytes:
        m = check_member(member)
        entry = self.index().get(m)
        if entry is None:
            raise ImageError("missing_image", f"{m} not in archive {self.path}")
        offset, size = entry
        if size > MAX_IMAGE_BYTES:  # from the directory / header: refused before anything is inflated
            raise ImageError("decompression_bomb", f"{m} in {self.path} expands to {size} bytes > limit "
                                                   f"{MAX_IMAGE_BYTES}")
        with self._lock:
            try:
                if self.kind == "zip":
                    return self._zipfile().read(self._zip_name(m))
                stream = self._open_stream()
                stream.seek(offset)
                data = stream.read(size)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
                raise ImageError("corrupt_image", f"cannot read {m} from {self.path}: {e}") from None
        if len(data) != size:
            raise ImageError("truncated_image", f"{m} in {self.path}: got {len(data)} of {size} bytes")
        return data

    def _zip_name(self, m: str) -> str:
        zf = self._zipfile()
        if not hasattr(self, "_zip_names"):
            self._zip_names = {normalize_member(i.filename): i.filename for i in zf.infolist()}
        return self._zip_names[m]


class _MultiFileIO(io.RawIOBase):
    """``_MultiFile`` as a real io object (zipfile and tarfile need seek-from-end and readinto)."""

    def __init__(self, parts: list[str]):
        super().__init__()
        self._mf = _MultiFile(parts)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._mf.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._mf.pos, 2: self._mf.total}[whence]
        self._mf.seek(max(0, base + pos))
        return self._mf.pos

    def readinto(self, b) -> int:
        data = self._mf.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._mf.close()
        super().close()


_ARCHIVES: OrderedDict[str, Archive] = OrderedDict()
_ARCHIVES_LOCK = threading.Lock()
_MAX_OPEN_ARCHIVES = 64


def get_archive(path: str | os.PathLike) -> Archive:
    """The process-wide cached :class:`Archive` for ``path`` (index built once)."""
    key = os.path.realpath(os.fspath(path)) if os.path.exists(path) else os.path.abspath(os.fspath(path))
    with _ARCHIVES_LOCK:
        arc = _ARCHIVES.get(key)
        if arc is None:
            arc = Archive(os.fspath(path))
            _ARCHIVES[key] = arc
            if len(_ARCHIVES) > _MAX_OPEN_ARCHIVES:
                _ARCHIVES.popitem(last=False)
        else:
            _ARCHIVES.move_to_end(key)
        return arc


def iter_archive(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(member, bytes) of every file in an archive, in archive order, one sequential pass."""
    arc = get_archive(path)
    if arc.kind == "zip":
        for m in arc.members():
            yield m, arc.read(m)
        return
    stream = _MultiFileIO(arc.parts) if arc.kind == "tar" else _DecompressedStream(arc.parts, arc.kind)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[arg-type]
            for info in tf:
                if info.isfile():
                    f = tf.extractfile(info)
                    if f is not None:
                        yield normalize_member(info.name), f.read()
    finally:
        stream.close()


# ------------------------------------------------------------------------------------------------ reading


def read_image_bytes(ref: str) -> bytes:
    """The raw (encoded) bytes of an image reference, at most :data:`MAX_IMAGE_BYTES`; non-regular files are
    refused before they are opened for reading. Raises :class:`ImageError`."""
    path, member = split_ref(ref)
    if member is None:
        return open_regular(path)
    check_path_chars(path)
    return get_archive(path).read(member)


def _label(src) -> str:
    return src if isinstance(src, str) else "<image bytes>"


def _open_header(src: "str | bytes", max_pixels: int | None) -> Image.Image:
    """A lazily opened Pillow image (header parsed, pixels not decoded) of a reference or of encoded bytes, with
    the pixel-count limit and the expansion-ratio limit applied."""
    data = read_image_bytes(src) if isinstance(src, str) else bytes(src)
    ref = _label(src)
    if not data:
        raise ImageError("truncated_image", f"{ref} is empty")
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("decompression_bomb", f"{ref}: {e}") from None
    except UnidentifiedImageError:
        raise ImageError("unreadable_image", f"{ref}: not an image Pillow can identify") from None
    except Exception as e:  # noqa: BLE001  any parser failure (ValueError for oversized text chunks, struct.error...)
        raise ImageError(_classify(e), f"{ref}: {type(e).__name__}: {e}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError("corrupt_image", f"{ref}: size {w}x{h}")
    if w * h > limit:
        raise ImageError("decompression_bomb", f"{ref}: {w}x{h} = {w * h} pixels > limit {limit}")
    if w * h >= BOMB_MIN_PIXELS and w * h > len(data) * MAX_EXPANSION:
        raise ImageError("decompression_bomb", f"{ref}: header declares {w}x{h} but the file holds only "
                                               f"{len(data)} bytes (over {MAX_EXPANSION}:1)")
    im.info["_aloevision_nbytes"] = len(data)
    im._aloevision_data = data  # type: ignore[attr-defined]  # kept for verify()
    return im


def _classify(e: BaseException) -> str:
    msg = str(e).lower()
    if "truncated" in msg or "end of file" in msg or isinstance(e, EOFError) or "premature" in msg:
        return "truncated_image"
    return "corrupt_image"


def image_size(ref: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) as stored, from the image header; no pixel decoding. Raises :class:`ImageError`."""
    return _open_header(ref, max_pixels).size


def verify_image(ref: str, max_pixels: int | None = None, decode: bool = True) -> tuple[int, int]:
    """Integrity check. ``decode=True`` (what ingest runs): :func:`decode_image`, the full decode every later stage
    uses, so what passes here can be trained on; returns the displayed (width, height), EXIF orientation applied.
    ``decode=False``: header, Pillow's ``verify()`` (PNG chunk CRCs up to IEND, ...) and the JPEG end marker only;
    returns the stored size. Raises :class:`ImageError`."""
    if decode:
        return decode_image(ref, max_pixels).size
    im = _open_header(ref, max_pixels)
    _integrity(im, ref)
    return im.size


def _integrity(im: Image.Image, ref: str) -> None:
    """The checks a decode alone misses: the JPEG end marker (Pillow's JPEG verify reads nothing; a missing EOI is
    the signature of a cut-off download) and Pillow's ``verify()`` (PNG chunk CRCs up to IEND, ...), on a second
    parse of the same in-memory bytes."""
    data: bytes = im._aloevision_data  # type: ignore[attr-defined]
    if im.format == "JPEG" and b"\xff\xd9" not in data[-1024:]:
        raise ImageError("truncated_image", f"{ref}: JPEG without end-of-image marker")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.open(io.BytesIO(data)).verify()
    except Exception as e:  # noqa: BLE001
        raise ImageError(_classify(e), f"{ref}: {type(e).__name__}: {e}") from None


def _load(im: Image.Image, ref: str) -> Image.Image:
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels decide, below
            im.load()
    except Image.DecompressionBombError as e:
        raise ImageError("decompression_bomb", f"{ref}: {e}") from None
    except MemoryError:
        raise ImageError("decompression_bomb", f"{ref}: out of memory while decoding") from None
    except Exception as e:  # noqa: BLE001  ValueError (text chunk past MAX_TEXT_CHUNK), OSError, struct.error, ...
        raise ImageError(_classify(e), f"{ref}: {type(e).__name__}: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev
    return im


def open_image(ref: str, max_pixels: int | None = None) -> Image.Image:
    """The decoded Pillow image exactly as stored (any mode, no EXIF orientation): for masks and pixel-exact work.
    Anything shown to a model goes through :func:`decode_image`. Raises :class:`ImageError`."""
    return _load(_open_header(ref, max_pixels), ref)


def decode_image(image, max_pixels: int | None = None) -> Image.Image:
    """THE image decode: every stage that looks at pixels (ingest's check, training's collator, scoring, evaluation,
    the attacks) calls this, so they all see the same pixels. ``image``: a reference (path or ``archive::member``),
    encoded bytes, a ``{"bytes", "path"}`` dict (a ``datasets`` Image value) or a PIL image (e.g. one ``datasets``
    decoded). Steps: bounded read (non-regular files refused), pixel and expansion-ratio limits from the header,
    full decode (truncation, corrupt data and Pillow's ancillary-chunk limits raise), EXIF orientation applied,
    then :func:`to_rgb`. Returns an RGB image; raises :class:`ImageError` for every failure."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, Image.Image):
        im, ref = image, "<PIL image>"
        _load(im, ref)
    elif isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        src = os.fspath(image) if isinstance(image, (str, os.PathLike)) else bytes(image)
        ref = _label(src)
        im = _open_header(src, max_pixels)
        _integrity(im, ref)
        im = _load(im, ref)
    else:
        raise ImageError("unreadable_image", f"cannot decode an image from {type(image).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = ImageOps.exif_transpose(im)  # the orientation a viewer shows; datasets' decode applies it too
        return to_rgb(im)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001  a mode with no RGB conversion, a broken EXIF block, ...
        raise ImageError("corrupt_image", f"{ref}: {type(e).__name__}: {e}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB for any mode real medical data has. 16/32-bit and float images (``I;16``, ``I``, ``F``) are min-max
    scaled to 8 bits first (Pillow's plain ``convert`` clips them to white); alpha is composited on black."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        scaled = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.nan_to_num(scaled).astype("uint8"), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (0, 0, 0))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")


def materialize_bytes(data: bytes, cache_dir: str | os.PathLike, suffix: str = "") -> str:
    """Write embedded image bytes (parquet / HF ``Image`` features) to a content-addressed file; returns its path."""
    digest = hashlib.sha256(data).hexdigest()
    out = Path(cache_dir) / digest[:2] / f"{digest}{suffix}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return str(out)
