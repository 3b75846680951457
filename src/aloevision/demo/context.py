"""What every demo builder shares: the output root, seeded random streams, deterministic writers, and the record
of planted defects (PLANTED.json)."""

from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20260527
# Training images added for the closed questions must stay farther than this (64-bit pHash, bits) from every
# evaluation image, so only the planted leaks are near-duplicates of evaluation images.
MIN_EVAL_DISTANCE = 9


class BuildContext:
    def __init__(self, root: Path):
        self.root = root
        self.planted: list[dict[str, Any]] = []
        # eval image key -> (benchmark, item id, relative path or None, bytes): candidates for planted leaks
        self.eval_images: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, dict[str, Any]] = {}
        # eval key -> [{id, prompt (as the evaluation sends it), answer, bytes}]: items a source may leak verbatim
        self.eval_questions: dict[str, list[dict[str, Any]]] = {}
        # source -> native record id -> what an adapter should derive (e.g. the tight box on the 1000 grid)
        self.expected: dict[str, dict[str, Any]] = {}
        self._eval_hashes: Any = None  # (n, 64) bool pHash bits of the evaluation images, computed on first use

    def rng(self, *key: object) -> np.random.Generator:
        """An independent, stable random stream per key (adding a builder never shifts another one's data)."""
        return np.random.default_rng([SEED, zlib.crc32("/".join(map(str, key)).encode())])

    def far_from_eval(self, img: Any, min_bits: int = MIN_EVAL_DISTANCE) -> bool:
        """Whether `img` (as it will be encoded) is at least `min_bits` pHash bits from every evaluation image."""
        import imagehash
        from PIL import Image

        if self._eval_hashes is None:
            hashes = [imagehash.phash(Image.open(io.BytesIO(e["bytes"]))).hash.ravel() for e in self.eval_images.values()]
            self._eval_hashes = np.array(hashes, dtype=bool).reshape(len(hashes), -1)
        if not len(self._eval_hashes):
            return True
        h = imagehash.phash(img).hash.ravel()
        return int((self._eval_hashes != h).sum(axis=1).min()) >= min_bits

    def plant(self, kind: str, **info: Any) -> None:
        self.planted.append({"kind": kind, **info})

    def expect(self, source: str, record: str, **info: Any) -> None:
        self.expected.setdefault(source, {})[record] = info

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.path(rel).write_bytes(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.path(rel).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    def write_jsonl(self, rel: str, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self.path(rel).write_text(text, encoding="utf-8")

    def write_parquet(self, rel: str, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), self.path(rel))

    def write_tsv(self, rel: str, header: list[str], rows: list[list[Any]]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        self.path(rel).write_text(buf.getvalue(), encoding="utf-8")

    def write_csv(self, rel: str, header: list[str], rows: list[list[Any]]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        self.path(rel).write_text(buf.getvalue(), encoding="utf-8")

    def register_source(self, name: str, **fields: Any) -> None:
        """Where a demo source lives, in SourceConfig terms (path relative to the demo root, files, images)."""
        self.sources[name] = fields
