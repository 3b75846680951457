"""Source adapters: native dataset records -> unified :class:`~aloevision.schema.Sample` (or a counted
:class:`~aloevision.schema.Drop`). One module per source; each documents its default native layout
(``DEFAULT_FILES`` / ``DEFAULT_IMAGES``) in its docstring, which the demo data generator follows."""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator

from aloevision.schema import Drop, Sample
from aloevision.sources import (
    aloe_text, cambrian, fracatlas, magpie, medgrit, medmax, medtrinity, mecovqa, pubmedvision,
)

ADAPTERS: dict[str, Callable[..., Iterator[Sample | Drop]]] = {
    "pubmedvision": pubmedvision.read,
    "medmax": medmax.read,
    "mecovqa": mecovqa.read,
    "medgrit": medgrit.read,
    "medtrinity": medtrinity.read,
    "cambrian": cambrian.read,
    "aloe_text": aloe_text.read,
    "magpie": magpie.read,
    "fracatlas": fracatlas.read,
}
MODULES = {
    "pubmedvision": pubmedvision, "medmax": medmax, "mecovqa": mecovqa, "medgrit": medgrit,
    "medtrinity": medtrinity, "cambrian": cambrian, "aloe_text": aloe_text, "magpie": magpie, "fracatlas": fracatlas,
}


log = logging.getLogger(__name__)


def _context(src):
    from aloevision.sources.base import SourceContext

    mod = MODULES[src.adapter]
    ctx = SourceContext.from_config(src, mod.DEFAULT_FILES, mod.DEFAULT_IMAGES)
    if hasattr(mod, "config_files"):
        mod.config_files(ctx, src)
    return ctx


def source_inventory(src) -> dict:
    """Which of the source's expected files and image containers exist, before anything is read (see
    :func:`aloevision.sources.base.inventory`)."""
    from aloevision.sources.base import inventory

    layouts = None if list(getattr(src, "files", None) or []) else getattr(MODULES[src.adapter], "LAYOUTS", None)
    return inventory(_context(src), layouts)


def allowed_roots(src) -> list[str]:
    """The folders a source's image references may resolve into (the cleaning rule ``path_escape`` checks them):
    the source folder, ``options.image_root`` (the Hub-id setup) and, for adapters that write embedded images out,
    their image cache (MedTrinity's ``25M_demo``); plus the resolved targets of the symlinks at the top level of the
    source folder and of ``image_root`` (the symlink rule, docs/data.md: shared storage linked into the folder)."""
    from aloevision.sources.base import top_level_links

    roots = [os.fspath(src.path)]
    ctx = _context(src)
    if ctx.options.get("image_root"):
        roots.append(os.fspath(ctx.options["image_root"]))
    roots += [t for r in list(roots) if os.path.isdir(r) for t in top_level_links(r)]
    extra = getattr(MODULES[src.adapter], "extra_roots", None)
    if extra is not None:
        roots += [os.fspath(r) for r in extra(ctx)]
    return roots


def read_source(src) -> Iterator[Sample | Drop]:
    """All records of one source (a :class:`aloevision.config.SourceConfig` or anything with its fields), converted.
    Logs, before reading, which expected files and image containers were found and which are missing. Raises
    ``ValueError`` for an unknown adapter and ``FileNotFoundError`` when the data files are not there."""
    try:
        adapter = ADAPTERS[src.adapter]
    except KeyError:
        raise ValueError(f"source {src.name}: unknown adapter {src.adapter!r}; choose one of {sorted(ADAPTERS)}") from None
    inv = source_inventory(src)
    if inv.get("hub"):
        log.info("source %s: Hub dataset %s (images under %s)", src.name, inv["path"], inv.get("image_root"))
    else:
        found = {k: v["count"] for k, v in {**inv["files"], **inv["images"]}.items() if v["count"]}
        log.info("source %s: found %s under %s (image locations not present: %s)", src.name, found, inv["path"],
                 inv["missing_images"] or "none")
        if inv["missing_files"]:
            log.warning("source %s: expected data files missing under %s: %s", src.name, inv["path"],
                        inv["missing_files"])
    return adapter(src)
