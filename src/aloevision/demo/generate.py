"""Build the demo data once: every training source in its native format (`sources/`), the demo evaluation sets in
their native formats (`eval/`), and the records of what was planted.

`ensure_demo_data(demo_dir)` is idempotent and safe to call from concurrent jobs: it builds into a temporary sibling
folder under a file lock and renames it into place, so readers never see a half-built tree. A `VERSION.json` stamp
holds a digest of the generator's own source code and of the libraries whose encoders shape the bytes; when either
changes the tree is rebuilt. Same stamp => same bytes.

Files written at the top of the demo folder:
  PLANTED.json   defects later stages must find: [{kind, source, row, record, file/member/image, ...}]
  EXPECTED.json  what an adapter should derive for some records (e.g. tight boxes on the 1000 grid)
  SOURCES.json   where each demo source lives, in SourceConfig terms (path relative to the demo folder)
  VERSION.json   the build stamp
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from aloevision.utils.locks import file_lock

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"  # bump for changes the source digest cannot see (e.g. a data file)
_DEMO_MODULES = ("generate", "context", "images", "qa", "archives", "build_eval", "build_sources", "vocabulary")


def build_stamp() -> dict[str, str]:
    import numpy
    import PIL
    import pyarrow
    import zstandard

    here = Path(__file__).parent
    digest = hashlib.sha256()
    for mod in _DEMO_MODULES:
        digest.update((here / f"{mod}.py").read_bytes())
    return {
        "generator_version": GENERATOR_VERSION,
        "source_digest": digest.hexdigest()[:16],
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "zstandard": zstandard.__version__,
    }


def _read_stamp(demo_dir: Path) -> dict | None:
    try:
        return json.loads((demo_dir / "VERSION.json").read_text())
    except (OSError, ValueError):
        return None


def build_demo_data(out_dir: Path) -> None:
    """Write the whole demo tree into `out_dir` (which should be empty)."""
    from aloevision.demo import build_eval, build_sources
    from aloevision.demo.context import BuildContext

    ctx = BuildContext(out_dir)
    build_eval.build_all(ctx)  # first: the sources plant copies of evaluation images
    build_sources.build_all(ctx)
    ctx.write_json("PLANTED.json", ctx.planted)
    ctx.write_json("EXPECTED.json", ctx.expected)
    ctx.write_json("SOURCES.json", ctx.sources)


def ensure_demo_data(demo_dir: str | Path) -> Path:
    """Return `demo_dir`, (re)building it first when it is missing or was built by another generator version."""
    demo_dir = Path(demo_dir).resolve()
    stamp = build_stamp()
    if _read_stamp(demo_dir) == stamp:
        return demo_dir
    demo_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(demo_dir.parent / f".{demo_dir.name}.lock"):
        if _read_stamp(demo_dir) == stamp:  # another job built it while we waited
            return demo_dir
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{demo_dir.name}.build-", dir=demo_dir.parent))
        try:
            build_demo_data(tmp)
            # the stamp goes last: a tree without it is never taken as complete
            (tmp / "VERSION.json").write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
            old = None
            if demo_dir.exists():
                old = demo_dir.with_name(f".{demo_dir.name}.old-{os.getpid()}")
                demo_dir.rename(old)
            tmp.rename(demo_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built demo data in %s (%.1f s)", demo_dir, time.perf_counter() - t0)
    return demo_dir


def main() -> None:  # python -m aloevision.demo.generate <dir>
    import sys

    logging.basicConfig(level=logging.INFO)
    t0 = time.perf_counter()
    path = ensure_demo_data(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo_data")
    print(f"demo data: {path} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
