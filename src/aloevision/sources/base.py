"""What every adapter shares: reading native record files, finding images in folders or archives, turning
text with placeholders into message parts, and the structural checks that decide Sample vs Drop."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

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


def read_file(path: Path) -> Iterator[Any]:
    """Rows of a JSON array / JSON lines / parquet / CSV file; an unparsable line yields :class:`Malformed`."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix in (".gz",) else path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
        return
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 16).lstrip()
        if head.startswith("["):
            with open(path, encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not valid JSON ({e})") from None
            yield from data
            return
        if head.startswith("{"):
            try:  # a single object wrapping the rows ({"data": [...]}) or JSON lines saved as .json
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                for key in ("data", "rows", "annotations", "train"):
                    if isinstance(data.get(key), list):
                        yield from data[key]
                        return
                yield data
                return
            except json.JSONDecodeError:
                pass  # JSON lines
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield Malformed(f"{path.name}:{n}: {e}")


def iter_records(ctx: SourceContext) -> Iterator[tuple[str, int, Any]]:
    """(file label, row index within that file, record) over all data files, or over the HF dataset."""
    if not ctx.is_local:
        import datasets  # the Hub is only reachable on clusters; tests and the demo use local files

        ds = datasets.load_dataset(ctx.path, ctx.hf_config, split=ctx.split, streaming=True)
        for i, row in enumerate(ds):
            yield ctx.hf_config or "hf", i, row
        return
    for path in data_files(ctx):
        for i, row in enumerate(read_file(path)):
            yield path.stem, i, row


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
    """Call ``convert(ctx, label, index, record)`` per record, turning every expected failure into a Drop."""
    for label, i, rec in records:
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
