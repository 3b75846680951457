"""Boxes and labels in free text: parsing, IoU, robust label matching.

Shared by the attacks (to prove no misleading content carries the ground truth) and by HEART scoring (to decide
whether an answer is right), so both sides use one definition of "this text names label X / box B".

Boxes are (x1, y1, x2, y2) on Qwen2-VL's [0, 1000) grid, x2/y2 exclusive: area = (x2 - x1) * (y2 - y1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

Box = tuple[int, int, int, int]

BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"

_NUM = r"(-?\d+(?:\.\d+)?)"
# Qwen2-VL's "(x1,y1),(x2,y2)" (inside <|box_start|>..<|box_end|> or bare) and the list form "[x1, y1, x2, y2]".
_PAIR_RE = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*,?\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")
_LIST_RE = re.compile(rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]")


def format_box(box: Sequence[int]) -> str:
    """Qwen2-VL box text: ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"{BOX_START}({x1},{y1}),({x2},{y2}){BOX_END}"


def format_box_plain(box: Sequence[int]) -> str:
    """The same coordinates without special tokens (for text drawn into an image)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"({x1},{y1}),({x2},{y2})"


def format_grounding(object_name: str, boxes: Iterable[Sequence[int]]) -> str:
    """Qwen2-VL grounding answer: ``<|object_ref_start|>name<|object_ref_end|><|box_start|>..<|box_end|>...``."""
    return f"{REF_START}{object_name}{REF_END}" + "".join(format_box(b) for b in boxes)


def _to_grid(vals: list[str]) -> Box:
    nums = [float(v) for v in vals]
    # A float box in [0, 1] (Med-GRIT's variant, some models' habit) is read as unit coordinates.
    if any("." in v for v in vals) and all(0.0 <= n <= 1.0 for n in nums):
        nums = [n * 1000.0 for n in nums]
    x1, y1, x2, y2 = (round(n) for n in nums)
    # Corners given in the wrong order still describe a box.
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def parse_boxes(text: str) -> list[Box]:
    """Every box in ``text``, in order of appearance: ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, bare
    ``(x1,y1),(x2,y2)`` and ``[x1,y1,x2,y2]``. Returns [] when there is none."""
    found: list[tuple[int, Box]] = []
    for m in _PAIR_RE.finditer(text):
        found.append((m.start(), _to_grid(list(m.groups()))))
    for m in _LIST_RE.finditer(text):
        found.append((m.start(), _to_grid(list(m.groups()))))
    found.sort(key=lambda t: t[0])
    return [b for _, b in found]


def box_area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union; 0.0 when either box is degenerate (zero area)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def valid_box(b: Sequence[float], grid: int = 1000) -> bool:
    return len(b) == 4 and 0 <= b[0] < b[2] <= grid and 0 <= b[1] < b[3] <= grid


@dataclass(frozen=True)
class IoURule:
    """When a predicted box counts as the ground truth (HEART detection scoring).

    threshold: minimum IoU (default 0.5, the PASCAL VOC convention); inclusive: IoU == threshold counts.
    match: "first" (default) scores only the first box in the answer, so an answer that lists many boxes, or quotes
    the misleading box before its own, gets no credit for a lucky one; "any" accepts any predicted box.
    A prediction counts when the chosen box reaches the threshold against ANY ground-truth box of the item.
    """

    threshold: float = 0.5
    inclusive: bool = True
    match: str = "first"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"IoURule.threshold must be in (0, 1], got {self.threshold}")
        if self.match not in ("first", "any"):
            raise ValueError(f"IoURule.match must be 'first' or 'any', got {self.match!r}")

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.inclusive else value > self.threshold

    def correct(self, predicted: Sequence[Box], truth: Sequence[Sequence[int]]) -> bool:
        if not predicted or not truth:
            return False
        cands = predicted[:1] if self.match == "first" else predicted
        return any(self.passes(iou(p, t)) for p in cands for t in truth)


# --------------------------------------------------------------------------------------------------- labels


def normalize_text(s: str) -> str:
    """Lower case, every run of non-alphanumerics (underscores, hyphens, punctuation) to one space."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", s.lower()).split())


def label_phrases(labels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """normalized phrase -> label: each label's own name, plus its aliases. Two labels sharing a phrase is a
    configuration error (the phrase could never decide between them)."""
    out: dict[str, str] = {}
    for lab in labels:
        for p in [lab, *((aliases or {}).get(lab, ()))]:
            n = normalize_text(p)
            if not n:
                continue
            if out.get(n, lab) != lab:
                raise ValueError(f"phrase {p!r} names both {out[n]!r} and {lab!r}")
            out[n] = lab
    return out


def find_labels(text: str, labels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None) -> set[str]:
    """The labels ``text`` names, longest phrase first and without overlaps, on word boundaries: with labels
    "fractured" and "non_fractured", "non-fractured" names only non_fractured, "no fracture" (an alias) only
    non_fractured, "fractured." only fractured."""
    norm = f" {normalize_text(text)} "
    taken = [False] * len(norm)
    found: set[str] = set()
    for phrase, lab in sorted(label_phrases(labels, aliases).items(), key=lambda kv: (-len(kv[0]), kv[0])):
        needle = f" {phrase} "
        start = norm.find(needle)
        while start != -1:
            span = range(start + 1, start + 1 + len(phrase))
            if not any(taken[i] for i in span):
                for i in span:
                    taken[i] = True
                found.add(lab)
            start = norm.find(needle, start + 1)
    return found


def label_correct(
    answer: str, truth: str, labels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> bool:
    """An answer is right when the one label it names is the truth (naming several, or none, is wrong)."""
    return find_labels(answer, labels, aliases) == {truth}
