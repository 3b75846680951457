"""Byte-deterministic archive writers (zip, tar.gz, tar.zst, split files): fixed timestamps, owners and order, so
two builds of the demo data are identical byte for byte."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

_EPOCH_ZIP = (1980, 1, 1, 0, 0, 0)


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH_ZIP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(members[name]))
    return buf.getvalue()


def write_tar_gz(path: Path, members: dict[str, bytes]) -> bytes:
    """Write a .tar.gz (gzip header mtime 0, no file name) and return its bytes."""
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0) as f:
        f.write(tar_bytes(members))
    data = gz.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def write_tar_zst(path: Path, members: dict[str, bytes]) -> None:
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(tar_bytes(members)))


def write_split(prefix: Path, data: bytes, parts: int) -> list[Path]:
    """Split `data` like `split -b` into prefix.aa, prefix.ab, ... (MedMax's `images.tar.gz.aa` layout)."""
    size = -(-len(data) // parts)
    out = []
    for i in range(parts):
        suffix = "a" + chr(ord("a") + i)
        p = prefix.with_name(prefix.name + "." + suffix)
        p.write_bytes(data[i * size : (i + 1) * size])
        out.append(p)
    return out
