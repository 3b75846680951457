"""The loader registry and the row-by-row driver that turns malformed rows into counted skips."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping

from aloevision.evalsets.base import Bench, EvalItem, LoadStats, SkipRow

# name -> callable(bench_cfg, stats=None, require_answer=True) -> Iterator[EvalItem]
LOADERS: dict[str, Callable[..., Iterator[EvalItem]]] = {}

Convert = Callable[[str, Mapping[str, Any]], "EvalItem | list[EvalItem]"]


def loader(name: str):
    """Register `fn(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]` under `name`.

    The registered callable takes the benchmark config as the eval stage holds it (BenchmarkConfig, DictConfig or
    dict), an optional LoadStats to fill in (a fresh one is made and logged otherwise), and `require_answer`: False
    keeps rows without a reference answer (hidden test labels) - what leakage hashing wants, since their images
    still count.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def run(bench_cfg: Any, stats: LoadStats | None = None, require_answer: bool = True) -> Iterator[EvalItem]:
            bench = Bench.of(bench_cfg)
            own = stats is None
            stats = stats if stats is not None else LoadStats(bench.name)
            yield from fn(bench, stats, require_answer)
            if own:
                stats.log()

        LOADERS[name] = run
        return run

    return wrap


def drive(rows: Iterable[tuple[str, Any]], stats: LoadStats, convert: Convert) -> Iterator[EvalItem]:
    """Convert each (row id, record); a row that is not a mapping or raises SkipRow / a data error is counted."""
    for row_id, row in rows:
        stats.rows += 1
        if isinstance(row, SkipRow):
            stats.skip(row.reason, row_id, row.detail)
            continue
        if not isinstance(row, Mapping):
            stats.skip("bad_row", row_id, f"a {type(row).__name__}, not a record")
            continue
        try:
            out = convert(row_id, row)
        except SkipRow as e:
            stats.skip(e.reason, row_id, e.detail)
            continue
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            stats.skip("malformed_row", row_id, repr(e)[:200])
            continue
        for item in out if isinstance(out, list) else [out]:
            stats.items += 1
            yield item


def numbered(rows: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for n, row in enumerate(rows):
        yield f"{prefix}{n}", row


def letter_answer(answer: Any, options: Mapping[str, str], require: bool) -> str:
    """The option letter for a reference given as a letter or as the option's text."""
    if answer is None or str(answer).strip() in ("", "nan", "None"):
        if require:
            raise SkipRow("no_answer", "the row has no reference answer")
        return ""
    a = str(answer).strip()
    if a.upper() in options:
        return a.upper()
    if len(a) >= 2 and a[0].upper() in options and a[1] in ".):":  # "B." / "B)" / "B: text"
        return a[0].upper()
    matches = [k for k, v in options.items() if str(v).strip().casefold() == a.casefold()]
    if len(matches) == 1:
        return matches[0]
    raise SkipRow("answer_not_in_options", f"answer {a[:60]!r} matches no option of {sorted(options)}")


def index_options(values: list[Any], require_two: bool = True) -> dict[str, str]:
    """['x', 'y', ...] -> {'A': 'x', 'B': 'y', ...}; at least two options for a multiple-choice item."""
    if len(values) > 26:
        raise SkipRow("bad_options", f"{len(values)} options")
    opts = {chr(65 + i): str(v).strip() for i, v in enumerate(values)}
    if require_two and len(opts) < 2:
        raise SkipRow("too_few_options", f"{len(opts)} option(s)")
    return opts
