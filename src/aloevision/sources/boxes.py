"""Box conversions into Qwen2-VL's text format ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` on the [0, 1000) grid.

Conventions (one place, so every adapter agrees):

* Grid value = ``round(v / size * 1000)`` for pixels, ``round(v * 1000)`` for 0-1 normalised values, then clamped to
  0..999.
* Swapped corners are sorted (x1 <= x2, y1 <= y2); pixel boxes count the right/bottom edge exclusive (a mask whose
  last foreground column is c gives x2 = c + 1 before normalising).
* A box that collapses after rounding (x1 == x2 or y1 == y2, e.g. a one-pixel mask on a large image) is widened by
  one grid step (towards the inside at the 999 border) so x1 < x2 and y1 < y2 always hold.
* Values that are not on any known scale (negative beyond rounding noise, or above 1000 on the 0-1000 grid) raise
  :class:`BoxError`; adapters turn that into a ``bad_box`` drop rather than inventing a box.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
GRID = 1000
_NUM = r"\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*"
QWENVL_BOX_RE = re.compile(r"<box>\s*\(" + _NUM + "," + _NUM + r"\)\s*,?\s*\(" + _NUM + "," + _NUM + r"\)\s*</box>")
QWENVL_REF_RE = re.compile(r"<ref>(.*?)</ref>", re.S)
QWEN2VL_BOX_RE = re.compile(
    re.escape(BOX_START) + r"\((\d+),(\d+)\),\((\d+),(\d+)\)" + re.escape(BOX_END)
)


class BoxError(ValueError):
    """A box whose coordinates cannot be placed on the grid."""


def _finite(vals: Iterable[float]) -> list[float]:
    out = [float(v) for v in vals]
    if not all(math.isfinite(v) for v in out):
        raise BoxError(f"non-finite coordinate in {out}")
    return out


def _clamp(v: float) -> int:
    return min(GRID - 1, max(0, int(round(v))))


def grid_box(x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
    """Grid-scale (0..1000) floats -> a valid integer box: sorted, clamped to 0..999, non-degenerate."""
    x1, y1, x2, y2 = _finite((x1, y1, x2, y2))
    if min(x1, y1, x2, y2) < -0.5 or max(x1, y1, x2, y2) > GRID + 0.5:
        raise BoxError(f"box ({x1},{y1}),({x2},{y2}) is outside the 0-1000 grid")
    xa, xb = sorted((_clamp(x1), _clamp(x2)))
    ya, yb = sorted((_clamp(y1), _clamp(y2)))
    if xa == xb:
        xa, xb = (xa, xa + 1) if xa < GRID - 1 else (xa - 1, xa)
    if ya == yb:
        ya, yb = (ya, ya + 1) if ya < GRID - 1 else (ya - 1, ya)
    return xa, ya, xb, yb


def from_pixels(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> tuple[int, int, int, int]:
    """Absolute pixel corners (right/bottom exclusive) on a width x height image -> grid box."""
    if not width or not height or width <= 0 or height <= 0:
        raise BoxError(f"image size {width}x{height} is not positive")
    x1, y1, x2, y2 = _finite((x1, y1, x2, y2))
    # Pixel annotations stray a little outside the image (VOC 1-based corners, COCO float rounding): clamp to it.
    x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
    return grid_box(x1 / width * GRID, y1 / height * GRID, x2 / width * GRID, y2 / height * GRID)


def from_unit(x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
    """Corners normalised to [0, 1] -> grid box."""
    vals = _finite((x1, y1, x2, y2))
    if min(vals) < -1e-6 or max(vals) > 1 + 1e-6:
        raise BoxError(f"normalised box {vals} is outside [0, 1]")
    return grid_box(*(v * GRID for v in vals))


def coco_box(bbox: Sequence[float], width: float, height: float) -> tuple[int, int, int, int]:
    """COCO ``[x, y, w, h]`` in pixels, top-left origin."""
    if len(bbox) != 4:
        raise BoxError(f"COCO bbox needs 4 numbers, got {bbox!r}")
    x, y, w, h = _finite(bbox)
    return from_pixels(x, y, x + w, y + h, width, height)


def voc_box(xmin: float, ymin: float, xmax: float, ymax: float, width: float, height: float) -> tuple[int, int, int, int]:
    """PASCAL VOC ``xmin..ymax`` in pixels (treated like any pixel box)."""
    return from_pixels(xmin, ymin, xmax, ymax, width, height)


def yolo_box(cx: float, cy: float, w: float, h: float) -> tuple[int, int, int, int]:
    """YOLO ``cx cy w h`` normalised to [0, 1]; parts sticking out of the image are clipped."""
    cx, cy, w, h = _finite((cx, cy, w, h))
    if w < 0 or h < 0:
        raise BoxError(f"YOLO box with negative size {w}x{h}")
    x1, x2 = max(0.0, cx - w / 2), min(1.0, cx + w / 2)
    y1, y2 = max(0.0, cy - h / 2), min(1.0, cy + h / 2)
    return from_unit(x1, y1, x2, y2)


def mask_bbox(mask) -> tuple[int, int, int, int] | None:
    """Tight pixel box ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of the non-zero pixels of a mask (PIL image or array),
    or None for an empty mask. Any channel counts as foreground."""
    import numpy as np

    a = np.asarray(mask)
    if a.ndim == 3:
        a = a.any(axis=2)
    fg = a != 0
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def format_box(box: Sequence[int]) -> str:
    x1, y1, x2, y2 = box
    return f"{BOX_START}({x1},{y1}),({x2},{y2}){BOX_END}"


def format_ref(phrase: str) -> str:
    return f"{REF_START}{phrase}{REF_END}"


def parse_qwen2vl_boxes(text: str) -> list[tuple[int, int, int, int]]:
    return [tuple(int(v) for v in m.groups()) for m in QWEN2VL_BOX_RE.finditer(text)]  # type: ignore[misc]


def qwenvl_box_values(raw: Sequence[str]) -> tuple[int, int, int, int]:
    """Four numbers as written in a Qwen-VL ``<box>``: 0-1 floats when any has a decimal point and all are <= 1
    (Med-GRIT docstring variant), otherwise the 0-1000 grid (Qwen-VL's native scale; ints, or floats above 1)."""
    vals = _finite(raw)
    if any("." in r or "e" in r.lower() for r in raw) and max(vals) <= 1.0:
        return from_unit(*vals)
    return grid_box(*vals)


def qwenvl_to_qwen2vl(text: str) -> tuple[str, int]:
    """Rewrite Qwen-VL ``<ref>p</ref><box>(x1,y1),(x2,y2)</box>`` as Qwen2-VL tokens; returns (text, n_boxes).
    Raises :class:`BoxError` for a box off every scale, or a ``<box>`` tag that does not parse."""
    n = 0

    def box(m: re.Match) -> str:
        nonlocal n
        n += 1
        return format_box(qwenvl_box_values(m.groups()))

    out = QWENVL_BOX_RE.sub(box, text)
    if "<box>" in out or "</box>" in out:
        raise BoxError(f"unparsable <box> in {text[:200]!r}")
    out = QWENVL_REF_RE.sub(lambda m: format_ref(m.group(1)), out)
    return out, n


_LLAVA_BOX_RE = re.compile(r"\[\s*(0?\.\d+|[01](?:\.0+)?)\s*,\s*(0?\.\d+|[01](?:\.0+)?)\s*,\s*"
                           r"(0?\.\d+|[01](?:\.0+)?)\s*,\s*(0?\.\d+|[01](?:\.0+)?)\s*\]")


def llava_to_qwen2vl(text: str) -> tuple[str, int]:
    """LLaVA-1.5 grounding boxes ``[x1, y1, x2, y2]`` (0-1 floats, written with a decimal point) -> Qwen2-VL box
    tokens. Only used where a source is known to carry them (Cambrian option ``llava_boxes``)."""
    n = 0

    def box(m: re.Match) -> str:
        nonlocal n
        n += 1
        return format_box(from_unit(*(float(v) for v in m.groups())))

    return _LLAVA_BOX_RE.sub(box, text), n
