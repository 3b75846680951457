"""Read an offline W&B run's binary `.wandb` log back into protobuf records.

wandb >= 0.19 writes runs through its Go core and no longer ships a Python reader. The file is a LevelDB-style log:
a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(crc32c, length, type FULL/FIRST/MIDDLE/LAST) — records are `wandb_internal_pb2.Record` messages.
Used by tests and by the report stage to check what was logged without the W&B server.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run log (bad header {data[:4]!r})")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer too small for a header: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # a chunk still being written: stop at the last whole record
            return
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding at a block's end
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")
        rec = pb.Record()
        rec.ParseFromString(pending)
        pending = b""
        yield rec


def wait_for_exit(path: str | Path, timeout: float = 30.0) -> None:
    """Block until the log holds its `exit` record: wandb-core (a separate process) may still be flushing the
    last records for a moment after `run.finish()` returned."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in iter_records(path)):
                return
        except (ValueError, FileNotFoundError):  # header not written yet / torn tail
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout:.0f} s (the run did not finish)")
        time.sleep(0.1)


def read_run(path: str | Path, timeout: float = 30.0) -> dict[str, Any]:
    """{'config': {...}, 'history': [{...}], 'summary': {...}, 'run': {group, job_type, tags}} of one finished run
    log (waits up to `timeout` s for wandb-core to finish writing it)."""
    wait_for_exit(path, timeout)
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "run": {}}

    def val(item) -> Any:
        return json.loads(item.value_json)

    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"group": r.run_group, "job_type": r.job_type, "tags": list(r.tags), "id": r.run_id}
            for item in r.config.update:
                out["config"][item.key] = val(item)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = val(item)
        elif kind == "history":
            out["history"].append({".".join(item.nested_key) or item.key: val(item) for item in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][".".join(item.nested_key) or item.key] = val(item)
    # W&B wraps config values as {"value": ...}
    out["config"] = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in out["config"].items()}
    return out


def find_run_log(run_dir: str | Path) -> Path:
    logs = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")) or sorted(Path(run_dir).glob("wandb/run-*/run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no W&B run log under {run_dir}/wandb")
    return logs[-1]
