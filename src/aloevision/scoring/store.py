"""Score records and their cache: one append-only JSONL file per shard under a folder named by the scorer's
fingerprint, flushed and fsynced after every batch, so a killed job loses at most the batch in flight and a rerun
skips every sample already written. Changing the scorer (models, prompt, mask, lengths) changes the fingerprint and
therefore the folder; changing thresholds does not, so the filtering ablation reuses every score.

Reading never keeps the records themselves (~1 KB of Python objects each, GBs at the paper's millions of samples):
one streaming pass over the part files builds a `ScoreIndex`, numpy columns of what thresholds, review and coverage
read of every record (id hash, score, perplexity, source and failure codes, the first tag of each taxonomy field,
where the line is), ~60 bytes a record. A full `ScoreRecord` is re-read from its line when asked for (`get`, the
examples a review shows, the detail of a parse-failure drop)."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import numpy as np

from aloevision.scoring.taxonomy import TAG_FIELDS
from aloevision.utils.locks import file_lock

log = logging.getLogger(__name__)


@dataclass
class ScoreRecord:
    """Everything the score stage learned about one sample."""

    id: str
    source: str
    score: float | None = None  # LVLM sample quality 1-5; None when the output could not be parsed
    tags: dict[str, list[str]] = field(default_factory=dict)  # MOD/MED/ST/SBP/GBP -> tags in priority order
    parse_failure: str | None = None  # empty_output | missing_sq | malformed_sq | sq_out_of_range | image_error | ...
    parse_detail: str = ""
    oov: dict[str, list[str]] = field(default_factory=dict)  # out-of-vocabulary tags dropped, per field
    missing_fields: list[str] = field(default_factory=list)
    raw_output: str = ""  # the scorer's text (truncated), for the review gallery
    ppl: float | None = None  # exp(mean NLL over the SFT-trained tokens)
    nll_mean: float | None = None
    n_loss_tokens: int = 0
    ppl_failure: str | None = None  # no_loss_tokens | image_error | ...
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreRecord":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def shard_of(sample_id: str, n_shards: int) -> int:
    """Stable shard of a sample (same on every machine and Python run, unlike hash()): for SLURM job arrays."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


# ---- ids as digests ------------------------------------------------------------------------------------------------
DIGEST = np.dtype([("key", "<u8"), ("check", "<u4")])


def id_digest(sample_id: str) -> bytes:
    """12 bytes of blake2b: a 64-bit lookup key and a 32-bit check. Present ids whose keys collide are told apart
    exactly (their lines are read); an absent id passes for a present one only if both match (chance 2**-96 each)."""
    return hashlib.blake2b(sample_id.encode("utf-8"), digest_size=12).digest()


def _digests(ids: Iterable[str]) -> np.ndarray:
    return _digest_array(id_digest(i) for i in ids)


def _digest_array(digests: Iterable[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(digests), dtype=DIGEST)


class IdSet:
    """A set of ids kept as digests (12 bytes each, no strings): duplicate checks over millions of ids. Two ids are
    confused only if all 96 bits of their digests match (chance ~ n**2 / 2**97: 1e-16 at 4M ids)."""

    def __init__(self, buffer: int = 1 << 16):
        self._keys = np.empty(0, np.uint64)  # sorted
        self._checks = np.empty(0, np.uint32)
        self._recent: set[bytes] = set()  # not merged yet
        self._buffer = buffer

    def add(self, sample_id: str) -> bool:
        """Add an id; False if it was there already."""
        d = id_digest(sample_id)
        if d in self._recent:
            return False
        digest = np.frombuffer(d, dtype=DIGEST)[0]
        lo, hi = np.searchsorted(self._keys, digest["key"], "left"), np.searchsorted(self._keys, digest["key"], "right")
        if lo < hi and (self._checks[lo:hi] == digest["check"]).any():
            return False
        self._recent.add(d)
        if len(self._recent) >= self._buffer:  # into the sorted arrays: 12 bytes an id instead of ~100
            new = np.sort(_digest_array(self._recent), order="key")
            at = np.searchsorted(self._keys, new["key"])
            self._keys, self._checks = np.insert(self._keys, at, new["key"]), np.insert(self._checks, at, new["check"])
            self._recent = set()
        return True

    def __len__(self) -> int:
        return len(self._keys) + len(self._recent)


# ---- columns ---------------------------------------------------------------------------------------------------------
_NO_TAG = object()  # code 0 of a tag column: the field is missing or empty (a JSON value can never be this)


class _Codes:
    """Small-int codes of one categorical field: names[code] is the value, code 0 is `empty`."""

    def __init__(self, empty: Any = None):
        self.names: list[Any] = [empty]
        self._code: dict[Any, int] = {empty: 0}

    def __call__(self, value: Any) -> int:
        code = self._code.get(value)
        if code is None:
            code = len(self.names)
            if code > 0xFFFF:
                raise ValueError("more than 65535 distinct values in one field")
            self._code[value] = code
            self.names.append(value)
        return code


class Codes:
    """The code tables of a table's categorical columns (shared by an index and the rows added to it later)."""

    def __init__(self):
        self.source = _Codes()
        self.parse_failure = _Codes()
        self.ppl_failure = _Codes()
        self.tags = {f: _Codes(_NO_TAG) for f in TAG_FIELDS}


def tag_column(field_name: str) -> str:
    return f"tag:{field_name}"


# Per record: score/ppl as float64 (a None is flagged, so a NaN stays a value), codes, the line's place.
_TYPECODES = {"score": "d", "ppl": "d", "no_score": "B", "no_ppl": "B", "source": "H", "parse_failure": "H",
              "ppl_failure": "H", **{tag_column(f): "H" for f in TAG_FIELDS}, "part": "H", "offset": "q"}
_BOOL_COLUMNS = ("no_score", "no_ppl")


class _Rows:
    """Columns being appended to (the streaming pass, or this process's writes), as compact arrays."""

    def __init__(self, codes: Codes):
        self.codes = codes
        self.digests = bytearray()
        self.cols = {name: array(tc) for name, tc in _TYPECODES.items()}

    def __len__(self) -> int:
        return len(self.cols["score"])

    def add(self, sample_id: Any, source: Any, score: Any, ppl: Any, parse_failure: Any, ppl_failure: Any,
            tags: Any, part: int, offset: int) -> int:
        """Append one record's row (its number); raises TypeError/ValueError/AttributeError for a value that
        cannot be indexed, before anything is appended."""
        if not isinstance(sample_id, str):
            raise TypeError(f"id is not a string: {sample_id!r}")
        c = self.codes
        firsts = []
        for f in TAG_FIELDS:
            field_tags = tags.get(f) or []
            firsts.append(c.tags[f](field_tags[0] if field_tags else _NO_TAG))  # coverage counts the primary tag
        values = {"score": 0.0 if score is None else float(score), "ppl": 0.0 if ppl is None else float(ppl),
                  "no_score": score is None, "no_ppl": ppl is None, "source": c.source(source),
                  "parse_failure": c.parse_failure(parse_failure), "ppl_failure": c.ppl_failure(ppl_failure),
                  **{tag_column(f): code for f, code in zip(TAG_FIELDS, firsts)}, "part": part, "offset": offset}
        digest = id_digest(sample_id)
        for name, v in values.items():
            self.cols[name].append(v)
        self.digests += digest
        return len(self) - 1

    def add_dict(self, d: Mapping[str, Any], part: int, offset: int) -> int:
        return self.add(d["id"], d["source"], d.get("score"), d.get("ppl"), d.get("parse_failure"),
                        d.get("ppl_failure"), d.get("tags") or {}, part, offset)

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(digests, columns) as numpy arrays; the compact arrays are released column by column."""
        digests = np.frombuffer(self.digests, dtype=DIGEST)  # no copy: these rows take no more appends
        self.digests = bytearray()
        cols = {}
        for name in list(self.cols):
            a = self.cols.pop(name)
            cols[name] = np.frombuffer(a, dtype=np.bool_ if name in _BOOL_COLUMNS else a.typecode)
        return digests, cols


class ScoreTable:
    """Score records as columns, one row each: what thresholds, review and coverage read of every record.
    `cols`: score, ppl (float64), no_score, no_ppl (bool: the field is None), source, parse_failure, ppl_failure
    and `tag:<field>` (the first tag of each taxonomy field) as codes into `codes`; `record(row)` is the full record."""

    def __init__(self, cols: dict[str, np.ndarray], codes: Codes):
        self.cols = cols
        self.codes = codes

    def __len__(self) -> int:
        return len(self.cols["score"])

    def record(self, row: int) -> ScoreRecord:
        raise NotImplementedError

    def records(self, rows: Iterable[int]) -> list[ScoreRecord]:
        return [self.record(int(r)) for r in rows]

    def ids(self, rows: np.ndarray) -> Iterator[tuple[str, int]]:
        """(id, row) of each row, in any order."""
        for r in rows.tolist():
            yield self.record(r).id, r

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """The row of each id, -1 where absent."""
        raise NotImplementedError

    def rows_for(self, ids: Sequence[str]) -> list[ScoreRow | None]:
        """The indexed fields of each id's record (None where absent), read in one vectorised lookup."""
        rows = self.rows_of(ids)
        hit = np.flatnonzero(rows >= 0)
        r = rows[hit]
        c, names = self.cols, self.codes
        out: list[ScoreRow | None] = [None] * len(ids)
        for i, row, score, no_score, ppl, no_ppl, src, pf, ppf in zip(
                hit.tolist(), r.tolist(), c["score"][r].tolist(), c["no_score"][r].tolist(), c["ppl"][r].tolist(),
                c["no_ppl"][r].tolist(), c["source"][r].tolist(), c["parse_failure"][r].tolist(),
                c["ppl_failure"][r].tolist()):
            out[i] = ScoreRow(self, row, ids[i], names.source.names[src], None if no_score else score,
                              None if no_ppl else ppl, names.parse_failure.names[pf], names.ppl_failure.names[ppf])
        return out


class ScoreRow:
    """One record as a table indexes it: what thresholds read; the rest (`parse_detail`, `record()`) from disk."""

    __slots__ = ("id", "parse_failure", "ppl", "ppl_failure", "row", "score", "source", "table")

    def __init__(self, table: ScoreTable, row: int, sample_id: str, source: str, score: float | None,
                 ppl: float | None, parse_failure: str | None, ppl_failure: str | None):
        self.table, self.row, self.id, self.source = table, row, sample_id, source
        self.score, self.ppl, self.parse_failure, self.ppl_failure = score, ppl, parse_failure, ppl_failure

    @property
    def parse_detail(self) -> str:
        return self.record().parse_detail

    def record(self) -> ScoreRecord:
        return self.table.record(self.row)


class RecordTable(ScoreTable):
    """A table over records held in memory (tests, small mappings): row i is records[i], duplicates kept."""

    def __init__(self, records: Iterable[ScoreRecord]):
        self.items = list(records)
        rows = _Rows(Codes())
        for i, r in enumerate(self.items):
            rows.add(r.id, r.source, r.score, r.ppl, r.parse_failure, r.ppl_failure, r.tags, 0, i)
        super().__init__(rows.arrays()[1], rows.codes)
        self._row_of: dict[str, int] | None = None

    def record(self, row: int) -> ScoreRecord:
        return self.items[row]

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        if self._row_of is None:
            self._row_of = {r.id: i for i, r in enumerate(self.items)}  # a repeated id: the last one, as a dict
        return np.array([self._row_of.get(i, -1) for i in ids], dtype=np.int64)


@dataclass(frozen=True)
class ScoreRows:
    """Some rows of a table in a given order (e.g. the records of one run's samples, in sample order): what review
    and coverage read."""

    table: ScoreTable
    rows: np.ndarray

    @classmethod
    def of(cls, records: Iterable[ScoreRecord]) -> ScoreRows:
        table = RecordTable(records)
        return cls(table, np.arange(len(table)))

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        return self.table.cols[name][self.rows]

    def subset(self, mask: np.ndarray) -> ScoreRows:
        return ScoreRows(self.table, self.rows[mask])

    def records(self) -> list[ScoreRecord]:
        return self.table.records(self.rows)


# ---- the on-disk index -------------------------------------------------------------------------------------------
class _Lines:
    """Single lines of the part files by (part, offset), with a few files kept open."""

    MAX_OPEN = 32

    def __init__(self, parts: list[Path]):
        self.parts = parts
        self._open: dict[int, BinaryIO] = {}

    def part_number(self, path: Path) -> int:
        if path not in self.parts:
            if len(self.parts) > 0xFFFF:
                raise ValueError("more than 65535 part files")
            self.parts.append(path)
        return self.parts.index(path)

    def read(self, part: int, offset: int) -> bytes:
        fh = self._open.get(part)
        if fh is None:
            if len(self._open) >= self.MAX_OPEN:
                self.close()
            fh = self._open[part] = open(self.parts[part], "rb")  # noqa: SIM115 (kept open for the next reads)
        fh.seek(offset)
        return fh.readline()

    def read_id(self, part: int, offset: int) -> str:
        line = self.read(part, offset).decode("utf-8")
        if line.startswith('{"id":"'):  # how write() starts every line: no need to parse the rest
            return json.decoder.scanstring(line, 7)[0]
        return json.loads(line)["id"]

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open = {}


class ScoreIndex(ScoreTable):
    """The store's records as columns sorted by id key (latest line per id), located by (part, offset)."""

    def __init__(self, digests: np.ndarray, cols: dict[str, np.ndarray], codes: Codes, lines: _Lines):
        """`digests` and `cols` sorted by key, oldest line first among equal keys (older rows are dropped here)."""
        keep, collided = _latest_per_id(digests["key"], cols, lines)
        if keep is not None:
            digests = digests[keep]
            for name in list(cols):
                cols[name] = cols[name][keep]
        super().__init__(cols, codes)
        self.keys = np.ascontiguousarray(digests["key"])
        self.checks = np.ascontiguousarray(digests["check"])
        self.collided = collided  # key -> {id: row} for the (rare) keys shared by different ids
        self._collided_keys = np.fromiter(collided, dtype=np.uint64, count=len(collided))
        self.lines = lines

    @classmethod
    def build(cls, rows: _Rows, lines: _Lines) -> ScoreIndex:
        digests, cols = rows.arrays()
        order = np.argsort(digests["key"], kind="stable")  # stable: among equal keys, line order
        digests = digests[order]
        for name in list(cols):
            cols[name] = cols[name][order]
        del order
        return cls(digests, cols, rows.codes, lines)

    def merged(self, rows: _Rows) -> ScoreIndex:
        """This index plus rows written since (they are newer: they win over an equal id here)."""
        new_digests, new_cols = rows.arrays()
        order = np.argsort(new_digests["key"], kind="stable")
        new_digests = new_digests[order]
        at = np.searchsorted(self.keys, new_digests["key"], side="right")
        digests = np.empty(len(self) + len(order), dtype=DIGEST)
        digests["key"] = np.insert(self.keys, at, new_digests["key"])
        digests["check"] = np.insert(self.checks, at, new_digests["check"])
        cols = {name: np.insert(col, at, new_cols[name][order]) for name, col in self.cols.items()}
        return ScoreIndex(digests, cols, self.codes, self.lines)

    def record(self, row: int) -> ScoreRecord:
        line = self.lines.read(int(self.cols["part"][row]), int(self.cols["offset"][row]))
        return ScoreRecord.from_dict(json.loads(line))

    def records_in_file_order(self) -> Iterator[ScoreRecord]:
        for row in self._file_order(np.arange(len(self))).tolist():
            yield self.record(row)

    def ids(self, rows: np.ndarray) -> Iterator[tuple[str, int]]:
        part, offset = self.cols["part"], self.cols["offset"]
        for r in self._file_order(rows).tolist():  # in file order: the reads go forward through each part
            yield self.lines.read_id(int(part[r]), int(offset[r])), r

    def _file_order(self, rows: np.ndarray) -> np.ndarray:
        return rows[np.lexsort((self.cols["offset"][rows], self.cols["part"][rows]))]

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        d = _digests(ids)
        keys = d["key"]
        if not len(self):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self) - 1)
        rows = np.where((self.keys[pos] == keys) & (self.checks[pos] == d["check"]), pos, -1)
        if self.collided:
            for i in np.flatnonzero(np.isin(keys, self._collided_keys)).tolist():
                rows[i] = self.collided[int(keys[i])].get(ids[i], -1)
        return rows

    def row_of(self, sample_id: str) -> int:
        """`rows_of` for one id, without the array set-up (the score stage asks once per sample)."""
        d = np.frombuffer(id_digest(sample_id), dtype=DIGEST)[0]
        key = int(d["key"])
        if key in self.collided:
            return self.collided[key].get(sample_id, -1)
        pos = int(self.keys.searchsorted(d["key"]))
        found = pos < len(self.keys) and self.keys[pos] == d["key"] and self.checks[pos] == d["check"]
        return pos if found else -1


def _latest_per_id(keys: np.ndarray, cols: dict[str, np.ndarray], lines: _Lines
                   ) -> tuple[np.ndarray | None, dict[int, dict[str, int]]]:
    """Rows sorted by key, oldest line first among equal keys: which to keep (None: all) so each id keeps its latest
    line, and the keys shared by different ids with each id's row after compaction. Equal keys are almost always
    a re-scored sample; the lines' ids are read to tell a real collision apart."""
    same = keys[1:] == keys[:-1]
    if not same.any():
        return None, {}
    keep = np.ones(len(keys), dtype=bool)
    keep[:-1] = ~same  # the last line of each run of equal keys
    runs: list[list[int]] = []
    for i in np.flatnonzero(same).tolist():
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    part, offset = cols["part"], cols["offset"]
    collided: dict[int, dict[str, int]] = {}
    for first, last in runs:
        latest: dict[str, int] = {}
        for r in range(first, last + 1):
            latest[lines.read_id(int(part[r]), int(offset[r]))] = r
        if len(latest) > 1:
            keep[first:last + 1] = False
            keep[list(latest.values())] = True
            collided[int(keys[first])] = latest
    if collided:
        new_row = np.cumsum(keep) - 1
        collided = {k: {sid: int(new_row[r]) for sid, r in ids.items()} for k, ids in collided.items()}
        log.info("score index: %d id keys shared by different ids, resolved exactly", len(collided))
    return keep, collided


def _release_freed_memory() -> None:
    """glibc keeps freed temporaries of the build (~20 bytes a record) in its heap: hand them back to the OS."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def scan_parts(folder: Path) -> tuple[ScoreIndex, int]:
    """One streaming pass over every part file (any shard layout): the index and the number of torn/unreadable
    lines skipped (an unterminated line: the write was cut off)."""
    lines = _Lines(sorted(folder.glob("part-*.jsonl")))
    rows = _Rows(Codes())
    torn = 0
    for number, part in enumerate(lines.parts):
        with open(part, "rb") as fh:
            end = 0
            for line in fh:
                start, end = end, end + len(line)
                if not line.endswith(b"\n"):
                    torn += 1
                    continue
                try:
                    d = json.loads(line.decode("utf-8"))
                    if not isinstance(d, dict) or "id" not in d or "source" not in d:
                        raise TypeError("not a score record (no id/source)")
                    rows.add_dict(d, number, start)
                except (ValueError, TypeError, AttributeError, IndexError) as e:
                    torn += 1
                    log.warning("skipping unreadable score line in %s: %s", part, e)
    index = ScoreIndex.build(rows, lines)
    del rows
    _release_freed_memory()
    return index, torn


# ---- the store -------------------------------------------------------------------------------------------------------
class ScoreStore:
    """Cached scores of one scorer fingerprint: `<root>/<fingerprint>/part-<shard>-of-<n>.jsonl`.

    Reading merges every part file (any shard layout), so a later run with a different shard count, or the filter
    stage, sees all finished samples; the latest line of an id wins. A torn last line (job killed mid-write) is
    skipped and counted. What reading builds is an index, not the records (see the module docstring); records this
    process writes are visible at once (they join the index in batches of PENDING_ROWS).
    """

    PENDING_ROWS = 1 << 16

    def __init__(self, root: str | Path, fingerprint: str, shard: int = 0, n_shards: int = 1):
        if not 0 <= shard < n_shards:
            raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
        self.fingerprint = fingerprint
        self.dir = Path(root) / fingerprint
        self.shard, self.n_shards = shard, n_shards
        self.path = self.dir / f"part-{shard:05d}-of-{n_shards:05d}.jsonl"
        self.torn_lines = 0
        self._index: ScoreIndex | None = None
        self._pending: dict[str, int] = {}  # id -> row of _pending_rows: written by this process, not indexed yet
        self._pending_rows: _Rows | None = None

    def _load(self) -> ScoreIndex:
        if self._index is None:
            self._index, self.torn_lines = scan_parts(self.dir)
            self._pending, self._pending_rows = {}, _Rows(self._index.codes)
            if self.torn_lines:
                log.warning("%d torn/unreadable lines in %s (those samples will be re-scored)", self.torn_lines, self.dir)
        return self._index

    def table(self) -> ScoreIndex:
        """Every record of the store as columns (this process's writes included)."""
        index = self._load()
        if self._pending:
            self._index = index = index.merged(self._pending_rows)
            self._pending, self._pending_rows = {}, _Rows(index.codes)
        return index

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._pending or self._load().row_of(sample_id) >= 0

    def __len__(self) -> int:
        return len(self.table())

    def get(self, sample_id: str) -> ScoreRecord | None:
        index = self._load()
        pending = self._pending.get(sample_id)
        if pending is not None:
            cols = self._pending_rows.cols
            return ScoreRecord.from_dict(json.loads(index.lines.read(cols["part"][pending], cols["offset"][pending])))
        row = index.row_of(sample_id)
        if row < 0:
            return None
        record = index.record(row)
        return record if record.id == sample_id else None  # a digest match of an absent id (chance 2**-96)

    def records(self) -> Iterator[ScoreRecord]:
        """Every record (latest per id), read one at a time in file order."""
        yield from self.table().records_in_file_order()

    def reload(self) -> None:
        if self._index is not None:
            self._index.lines.close()
        self._index, self._pending, self._pending_rows = None, {}, None

    def write(self, records: Iterable[ScoreRecord]) -> None:
        """Append a batch and make it durable before returning."""
        dicts = [r.to_dict() for r in records]
        if not dicts:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8") for d in dicts]
        with file_lock(self.path.with_suffix(".lock")):
            self._repair_tail()
            with open(self.path, "ab") as fh:
                start = fh.tell()
                fh.write(b"".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
        if self._index is None:  # nothing read yet: the first read will see these lines
            return
        part = self._index.lines.part_number(self.path)
        for d, line in zip(dicts, lines):
            self._pending[d["id"]] = self._pending_rows.add_dict(d, part, start)
            start += len(line)
        if len(self._pending_rows) >= self.PENDING_ROWS:
            self.table()

    def _repair_tail(self) -> None:
        """Terminate a torn last line so the next record starts on its own line (the torn one stays unreadable)."""
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")

    def records_for(self, sample_ids: Iterable[str]) -> Iterator[tuple[str, ScoreRecord]]:
        for sid in sample_ids:
            rec = self.get(sid)
            if rec is not None:
                yield sid, rec

