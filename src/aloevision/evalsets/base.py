"""What every evaluation-set loader shares: the item, the skip counter, config access and record readers.

Record readers accept a local file (.json list / dict, .jsonl, .parquet, .csv, .tsv), a folder (the split's files
are found by the usual Hugging Face layouts), or - when the path does not exist locally and looks like `owner/name` -
a Hugging Face dataset id read with `datasets.load_dataset` (clusters; never in tests or the demo).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger("aloevision.evalsets")


@dataclass
class EvalItem:
    id: str
    benchmark: str
    kind: str  # mcq | yesno | open | text_mcq | probmed
    question: str
    answer: str  # MCQ: the option letter; yes/no: "yes"/"no"; open: the reference answer
    options: dict[str, str] = field(default_factory=dict)  # letter -> option text (MCQ)
    # image references (str: a path or `<archive>::<member>`, see aloevision.images) or raw bytes (base64 TSVs, parquet)
    images: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. ProbMed pair id, CareQA-V field / type


class SkipRow(Exception):
    """Raised inside a loader for one malformed row: counted under `reason`, the row is skipped."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class LoadStats:
    """Rows read, items yielded and rows skipped per reason (with a few examples) for one benchmark load."""

    benchmark: str
    rows: int = 0
    items: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, row: object, detail: str = "") -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(f"{row}: {detail}" if detail else str(row))

    def as_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "rows": self.rows, "items": self.items,
                "skipped": dict(self.skipped), "examples": self.examples}

    def log(self) -> None:
        if self.skipped:
            log.warning("%s: %d rows -> %d items; skipped %s (examples: %s)", self.benchmark, self.rows, self.items,
                        dict(self.skipped), self.examples)
        else:
            log.info("%s: %d rows -> %d items", self.benchmark, self.rows, self.items)


@dataclass
class Bench:
    """The fields of a BenchmarkConfig a loader reads, from a dataclass, a DictConfig or a plain dict."""

    name: str
    kind: str
    path: str
    split: str
    options: dict[str, Any]

    @classmethod
    def of(cls, cfg: Any) -> "Bench":
        if isinstance(cfg, Bench):
            return cfg
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
        path = get("path")
        if not path:
            raise ValueError(f"benchmark {get('name')!r}: `path` is required")
        return cls(
            name=str(get("name") or Path(str(path)).stem),
            kind=str(get("kind") or ""),
            path=str(path),
            split=str(get("split") or "test"),
            options=dict(get("options") or {}),
        )


# ------------------------------------------------------------------------------------------------------ readers
def _iter_json(path: Path) -> Iterator[Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        yield from data
    elif isinstance(data, dict):
        # {"data": [...]} or {id: record}
        if isinstance(data.get("data"), list):
            yield from data["data"]
        else:
            for k, v in data.items():
                yield {"_key": k, **v} if isinstance(v, dict) else v
    else:
        raise SkipRow("bad_file", f"{path}: top level is {type(data).__name__}")


def _iter_jsonl(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield SkipRow("bad_json", f"{path.name}:{n + 1}: {e.msg}")


def _iter_parquet(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=256):
        yield from batch.to_pylist()


def _iter_delimited(path: Path, delimiter: str) -> Iterator[Any]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            if None in row:  # more fields than the header: a broken row
                yield SkipRow("bad_row", f"{path.name}: {len(row[None])} extra fields")
            else:
                yield row


def iter_file(path: Path) -> Iterator[Any]:
    """Rows of one file; a malformed line comes back as a SkipRow instance (the caller counts it)."""
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return _iter_jsonl(path)
    if name.endswith(".json"):
        return _iter_json(path)
    if name.endswith(".parquet"):
        return _iter_parquet(path)
    if name.endswith(".tsv"):
        return _iter_delimited(path, "\t")
    if name.endswith(".csv"):
        return _iter_delimited(path, ",")
    raise ValueError(f"{path}: unsupported file type (use .json, .jsonl, .parquet, .csv or .tsv)")


_SPLIT_PATTERNS = (
    "{split}.jsonl", "{split}.json", "{split}.parquet", "{split}.tsv", "{split}.csv",
    "{split}-*.parquet", "data/{split}-*.parquet", "{split}/*.parquet", "*{split}*.parquet", "*{split}*.json*",
)


def split_files(folder: Path, split: str) -> list[Path]:
    for pat in _SPLIT_PATTERNS:
        hits = sorted(glob.glob(str(folder / pat.format(split=split))))
        if hits:
            return [Path(h) for h in hits]
    return []


def looks_like_hub_id(path: str) -> bool:
    return not os.path.exists(path) and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def iter_records(path: str, split: str, hf_config: str | None = None) -> Iterator[Any]:
    """Rows of a benchmark split: a file, a folder (split files found by name) or a Hugging Face id."""
    p = Path(path).expanduser()
    if p.is_file():
        yield from iter_file(p)
        return
    if p.is_dir():
        files = split_files(p / hf_config if hf_config and (p / hf_config).is_dir() else p, split)
        if not files:
            raise FileNotFoundError(f"{p}: no files for split {split!r} (looked for {', '.join(_SPLIT_PATTERNS)})")
        for f in files:
            yield from iter_file(f)
        return
    if looks_like_hub_id(path):
        import datasets

        yield from datasets.load_dataset(path, hf_config, split=split)
        return
    raise FileNotFoundError(f"benchmark path {path!r} does not exist")


def first(row: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The first present, non-empty value among `keys` (native schemas name the same field differently)."""
    for k in keys:
        v = row.get(k)
        if v is not None and not (isinstance(v, float) and v != v) and v != "":
            return v
    return default


def is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and v.strip() in ("", "nan", "None"))
