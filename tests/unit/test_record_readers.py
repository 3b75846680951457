"""The record readers keep every readable row of a damaged file and report the rest (never raise, never hold an
unbounded line): JSON arrays, JSON lines, CSV, parquet."""

from __future__ import annotations

import json
import os

import pytest

from aloevision.sources import base
from aloevision.sources.base import Malformed, read_file


def rows(path):
    out = list(read_file(path))
    return [r for r in out if not isinstance(r, Malformed)], [r.detail for r in out if isinstance(r, Malformed)]


def test_json_array_skips_bad_elements_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "MAX_JSON_RECORD", 2000)
    big = json.dumps({"id": "big", "text": "x" * 5000})
    deep = "[" * 100_000 + "]" * 100_000
    text = ('[{"id": 1}, {"id": 2,, "bad": 1}, ' + big + ", " + deep + ', {"id": "s\\"]}[{"}, {"id": 3}, 7]')
    (tmp_path / "a.json").write_text(text)
    good, bad = rows(tmp_path / "a.json")
    assert good == [{"id": 1}, {"id": 's"]}[{'}, {"id": 3}, 7]
    assert len(bad) == 3 and "element 2" in bad[0] and "a.json" in bad[0]
    assert "over 2000 characters" in bad[1] and "nested too deeply" in bad[2]


def test_json_cut_off_keeps_rows_before_the_cut(tmp_path):
    (tmp_path / "c.json").write_text('{"meta": 1, "data": [{"id": 1}, {"id": 2}, {"id": 3, "conv')
    good, bad = rows(tmp_path / "c.json")
    assert good == [{"id": 1}, {"id": 2}] and len(bad) == 1 and "cut off" in bad[0]


def test_jsonl_bounded_lines_and_bad_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "MAX_JSON_RECORD", 1000)
    lines = [b'{"id": 1}\n', b'{"id": "' + b"x" * 5000 + b'"}\n', b'{"id": "\xff"}\n', b'{"id": "\\udc00"}\n',
             b'{"id": "\\ud83d\\ude00"}\n', b"[" * 50_000 + b"\n", b'{"id": 2}']
    (tmp_path / "l.jsonl").write_bytes(b"".join(lines))
    good, bad = rows(tmp_path / "l.jsonl")
    assert good == [{"id": 1}, {"id": "\U0001F600"}, {"id": 2}]
    assert [d.split(":")[1] for d in bad] == ["2", "3", "4", "6"] and all(d.startswith("l.jsonl:") for d in bad)


def test_csv_with_undecodable_bytes_keeps_other_rows(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"image_id,fractured\nA.jpg,1\nB\xe9.jpg,0\nC.jpg,0\n")
    good, bad = rows(tmp_path / "d.csv")
    assert [r["image_id"] for r in good] == ["A.jpg", "C.jpg"] and len(bad) == 1 and "not UTF-8" in bad[0]


def test_damaged_parquet_and_special_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(10))}), tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    good, bad = rows(tmp_path / "cut.parquet")
    assert good == [] and len(bad) == 1 and "cut.parquet" in bad[0]
    os.mkfifo(tmp_path / "fifo.jsonl")
    good, bad = rows(tmp_path / "fifo.jsonl")  # returns at once: a FIFO is never opened
    assert good == [] and "not a regular file" in bad[0]


@pytest.mark.parametrize("payload", [b"", b"   \n", b"\xef\xbb\xbf[]", b"null", b"[1, 2"])
def test_degenerate_files_never_raise(tmp_path, payload):
    (tmp_path / "x.json").write_bytes(payload)
    list(read_file(tmp_path / "x.json"))
