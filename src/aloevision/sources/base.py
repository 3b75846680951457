"""What every adapter shares: reading native record files, finding images in folders or archives, turning
text with placeholders into message parts, and the structural checks that decide Sample vs Drop."""

from __future__ import annotations

import csv
import glob
import json
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
    make_ref,
    normalize_member,
    resolve_ref,
    split_parts,
)
from aloevision.schema import Drop, Sample, image_part, text_part

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
    """The local data files: ``path`` itself if it is a file, else each ``files`` glob under it (sorted)."""
    p = Path(ctx.path)
    if p.is_file():
        return [p]
    out: list[Path] = []
    for pattern in ctx.files:
        matches = sorted(Path(m) for m in glob.glob(str(p / pattern), recursive=True) if os.path.isfile(m))
        out.extend(m for m in matches if m not in out)
    if not out:
        raise FileNotFoundError(
            f"source {ctx.name}: no data files match {ctx.files} under {p} (set source.files to the native files)"
        )
    return out


class Skipped:
    """Placeholder for a row of another shard: counted (ordinals stay global) but never parsed or converted."""

    __slots__ = ()


SKIPPED = Skipped()
JSON_CHUNK = 1 << 20  # characters read per refill of the streaming JSON reader
MAX_JSON_RECORD = 1 << 28  # one record larger than this (256 Mi characters) is treated as malformed JSON
WRAPPER_KEYS = ("data", "rows", "annotations", "train")


class JsonStream:
    """Incremental JSON reader over a text file: the top-level array (or the array under a wrapper key of a
    top-level object) is decoded one element at a time with ``json.JSONDecoder.raw_decode`` (the stdlib's C
    scanner, so values are exactly what ``json.load`` gives: floats, not Decimals). Memory: one refill chunk plus
    the element being decoded, whatever the file size."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self, at_least: int = JSON_CHUNK) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(max(JSON_CHUNK, at_least))
        self.buf = self.buf[self.pos:] + chunk  # drop what was consumed; offsets restart at 0
        self.pos = 0
        if not chunk:
            self.eof = True
        return bool(chunk)

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise ValueError(f"{self.path}: not valid JSON: expected one of {chars!r} near character "
                             f"{self.f.tell() - len(self.buf) + self.pos}, got {c!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        """Decode the next complete value, reading more while it is cut off by the end of the buffer."""
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number ending the buffer may continue in the next chunk
                    self.pos = end
                    return obj
            except json.JSONDecodeError as e:
                if self.eof:
                    raise ValueError(f"{self.path}: not valid JSON ({e})") from None
                if len(self.buf) - self.pos > MAX_JSON_RECORD:
                    raise ValueError(f"{self.path}: not valid JSON, or one record is over {MAX_JSON_RECORD} "
                                     f"characters ({e})") from None
            self._fill(len(self.buf) - self.pos)  # grow geometrically: a long record is re-scanned O(log) times

    def array(self) -> Iterator[Any]:
        """Elements of the array that starts here."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self.expect(",]") == "]":
                return


def _iter_json(path: Path) -> Iterator[Any]:
    """A .json file: a top-level array (streamed), an object wrapping the rows under ``data`` / ``rows`` /
    ``annotations`` / ``train`` (the first such array in the file is streamed), a single object (one row), or JSON
    lines saved as .json."""
    with open(path, encoding="utf-8") as f:
        js = JsonStream(f, path)
        first = js.peek()
        if first == "[":
            yield from js.array()
            if js.peek():
                raise ValueError(f"{path}: not valid JSON (content after the top-level array)")
            return
        if first != "{":
            yield from _iter_jsonl(path)
            return
        js.expect("{")
        obj: dict[str, Any] = {}
        if js.peek() != "}":
            while True:
                key = js.value()
                if not isinstance(key, str):
                    raise ValueError(f"{path}: not valid JSON (object key {key!r})")
                js.expect(":")
                if key in WRAPPER_KEYS and js.peek() == "[":
                    yield from js.array()  # the rows: the other members are metadata
                    return
                obj[key] = js.value()
                if js.expect(",}") == "}":
                    break
        else:
            js.pos += 1
        if js.peek():  # a second object follows: JSON lines saved as .json
            del obj
            yield from _iter_jsonl(path)
            return
        yield obj


def _iter_jsonl(path: Path, want: Callable[[int], bool] | None = None) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if want is not None and not want(n):
                yield SKIPPED
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield Malformed(f"{path.name}:{n}: {e}")


def read_file(path: Path, want: Callable[[int], bool] | None = None) -> Iterator[Any]:
    """Rows of a JSON array / JSON lines / parquet / CSV file, streamed (never the whole file in memory); an
    unparsable line yields :class:`Malformed`. ``want(i)`` (row index within the file) lets a shard skip the rows
    of other shards cheaply: such rows yield :data:`SKIPPED` (JSON lines are not parsed, parquet batches without a
    wanted row are not converted to Python)."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix in (".gz",) else path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        i = 0
        for batch in pf.iter_batches(batch_size=1024):
            n = batch.num_rows
            if want is not None and not any(want(j) for j in range(i, i + n)):
                yield from (SKIPPED for _ in range(n))
            else:
                for j, row in enumerate(batch.to_pylist(), i):
                    yield row if want is None or want(j) else SKIPPED
            i += n
        return
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
        return
    if suffix == ".json":
        yield from _iter_json(path)
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


def iter_records(ctx: SourceContext) -> Iterator[tuple[str, int, Any]]:
    """(file label, row index within that file, record) over all data files, or over the HF dataset. Under a
    :class:`RowScope` rows of other shards come as :data:`SKIPPED` (one item per row either way)."""
    scope = ROW_SCOPE.get()
    want = scope.want if scope is not None else None
    if not ctx.is_local:
        import datasets  # the Hub is only reachable on clusters; tests and the demo use local files

        ds = datasets.load_dataset(ctx.path, ctx.hf_config, split=ctx.split, streaming=True)
        for i, row in enumerate(ds):
            yield ctx.hf_config or "hf", i, (row if want is None or want(i) else SKIPPED)
        return
    offset = 0
    for path in data_files(ctx):
        n = 0
        local = None if want is None else (lambda j, o=offset: want(o + j))
        for n, row in enumerate(read_file(path, local), 1):
            yield path.stem, n - 1, row
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
            for arc in self.archives:
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
            path = resolve_ref(folder, rel)  # raises path_escape
            if os.path.isfile(path):
                return path
        member = normalize_member(rel)
        for arc in self.archives:
            if member in get_archive(arc).index():
                return make_ref(arc, member)
        return self._by_suffix(member)

    def _by_suffix(self, member: str) -> str:
        cands = self._name_index().get(member.rsplit("/", 1)[-1], [])
        if not cands:
            raise ImageError("missing_image", f"{member} not found under {self.root} (images={self.archives or ''})")
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


def run_adapter(ctx: SourceContext, records: Iterable[tuple[str, int, Any]], convert) -> Iterator[Sample | Drop]:
    """Call ``convert(ctx, label, index, record)`` per record, turning every expected failure into a Drop. Under a
    :class:`RowScope` only the wanted rows are converted (the others yield nothing)."""
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
            yield ctx.drop(fallback, "malformed_record", f"row is {type(rec).__name__}, not an object")
            continue
        try:
            yield convert(ctx, label, i, rec)
        except RecordError as e:
            yield ctx.drop(native_id(rec, fallback), e.reason, e.detail)
        except ImageError as e:
            yield ctx.drop(native_id(rec, fallback), e.reason, e.detail)


def native_id(rec: dict, fallback: str) -> str:
    for key in ("id", "uid", "question_id", "image_id"):
        v = rec.get(key)
        if not missing(v) and isinstance(v, (str, int)):
            return str(v)
    return fallback
