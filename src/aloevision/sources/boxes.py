"""Box conversions into Qwen2-VL's text format ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` on the [0, 1000) grid.

Conventions (one place, so every adapter agrees). A box is validated, never invented:

* Grid value = ``round(v / size * 1000)`` for pixels, ``round(v * 1000)`` for 0-1 normalised values, then clamped to
  0..999. Pixel boxes count the right/bottom edge exclusive (a mask whose last foreground column is c gives
  x2 = c + 1 before normalising).
* Only genuine rounding at the edge is clamped: a pixel corner at most ``PIXEL_SLACK`` (1 px: VOC's 1-based corners,
  COCO float noise) outside the image, a normalised corner at most ``UNIT_SLACK`` (half a grid step) outside
  [0, 1], a grid corner at most 0.5 outside [0, 1000]. Anything further out raises :class:`BoxError`.
* Corners must be ordered: a box with x2 <= x1 or y2 <= y1 (zero or negative width/height, swapped corners)
  raises :class:`BoxError`; it is never sorted or widened into a box the annotation did not describe. A real box
  thinner than one grid step (a one-pixel mask on a large image) is the one case widened, to one step.
* Adapters turn :class:`BoxError` into a ``bad_box`` drop.
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


PIXEL_SLACK = 1.0
UNIT_SLACK = 0.5 / GRID


def _clamp(v: float) -> int:
    return min(GRID - 1, max(0, int(round(v))))


def grid_box(x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
    """Grid-scale (0..1000) floats -> a valid integer box on 0..999. Raises :class:`BoxError` for corners off the
    grid (beyond rounding) and for zero-size or inverted boxes."""
    x1, y1, x2, y2 = _finite((x1, y1, x2, y2))
    if min(x1, y1, x2, y2) < -0.5 or max(x1, y1, x2, y2) > GRID + 0.5:
        raise BoxError(f"box ({x1},{y1}),({x2},{y2}) is outside the 0-1000 grid")
    if x2 <= x1 or y2 <= y1:
        raise BoxError(f"box ({x1},{y1}),({x2},{y2}) has zero or negative width/height")
    xa, xb = _clamp(x1), _clamp(x2)
    ya, yb = _clamp(y1), _clamp(y2)
    if xa == xb:  # a real extent below one grid step: rounding, widened to one step
        xa, xb = (xa, xa + 1) if xa < GRID - 1 else (xa - 1, xa)
    if ya == yb:
        ya, yb = (ya, ya + 1) if ya < GRID - 1 else (ya - 1, ya)
    return xa, ya, xb, yb


def from_pixels(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> tuple[int, int, int, int]:
    """Absolute pixel corners (right/bottom exclusive) on a width x height image -> grid box."""
    try:
        width, height = float(width), float(height)
    except (TypeError, ValueError):
        raise BoxError(f"image size {width!r}x{height!r} is not a number") from None
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        raise BoxError(f"image size {width}x{height} is not positive")
    x1, y1, x2, y2 = _finite((x1, y1, x2, y2))
    if min(x1, y1) < -PIXEL_SLACK or x2 > width + PIXEL_SLACK or y2 > height + PIXEL_SLACK or \
            max(x1, x2) < 0 or max(y1, y2) < 0 or min(x1, x2) > width or min(y1, y2) > height:
        raise BoxError(f"pixel box ({x1},{y1}),({x2},{y2}) is outside the {width:g}x{height:g} image")
    if x2 <= x1 or y2 <= y1:
        raise BoxError(f"pixel box ({x1},{y1}),({x2},{y2}) has zero or negative width/height")
    x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
    return grid_box(x1 / width * GRID, y1 / height * GRID, x2 / width * GRID, y2 / height * GRID)


def from_unit(x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
    """Corners normalised to [0, 1] -> grid box."""
    vals = _finite((x1, y1, x2, y2))
    if min(vals) < -UNIT_SLACK or max(vals) > 1 + UNIT_SLACK:
        raise BoxError(f"normalised box {vals} is outside [0, 1]")
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in vals)
    if x2 <= x1 or y2 <= y1:
        raise BoxError(f"normalised box {vals} has zero or negative width/height")
    return grid_box(x1 * GRID, y1 * GRID, x2 * GRID, y2 * GRID)


def coco_box(bbox: Sequence[float], width: float, height: float) -> tuple[int, int, int, int]:
    """COCO ``[x, y, w, h]`` in pixels, top-left origin."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise BoxError(f"COCO bbox needs 4 numbers, got {bbox!r}")
    x, y, w, h = _finite(bbox)
    if w <= 0 or h <= 0:
        raise BoxError(f"COCO bbox {list(bbox)} has zero or negative size")
    return from_pixels(x, y, x + w, y + h, width, height)


def voc_box(xmin: float, ymin: float, xmax: float, ymax: float, width: float, height: float) -> tuple[int, int, int, int]:
    """PASCAL VOC ``xmin..ymax`` in pixels (treated like any pixel box)."""
    return from_pixels(xmin, ymin, xmax, ymax, width, height)


def yolo_box(cx: float, cy: float, w: float, h: float) -> tuple[int, int, int, int]:
    """YOLO ``cx cy w h`` normalised to [0, 1]; corners past the image edge by more than rounding are a BoxError."""
    cx, cy, w, h = _finite((cx, cy, w, h))
    if w <= 0 or h <= 0:
        raise BoxError(f"YOLO box with zero or negative size {w}x{h}")
    return from_unit(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


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
    """Four numbers as written in a Qwen-VL ``<box>``: 0-1 floats when any has a decimal point and all are <= 2
    (Med-GRIT docstring variant; a value a little past 1 is a bad normalised box, not a speck in the grid's
    corner), otherwise the 0-1000 grid (Qwen-VL's native scale; ints, or larger floats)."""
    vals = _finite(raw)
    if any("." in r or "e" in r.lower() for r in raw) and max(vals) <= 2.0:
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


_UNIT_NUM = r"\s*(\d?\.\d+)\s*"  # LLaVA-1.5 writes every coordinate with a decimal point ("0.12", "1.00")
_LLAVA_BOX_RE = re.compile(r"\[" + _UNIT_NUM + "," + _UNIT_NUM + "," + _UNIT_NUM + "," + _UNIT_NUM + r"\]")


def llava_to_qwen2vl(text: str) -> tuple[str, int]:
    """LLaVA-1.5 grounding boxes ``[x1, y1, x2, y2]`` (four numbers, each written with a decimal point, all <= 2)
    -> Qwen2-VL box tokens, so the mixture teaches one box format (Cambrian, on by default: option ``llava_boxes``).
    Raises :class:`BoxError` for such a box past [0, 1] or inverted."""
    n = 0

    def box(m: re.Match) -> str:
        nonlocal n
        vals = [float(v) for v in m.groups()]
        if max(vals) > 2.0:  # not a normalised box (e.g. a list of measurements): left as written
            return m.group(0)
        n += 1
        return format_box(from_unit(*vals))

    return _LLAVA_BOX_RE.sub(box, text), n
