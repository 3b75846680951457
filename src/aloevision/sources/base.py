"""What every adapter shares: reading native record files, finding images in folders or archives, turning
text with placeholders into message parts, and the structural checks that decide Sample vs Drop."""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from aloevision.cleaning import check_sample, structure_rules
from aloevision.images import (
    ImageError,
    get_archive,
    is_archive,
    is_regular,
    make_ref,
    normalize_member,
    resolve_ref,
    split_parts,
)
from aloevision.schema import Drop, Sample, image_part, text_part

log = logging.getLogger(__name__)

ROLE_MAP = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "system": "system",
}


class RecordError(ValueError):
    """A native record that cannot be converted; ``reason`` becomes the Drop reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Malformed:
    """A line / row that did not even parse (bad JSON line, non-object row)."""

    detail: str


@dataclass
class SourceContext:
    """A source config, resolved for one adapter run."""

    name: str
    domain: str
    modality: str
    path: str
    files: list[str]
    images: str | None
    hf_config: str | None = None
    split: str = "train"
    boxes: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, src, default_files: Sequence[str], default_images: str | None) -> "SourceContext":
        files = list(getattr(src, "files", None) or []) or list(default_files)
        images = getattr(src, "images", None)
        return cls(
            name=src.name, domain=src.domain, modality=src.modality, path=os.fspath(src.path), files=files,
            images=default_images if images is None else images, hf_config=getattr(src, "hf_config", None),
            split=getattr(src, "split", "train") or "train", boxes=bool(getattr(src, "boxes", False)),
            options=dict(getattr(src, "options", None) or {}),
        )

    @property
    def is_local(self) -> bool:
        return os.path.exists(self.path)

    @property
    def root(self) -> Path:
        """Where images are looked up: ``options.image_root`` (needed when ``path`` is a Hub id), else the source
        folder (or the folder of a single data file)."""
        if self.options.get("image_root"):
            return Path(self.options["image_root"])
        p = Path(self.path)
        return p if p.is_dir() else p.parent

    def sid(self, native: Any) -> str:
        return f"{self.name}/{native}"

    def drop(self, native: Any, reason: str, detail: str = "") -> Drop:
        return Drop(self.sid(native), self.name, reason, detail)

    def sample(self, native: Any, messages: list[dict], images: list[str], meta: dict | None = None) -> Sample | Drop:
        """A Sample, or the Drop for the first structural rule it breaks (same reasons as the cleaning stage)."""
        s = Sample(self.sid(native), self.name, self.domain, self.modality, messages, images, meta or {})
        for ref in images:  # a file name that is not UTF-8 (a surrogate-escaped byte) cannot be written to an index
            try:
                ref.encode("utf-8")
            except UnicodeEncodeError:
                return self.drop(native, "invalid_path", f"image path {ref!r} is not valid UTF-8")
        try:  # meta carries raw record values: it must be writable as UTF-8 JSON like the rest of the sample
            json.dumps(s.meta, ensure_ascii=False, allow_nan=True).encode("utf-8")
        except (TypeError, ValueError, UnicodeError, RecursionError) as e:
            return self.drop(native, "malformed_record", f"a record value cannot be stored: {type(e).__name__}: {e}")
        return check_sample(s, structure_rules(max_images=10**9)) or s  # the 5-image cap is a cleaning decision

    def llava_sample(self, rec: dict, label: str, i: int, turns: list[tuple[str, str]], image_paths: list[Any],
                     meta: dict) -> Sample | Drop:
        """The LLaVA-format adapters' last step: locate the images, put them at their ``<image>`` markers, and build
        the sample under the record's own id (else ``<file>:<row>``)."""
        loc = self.locator()
        refs = [loc.locate(str(p)) for p in image_paths]
        return self.sample(native_id(rec, f"{label}:{i}"), llava_messages(turns, refs), refs, meta)

    def locator(self) -> "ImageLocator":
        if not hasattr(self, "_locator"):
            self._locator = ImageLocator(self.root, self.images)
        return self._locator


# ---------------------------------------------------------------------------------------------- record files


def data_files(ctx: SourceContext) -> list[Path]:
    """The local data files: ``path`` itself if it is a file, else each ``files`` glob under it (sorted). Only
    regular files count (a FIFO or socket named like a data file is never opened)."""
    p = Path(ctx.path)
    if p.is_file():
        return [p]
    out: list[Path] = []
    for pattern in ctx.files:
        matches = sorted(Path(m) for m in glob.glob(str(p / pattern), recursive=True) if is_regular(m))
        out.extend(m for m in matches if m not in out)
    if not out:
        raise FileNotFoundError(
            f"source {ctx.name}: no data files match {ctx.files} under {p} (set source.files to the native files)"
        )
    return out


def inventory(ctx: SourceContext, layouts: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    """What a source will read, before reading it: per ``files`` pattern and per ``images`` entry, the paths it
    matched (at most 5 shown, with the count) or that it matched nothing. ``layouts`` (alternative file sets of a
    release, e.g. MeCoVQA's folder names): ``missing_files`` lists what the best-matching one lacks. Logged by
    :func:`aloevision.sources.read_source`."""
    root = Path(ctx.path)
    if not ctx.is_local:
        return {"path": ctx.path, "hub": True, "image_root": ctx.options.get("image_root")}
    def matched(base: Path, pattern: str) -> list[str]:
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        found = sorted(glob.glob(full, recursive=True))
        if not found and is_archive(full) and split_parts(full):
            found = split_parts(full)
        return [os.path.relpath(f, base) for f in found]
    files = {pat: matched(root, pat) for pat in ([] if root.is_file() else ctx.files)}
    images = {pat: matched(ctx.root, pat) for pat in [x.strip() for x in (ctx.images or "").split(",") if x.strip()]}
    def summary(d: dict[str, list[str]]) -> dict[str, Any]:
        return {k: {"count": len(v), "first": v[:5]} for k, v in d.items()}
    missing_files = [k for k, v in files.items() if not v]
    if layouts:
        best = max(layouts, key=lambda lay: sum(bool(files.get(p)) for p in lay))
        missing_files = [p for p in best if not files.get(p)]
    return {"path": ctx.path, "files": summary(files), "images": summary(images), "missing_files": missing_files,
            "missing_images": [k for k, v in images.items() if not v]}


class Skipped:
    """Placeholder for a row of another shard: counted (ordinals stay global) but never parsed or converted."""

    __slots__ = ()


SKIPPED = Skipped()
JSON_CHUNK = 1 << 20  # characters read per refill of the streaming JSON reader
MAX_JSON_RECORD = 64 << 20  # one record (line, array element) larger than this is dropped unread, as malformed
WRAPPER_KEYS = ("data", "rows", "annotations", "train")
# An escaped surrogate (\ud800-\udfff) in JSON text: the decoded value may hold a lone surrogate, which no UTF-8
# writer accepts; such records are checked (a proper pair, e.g. an escaped emoji, passes).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_RAW_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes, as the surrogateescape error handler maps them


def _utf8(text: str) -> str:
    """``text`` writable as UTF-8: a file name's undecodable bytes (surrogate escapes) become ``\\udcXX``."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


class FileLabel(str):
    """A data file's label (its stem, used in ids and ``meta.file``) that also knows the file's name, so every drop
    can say which file and row it came from."""

    file: str

    def __new__(cls, path: "Path | str") -> "FileLabel":
        obj = super().__new__(cls, _utf8(path.stem if isinstance(path, Path) else path))
        obj.file = _utf8(path.name if isinstance(path, Path) else str(path))
        return obj

    def __reduce__(self):  # copies and pickles are plain strings (labels end up in sample meta)
        return (str, (str(self),))


def _encoding_problem(raw: str, obj: Any) -> str | None:
    """Why a decoded JSON value cannot be written back as UTF-8 (undecodable bytes, lone surrogates), or None."""
    if _RAW_SURROGATE.search(raw):
        return "bytes that are not UTF-8"
    if _ESCAPED_SURROGATE.search(raw):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (UnicodeError, ValueError, RecursionError):
            return "an escaped lone surrogate (not valid Unicode)"
    return None


class JsonStream:
    """Incremental JSON reader over a text file: the top-level array (or the array under a wrapper key of a
    top-level object) is decoded one element at a time with ``json.JSONDecoder.raw_decode`` (the stdlib's C
    scanner, so values are exactly what ``json.load`` gives: floats, not Decimals). Memory: one refill chunk plus
    the element being decoded (at most :data:`MAX_JSON_RECORD`), whatever the file size.

    A bad element (nested past the recursion limit, invalid JSON inside, too large, not UTF-8) is skipped by a
    bracket scanner and yields :class:`Malformed`; the elements after it are still read. A file cut off inside an
    element yields one :class:`Malformed` that says so, after every complete element before it."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()
        self.consumed = 0  # characters dropped from the front of buf (for error positions)

    def _fill(self, at_least: int = JSON_CHUNK) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(max(JSON_CHUNK, at_least))
        self.consumed += self.pos
        self.buf = self.buf[self.pos:] + chunk  # drop what was consumed; offsets restart at 0
        self.pos = 0
        if not chunk:
            self.eof = True
        return bool(chunk)

    def where(self) -> int:
        return self.consumed + self.pos

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n\ufeff":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise ValueError(f"{self.path.name}: not valid JSON: expected one of {chars!r} near character "
                             f"{self.where()}, got {c!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        """Decode the next complete value, reading more while it is cut off by the end of the buffer. Raises
        ``EOFError`` when the file ends inside it, ``ValueError`` / ``RecursionError`` when it is bad (the
        position is left at its start, for :meth:`skip`)."""
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number ending the buffer may continue in the next chunk
                    problem = _encoding_problem(self.buf[self.pos:end], obj)
                    if end - self.pos > MAX_JSON_RECORD:
                        problem = f"row over {MAX_JSON_RECORD} characters"
                    self.pos = end
                    if problem:
                        raise UnicodeError(problem)
                    return obj
            except json.JSONDecodeError as e:
                # Only a value cut off by the end of the buffer can be fixed by reading more: an unterminated
                # string, or an error right at the end. An error with data after it is invalid JSON.
                more = "Unterminated string" in e.msg or len(self.buf) - e.pos < 16
                if not more:
                    raise ValueError(f"not valid JSON ({e.msg})") from None
                if self.eof:
                    raise EOFError(f"the file ends inside this row ({e.msg})") from None
                if len(self.buf) - self.pos > MAX_JSON_RECORD:
                    raise ValueError(f"row over {MAX_JSON_RECORD} characters") from None
            self._fill(len(self.buf) - self.pos)  # grow geometrically: a long record is re-scanned O(log) times

    _TOKEN = re.compile(r'["\[\]{}]')
    _IN_STRING = re.compile(r'["\\]')

    def skip(self) -> bool:
        """Move past the value starting at the current position by bracket counting (no recursion, no decode);
        True when positioned after it, False when the file ends first."""
        depth, in_str, started = 0, False, False
        while True:
            if self.pos >= len(self.buf) and not self._fill():
                return False
            if in_str:
                m = self._IN_STRING.search(self.buf, self.pos)
                if m is None:
                    self.pos = len(self.buf)
                    continue
                if m.group() == "\\":
                    if m.end() >= len(self.buf) and not self._fill():
                        return False
                    self.pos = m.end() + 1
                    continue
                self.pos, in_str = m.end(), False
                if depth == 0:
                    return True
                continue
            c = self.peek()
            if not c:
                return False
            if not started and c not in '"[{':  # a scalar: ends at the next , ] } or whitespace
                m = re.compile(r"[,\]}\s]").search(self.buf, self.pos)
                while m is None:
                    if not self._fill():
                        self.pos = len(self.buf)
                        return True
                    m = re.compile(r"[,\]}\s]").search(self.buf, self.pos)
                self.pos = m.start()
                return True
            started = True
            m = self._TOKEN.search(self.buf, self.pos)
            if m is None:
                self.pos = len(self.buf)
                continue
            self.pos = m.end()
            t = m.group()
            if t == '"':
                in_str = True
            elif t in "[{":
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    return True

    def array(self) -> Iterator[Any]:
        """Elements of the array that starts here; bad elements as :class:`Malformed`."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        n = 0
        while True:
            n += 1
            try:
                yield self.value()
            except EOFError as e:
                self.pos = len(self.buf)  # the cut-off row is consumed: nothing follows it
                yield Malformed(f"{self.path.name} element {n}: {e}; the file is cut off, the rows before it are "
                                "kept")
                return
            except (ValueError, RecursionError, UnicodeError, MemoryError) as e:
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
                yield Malformed(f"{self.path.name} element {n} (character {self.where()}): {why}")
                if isinstance(e, UnicodeError):
                    pass  # decoded and already passed
                elif not self.skip():
                    yield Malformed(f"{self.path.name}: the file ends inside element {n}; the rest is lost")
                    return
            try:
                if self.expect(",]") == "]":
                    return
            except ValueError as e:
                yield Malformed(f"{self.path.name} after element {n}: {e}; the rest of the file is not read")
                return


def _open_text(path: Path):
    """A data file opened for text. Undecodable bytes become lone surrogates (``surrogateescape``), so one bad
    record is found and dropped instead of a ``UnicodeDecodeError`` ending the whole file."""
    if not is_regular(path):
        raise OSError(f"{path} is not a regular file")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _iter_json(path: Path) -> Iterator[Any]:
    """A .json file: a top-level array (streamed), an object wrapping the rows under ``data`` / ``rows`` /
    ``annotations`` / ``train`` (the first such array in the file is streamed), a single object (one row), or JSON
    lines saved as .json. Damage yields :class:`Malformed` rows; the readable rows are kept."""
    with _open_text(path) as f:
        js = JsonStream(f, path)
        first = js.peek()
        if first == "[":
            yield from js.array()
            if js.peek():
                yield Malformed(f"{path.name}: content after the top-level array (character {js.where()}) ignored")
            return
        if first != "{":
            yield from _iter_jsonl(path)
            return
        try:
            js.expect("{")
            obj: dict[str, Any] = {}
            if js.peek() != "}":
                while True:
                    key = js.value()
                    if not isinstance(key, str):
                        raise ValueError(f"object key {key!r}")
                    js.expect(":")
                    if key in WRAPPER_KEYS and js.peek() == "[":
                        yield from js.array()  # the rows: the other members are metadata
                        return
                    obj[key] = js.value()
                    if js.expect(",}") == "}":
                        break
            else:
                js.pos += 1
        except (ValueError, RecursionError, UnicodeError, EOFError, MemoryError) as e:
            if first == "{" and "\n{" in js.buf[: 1 << 16]:  # several objects: JSON lines saved as .json
                yield from _iter_jsonl(path)
                return
            yield Malformed(f"{path.name}: {type(e).__name__}: {e}")
            return
        if js.peek():  # a second object follows: JSON lines saved as .json
            del obj
            yield from _iter_jsonl(path)
            return
        yield obj


def _lines(f, path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None, problem) of a binary file, each line read with a bound: an over-long line is
    skipped to its end without being held, a line that is not UTF-8 is reported, never raised."""
    n = 0
    while True:
        raw = f.readline(MAX_JSON_RECORD + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_JSON_RECORD and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(JSON_CHUNK)
            yield n, None, f"line over {MAX_JSON_RECORD} bytes"
            continue
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8"), ""
        except UnicodeDecodeError as e:
            yield n, None, f"bytes that are not UTF-8 ({e.reason} at byte {e.start})"


def _iter_jsonl(path: Path, want: Callable[[int], bool] | None = None) -> Iterator[Any]:
    if not is_regular(path):
        yield Malformed(f"{path.name}: not a regular file")
        return
    with open(path, "rb") as f:
        for n, line, problem in _lines(f, path):
            if line is not None and not line.strip():
                continue
            if want is not None and not want(n):
                yield SKIPPED
                continue
            if line is None:
                yield Malformed(f"{path.name}:{n}: {problem}")
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
                yield Malformed(f"{path.name}:{n}: {why}")
                continue
            problem = _encoding_problem(line, obj)
            yield Malformed(f"{path.name}:{n}: {problem}") if problem else obj


def _iter_csv(path: Path) -> Iterator[Any]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        n = 0
        while True:
            n += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield Malformed(f"{path.name} row {n}: {e}")
                if n > 10 and reader.line_num == 0:
                    return
                continue
            if any(isinstance(v, str) and _RAW_SURROGATE.search(v) for v in row.values()) or \
                    any(k and _RAW_SURROGATE.search(k) for k in row if isinstance(k, str)):
                yield Malformed(f"{path.name} row {n}: bytes that are not UTF-8")
                continue
            yield row


def _iter_parquet(path: Path, want: Callable[[int], bool] | None,
                  columns: Sequence[str] | None = None) -> Iterator[Any]:
    import pyarrow.parquet as pq

    i = 0
    try:
        pf = pq.ParquetFile(path)
        # Only the columns the adapter reads (Magpie's 1,024-float embedding column would cost ~10x the decoding
        # and 4-5x the Arrow memory); a file with none of them is read whole, so its rows are still counted.
        have = set(pf.schema_arrow.names)
        cols = [c for c in dict.fromkeys(columns) if c in have] if columns is not None else None
        for batch in pf.iter_batches(batch_size=1024, columns=cols or None):
            n = batch.num_rows
            if want is not None and not any(want(j) for j in range(i, i + n)):
                yield from (SKIPPED for _ in range(n))
            else:
                for j, row in enumerate(batch.to_pylist(), i):
                    yield row if want is None or want(j) else SKIPPED
            i += n
    except Exception as e:  # noqa: BLE001  pyarrow raises its own types (ArrowInvalid, OSError) for damaged files
        yield Malformed(f"{path.name} after row {i}: {type(e).__name__}: {e}; the rest of the file is not read")


def read_file(path: Path, want: Callable[[int], bool] | None = None,
              columns: Sequence[str] | None = None) -> Iterator[Any]:
    """Rows of a JSON array / JSON lines / parquet / CSV file, streamed (never the whole file in memory); an
    unparsable line or damaged part yields :class:`Malformed` (the readable rows are kept). ``want(i)`` (row index
    within the file) lets a shard skip the rows of other shards cheaply: such rows yield :data:`SKIPPED` (JSON lines
    are not parsed, parquet batches without a wanted row are not converted to Python). ``columns``: the record keys
    the caller reads; parquet files decode only those (text formats are parsed whole either way)."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix in (".gz",) else path.suffix.lower()
    if not is_regular(path):
        yield Malformed(f"{path}: not a regular file")
        return
    try:
        if suffix == ".parquet":
            yield from _iter_parquet(path, want, columns)
            return
        if suffix == ".csv":
            yield from _iter_csv(path)
            return
        if suffix == ".json":
            yield from _iter_json(path)
            return
    except OSError as e:
        yield Malformed(f"{path.name}: {e}")
        return
    if want is None:
        yield from _iter_jsonl(path)
        return
    i = 0  # want() sees row indexes (blank lines are not rows), as the caller's enumerate does

    def want_line(_: int) -> bool:
        nonlocal i
        i += 1
        return want(i - 1)

    yield from _iter_jsonl(path, want_line)


@dataclass
class RowScope:
    """Which rows of a source this run converts (set by the ingest stage for a shard through :data:`ROW_SCOPE`):
    ``want(ordinal)`` over the global row ordinal (all data files in order). :func:`run_adapter` records in
    ``ordinal`` the row whose result it yielded last, so the ingest stage knows each output's row."""

    want: Callable[[int], bool] | None = None
    ordinal: int = -1


ROW_SCOPE: ContextVar[RowScope | None] = ContextVar("aloevision_row_scope", default=None)


def iter_records(ctx: SourceContext, columns: Sequence[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """(file label, row index within that file, record) over all data files, or over the HF dataset. Under a
    :class:`RowScope` rows of other shards come as :data:`SKIPPED` (one item per row either way). ``columns``: every
    record key the adapter's ``convert`` reads (with :data:`ID_COLUMNS`, which a failed record's drop reads): parquet
    files and Hub datasets then decode only those; None reads every column."""
    scope = ROW_SCOPE.get()
    want = scope.want if scope is not None else None
    if not ctx.is_local:
        import datasets  # the Hub is only reachable on clusters; tests and the demo use local files

        ds = datasets.load_dataset(ctx.path, ctx.hf_config, split=ctx.split, streaming=True)
        if columns is not None and ds.features:
            keep = [c for c in dict.fromkeys(columns) if c in ds.features]
            if keep:
                ds = ds.select_columns(keep)
        for col, feat in (ds.features or {}).items():  # embedded images as {"bytes", "path"}, never decoded here
            if isinstance(feat, datasets.Image):
                ds = ds.cast_column(col, datasets.Image(decode=False))
        label, i, it = ctx.hf_config or "hf", 0, iter(ds)
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001  a damaged shard of a Hub dataset ends the stream, counted
                yield label, i, Malformed(f"{ctx.path} row {i}: {type(e).__name__}: {str(e)[:300]}; the rest of the "
                                          "stream is not read")
                return
            yield label, i, (row if want is None or want(i) else SKIPPED)
            i += 1
    offset = 0
    for path in data_files(ctx):
        n = 0
        local = None if want is None else (lambda j, o=offset: want(o + j))
        label = FileLabel(path)
        for n, row in enumerate(read_file(path, local, columns), 1):
            yield label, n - 1, row
        offset += n


def missing(value: Any) -> bool:
    """True for the many ways a row says "no value": None, NaN, "", "None", "nan", "null"."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().lower() in ("", "none", "nan", "null"):
        return True
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return True
    return False


# ---------------------------------------------------------------------------------------------- image lookup


def top_level_links(root: str | os.PathLike) -> list[str]:
    """The resolved targets of the symlinks among ``root``'s own entries (not below): archives and image folders on
    shared storage that the user linked into the source folder. Missing folder or dangling links: none."""
    out = []
    try:
        with os.scandir(root) as it:
            for e in it:
                if e.is_symlink():
                    out.append(os.path.realpath(e.path))
    except OSError:
        return []
    return out


def resolve_in_source(root: str | os.PathLike, rel: str) -> str:
    """A record's image path inside its source folder ``root``, by the symlink rule (docs/data.md, "Symlinks"):
    ``rel`` must be relative and free of ``..`` (else ``path_escape``, as :func:`resolve_ref`); it may resolve
    anywhere inside ``root``, or, when its FIRST component is a symlink among ``root``'s own entries, anywhere inside
    (or exactly at) that link's resolved target. A symlink further down that leaves both is ``path_escape``."""
    try:
        return resolve_ref(root, rel)
    except ImageError as e:
        if e.reason != "path_escape":
            raise
        parts = [p for p in rel.strip().replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts or rel.strip().startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel.strip()):
            raise  # absolute or '..': never trusted
        top = os.path.join(os.path.realpath(root), parts[0])
        if not os.path.islink(top):
            raise
        if len(parts) == 1:
            return os.path.realpath(top)  # a linked file (an archive, an image)
        try:
            return resolve_ref(top, "/".join(parts[1:]))  # inside the link's target, whatever it is
        except ImageError as inner:
            raise ImageError("path_escape", f"image path {rel!r} leaves its top-level link {parts[0]!r} "
                                            f"({inner.detail})") from None


class ImageLocator:
    """Maps a record's relative image path to an image reference, looking in the source root, the image folders and
    the archives named by ``images`` (a path or glob relative to the root; comma-separated for several).

    Lookup order: the exact relative path in the root or an image folder; the exact member in an archive; then the
    member / file with the same name whose path shares the longest suffix with the record's path (archives are often
    packed with a different top folder, e.g. PubMedVision's ``unzip -j`` layout). Raises
    ``ImageError("missing_image")`` when nothing matches and ``ImageError("path_escape")`` for hostile paths."""

    def __init__(self, root: str | os.PathLike, images: str | None):
        self.root = Path(root)
        self.folders: list[Path] = [self.root]
        self.archives: list[str] = []
        for pattern in [p.strip() for p in (images or "").split(",") if p.strip()]:
            for m in self._expand(pattern):
                if is_archive(m):
                    if m not in self.archives:
                        self.archives.append(m)
                elif os.path.isdir(m) and Path(m) not in self.folders:
                    self.folders.append(Path(m))
        self._by_name: dict[str, list[tuple[str, str]]] | None = None

    def _expand(self, pattern: str) -> list[str]:
        full = pattern if os.path.isabs(pattern) else str(self.root / pattern)
        found = sorted(glob.glob(full, recursive=True))
        out: list[str] = []
        for m in found:
            # Split parts ("images.tar.gz.aa") stand for their whole ("images.tar.gz").
            whole = re.sub(r"\.[A-Za-z0-9_-]{1,8}$", "", m)
            if not is_archive(m) and is_archive(whole) and not os.path.exists(whole):
                m = whole
            if m not in out:
                out.append(m)
        if not found and is_archive(full) and split_parts(full):
            out.append(full)
        return out

    def _name_index(self) -> dict[str, list[tuple[str, str]]]:
        """basename -> [(container, member-or-relpath)], built once over archives and image folders."""
        if self._by_name is None:
            idx: dict[str, list[tuple[str, str]]] = {}
            for arc in self._usable_archives():
                for m in get_archive(arc).members():
                    idx.setdefault(m.rsplit("/", 1)[-1], []).append((arc, m))
            for folder in self.folders[1:]:
                for dirpath, _, files in os.walk(folder):
                    for fn in files:
                        rel = os.path.relpath(os.path.join(dirpath, fn), folder).replace(os.sep, "/")
                        idx.setdefault(fn, []).append((str(folder), rel))
            self._by_name = idx
        return self._by_name

    def locate(self, rel: str, absolute_ok: bool = False) -> str:
        if not isinstance(rel, str) or not rel.strip():
            raise ImageError("missing_image", f"empty image path {rel!r}")
        rel = rel.strip()
        if absolute_ok and (rel.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", rel)):
            rel = rel.lstrip("/")  # a path from the authors' machine: look it up by name, never open it as is
            rel = re.sub(r"^[A-Za-z]:[\\/]", "", rel)
            if ".." in rel.replace("\\", "/").split("/"):
                raise ImageError("path_escape", f"image path {rel!r} contains '..'")
            return self._by_suffix(normalize_member(rel))
        for folder in self.folders:
            # the source folder's own top-level symlinks are trusted; an image folder's are not (raises path_escape)
            path = resolve_in_source(folder, rel) if folder == self.root else resolve_ref(folder, rel)
            if os.path.isfile(path):
                return path
        member = normalize_member(rel)
        for arc in self._usable_archives():
            if member in get_archive(arc).index():
                return make_ref(arc, member)
        return self._by_suffix(member)

    def _usable_archives(self) -> list[str]:
        """The archives that can be indexed; a damaged one is reported once and skipped, so it never hides the
        images of the others (each record whose image it held is then a ``missing_image`` drop)."""
        if not hasattr(self, "_usable"):
            self._usable, self.damaged = [], {}
            for arc in self.archives:
                try:
                    get_archive(arc).index()
                    self._usable.append(arc)
                except ImageError as e:
                    self.damaged[arc] = e.detail
                    log.warning("image archive %s cannot be read, skipped: %s", arc, e.detail)
        return self._usable

    def _by_suffix(self, member: str) -> str:
        cands = self._name_index().get(member.rsplit("/", 1)[-1], [])
        if not cands:
            damaged = f"; damaged archives skipped: {sorted(self.damaged)}" if getattr(self, "damaged", None) else ""
            raise ImageError("missing_image", f"{member} not found under {self.root} (images={self.archives or ''})"
                                              f"{damaged}")
        parts = member.split("/")

        def shared(c: tuple[str, str]) -> int:
            cp = c[1].split("/")
            n = 0
            while n < min(len(cp), len(parts)) and cp[-1 - n] == parts[-1 - n]:
                n += 1
            return n

        best = max(shared(c) for c in cands)
        top = [c for c in cands if shared(c) == best]
        if len(top) > 1:
            raise ImageError("missing_image", f"{member} is ambiguous: {[c[1] for c in top[:3]]}")
        container, name = top[0]
        return make_ref(container, name) if is_archive(container) else resolve_ref(container, name)


# ----------------------------------------------------------------------------------------- text and turns


def role_of(raw: Any) -> str:
    role = ROLE_MAP.get(str(raw).strip().lower()) if raw is not None else None
    if role is None:
        raise RecordError("malformed_record", f"unknown role {raw!r}")
    return role


def split_placeholders(text: str, pattern: str | re.Pattern = "<image>") -> list[dict[str, Any]]:
    """Text with placeholders -> parts: an image part per placeholder, the text around it (newlines that only
    separated a placeholder from the text are dropped)."""
    rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
    parts: list[dict[str, Any]] = []
    pos = 0
    for m in rx.finditer(text):
        chunk = text[pos:m.start()].strip("\n")
        if chunk.strip():
            parts.append(text_part(chunk.strip()))
        parts.append(image_part())
        pos = m.end()
    tail = text[pos:].strip("\n")
    if tail.strip():
        parts.append(text_part(tail.strip()))
    return parts


def conversations_to_turns(conv: Any, role_key: str = "from", text_key: str = "value") -> list[tuple[str, str]]:
    """``[{"from": "human", "value": ...}, ...]`` (or ``role``/``content``) -> [(role, text)]."""
    if isinstance(conv, str):
        try:
            conv = json.loads(conv)
        except json.JSONDecodeError:
            raise RecordError("malformed_record", "conversations is a string that is not JSON") from None
    if not isinstance(conv, (list, tuple)) or not conv:
        raise RecordError("malformed_record", f"conversations must be a non-empty list, got {type(conv).__name__}")
    turns = []
    for t in conv:
        if not isinstance(t, dict):
            raise RecordError("malformed_record", f"turn is {type(t).__name__}, not an object")
        r = t.get(role_key, t.get("role", t.get("from")))
        v = t.get(text_key, t.get("content", t.get("value")))
        if isinstance(v, list):  # already content parts (OpenAI style): keep text parts
            v = "".join(p.get("text", "") for p in v if isinstance(p, dict))
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise RecordError("malformed_record", f"turn text is {type(v).__name__}")
        turns.append((role_of(r), v))
    return turns


def llava_messages(turns: list[tuple[str, str]], images: list[str], placeholder: str = "<image>",
                   prepend_missing: bool = True) -> list[dict[str, Any]]:
    """LLaVA-style turns -> messages: each ``<image>`` becomes an image part at its position. When the text has no
    placeholder at all and ``prepend_missing``, all images go at the start of the first user turn (in list order).
    Raises ``RecordError("placeholder_mismatch")`` when the counts differ otherwise."""
    n_ph = sum(t.count(placeholder) for _, t in turns)
    if n_ph == 0 and images and prepend_missing:
        first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first_user is None:
            raise RecordError("no_assistant_turn" if not turns else "non_alternating_turns", "no user turn")
        turns = list(turns)
        r, t = turns[first_user]
        turns[first_user] = (r, placeholder * len(images) + "\n" + t)
    elif n_ph != len(images):
        raise RecordError("placeholder_mismatch", f"{n_ph} {placeholder} placeholders, {len(images)} images")
    return [{"role": r, "content": split_placeholders(t, placeholder)} for r, t in turns]


def as_list(value: Any) -> list[Any]:
    if missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if not missing(v)]
    return [value]


def where(label: Any, i: int) -> str:
    """``<file name> row <i>``: where a record came from, for drop details."""
    return f"{getattr(label, 'file', label)} row {i}"


def failure(e: BaseException) -> tuple[str, str]:
    """(reason, detail) for any exception converting one record: the record is dropped, the source goes on."""
    if isinstance(e, (RecordError, ImageError)):
        return e.reason, e.detail
    if isinstance(e, RecursionError):
        return "malformed_record", "nested too deeply"
    if isinstance(e, UnicodeError):
        return "bad_encoding", f"{type(e).__name__}: {e}"
    if isinstance(e, MemoryError):
        return "record_too_large", "out of memory converting it"
    return "convert_error", f"{type(e).__name__}: {str(e)[:300]}"


def run_adapter(ctx: SourceContext, records: Iterable[tuple[str, int, Any]], convert) -> Iterator[Sample | Drop]:
    """Call ``convert(ctx, label, index, record)`` per record. Per-record isolation: ANY exception while
    converting one record (a bad value, an unreadable image, recursion, encoding...) becomes that record's Drop,
    whose detail starts with the file and row; the other records go on. Under a :class:`RowScope` only the wanted
    rows are converted (the others yield nothing)."""
    scope = ROW_SCOPE.get()
    want = scope.want if scope is not None else None
    for ordinal, (label, i, rec) in enumerate(records):
        if rec is SKIPPED or (want is not None and not want(ordinal)):
            continue
        if scope is not None:
            scope.ordinal = ordinal
        fallback = f"{label}:{i}"
        if isinstance(rec, Malformed):
            yield ctx.drop(fallback, "malformed_record", rec.detail)
            continue
        if not isinstance(rec, dict):
            yield ctx.drop(fallback, "malformed_record", f"{where(label, i)}: row is {type(rec).__name__}, "
                                                         "not an object")
            continue
        try:
            out = convert(ctx, label, i, rec)
        except Exception as e:  # noqa: BLE001  isolation: one record never stops the source
            reason, detail = failure(e)
            try:
                native = native_id(rec, fallback)
            except Exception:  # noqa: BLE001
                native = fallback
            yield ctx.drop(native, reason, f"{where(label, i)}: {detail}")
            continue
        if isinstance(out, Drop) and not out.detail.startswith(where(label, i)):
            out.detail = _utf8(f"{where(label, i)}: {out.detail}")
        yield out


ID_COLUMNS = ("id", "uid", "question_id", "image_id")  # where native_id looks: part of every adapter's columns


def native_id(rec: dict, fallback: str) -> str:
    for key in ID_COLUMNS:
        v = rec.get(key)
        if isinstance(v, bool) or not isinstance(v, (str, int)) or missing(v):
            continue
        v = str(v)
        if "\x00" in v or "\n" in v or len(v) > 512:  # an id must fit on one line of an index, as itself
            continue
        return v
    return fallback
