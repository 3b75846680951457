"""Source adapters: native dataset records -> unified :class:`~aloevision.schema.Sample` (or a counted
:class:`~aloevision.schema.Drop`). One module per source; each documents its default native layout
(``DEFAULT_FILES`` / ``DEFAULT_IMAGES``) in its docstring, which the demo data generator follows."""

from __future__ import annotations

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


def read_source(src) -> Iterator[Sample | Drop]:
    """All records of one source (a :class:`aloevision.config.SourceConfig` or anything with its fields), converted.
    Raises ``ValueError`` for an unknown adapter and ``FileNotFoundError`` when the data files are not there."""
    try:
        adapter = ADAPTERS[src.adapter]
    except KeyError:
        raise ValueError(f"source {src.name}: unknown adapter {src.adapter!r}; choose one of {sorted(ADAPTERS)}") from None
    return adapter(src)
