"""The paper's cleaning rules (section 3) as small filters, seeded per-source caps, and drop accounting.

A rule has one method, ``check(sample) -> None | (reason, detail)`` (datatrove style); :func:`clean` applies a list
of rules to a stream of ``Sample | Drop`` and yields the survivors and a :class:`~aloevision.schema.Drop` per
removed sample. Rules are ordered cheap-first: structure before images. The image rule decodes every image with
:func:`aloevision.images.decode_image`, the one decode training, scoring, evaluation and the attacks use, so what
cleaning keeps every later stage can read (``decode=False``: header + cheap verify only, for quick looks).

The 4096-token rule is applied by the token-statistics stage, not here.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, OrderedDict, defaultdict
from typing import Any, Iterable, Iterator, Protocol, Sequence

from aloevision.images import ImageError, check_member, split_ref, verify_image
from aloevision.schema import Drop, Sample

class Rule(Protocol):
    name: str

    def check(self, sample: Sample) -> tuple[str, str] | None: ...


# ------------------------------------------------------------------------------------------ structure rules


class EmptyTurn:
    """A turn with no content: no image and only whitespace text (an assistant turn needs text)."""

    name = "empty_turn"

    def check(self, s: Sample):
        for i, m in enumerate(s.messages):
            parts = m.get("content") or []
            has_text = any(p.get("type") == "text" and str(p.get("text", "")).strip() for p in parts)
            has_image = any(p.get("type") == "image" for p in parts)
            if not has_text and (m.get("role") == "assistant" or not has_image):
                return "empty_turn", f"turn {i} ({m.get('role')}) is empty"
        return None


class NoAssistantTurn:
    name = "no_assistant_turn"

    def check(self, s: Sample):
        if not any(m.get("role") == "assistant" for m in s.messages):
            return "no_assistant_turn", f"roles: {[m.get('role') for m in s.messages]}"
        return None


class AlternatingTurns:
    """Optional leading system turn, then user/assistant alternating, starting with user, ending with assistant."""

    name = "non_alternating_turns"

    def check(self, s: Sample):
        roles = [m.get("role") for m in s.messages]
        body = roles[1:] if roles and roles[0] == "system" else roles
        ok = bool(body) and len(body) % 2 == 0 and all(
            r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(body)
        )
        if not ok:
            return "non_alternating_turns", f"roles: {roles}"
        return None


class PlaceholderCount:
    """One image part per image reference (and images only in user turns: Qwen2-VL cannot emit images)."""

    name = "placeholder_mismatch"

    def check(self, s: Sample):
        n = s.image_part_count()
        if n != len(s.images):
            return "placeholder_mismatch", f"{n} image parts, {len(s.images)} images"
        for m in s.messages:
            if m.get("role") != "user" and any(p.get("type") == "image" for p in m.get("content") or []):
                return "placeholder_mismatch", f"image part in a {m.get('role')} turn"
        return None


class MaxImages:
    name = "too_many_images"

    def __init__(self, max_images: int = 5):
        self.max_images = max_images

    def check(self, s: Sample):
        if len(s.images) > self.max_images:
            return "too_many_images", f"{len(s.images)} images > {self.max_images}"
        return None


# -------------------------------------------------------------------------------------------- image rules


class PathEscape:
    """Image references must stay inside the source's roots (adapters resolve them; this re-checks the output)."""

    name = "path_escape"

    def __init__(self, roots: Sequence[str] | None = None):
        self.roots = [os.path.realpath(r) for r in roots or []]

    def check(self, s: Sample):
        for ref in s.images:
            path, member = split_ref(ref)
            try:
                if member is not None:
                    check_member(member)
            except ImageError as e:
                return e.reason, e.detail
            if ".." in path.replace("\\", "/").split("/"):
                return "path_escape", f"{ref!r} contains '..'"
            if "\x00" in ref:
                return "invalid_path", f"{ref[:200]!r} contains a NUL byte"
            if self.roots:
                real = os.path.realpath(path)
                if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots):
                    return "path_escape", f"{ref!r} resolves outside {self.roots}"
        return None


class ImageCheck:
    """Missing / unreadable / truncated / corrupt images, decompression bombs, and images below the minimum size.
    ``decode=True`` (the default, what ingest runs): the full shared decode (:func:`aloevision.images.decode_image`);
    ``decode=False``: header plus a cheap verify. The verdict per reference is remembered for the last
    ``CACHE`` references (datasets reuse images across records; a reference's bytes do not change within a run)."""

    name = "image"
    CACHE = 4096

    def __init__(self, min_size: int = 50, max_pixels: int | None = None, decode: bool = True):
        self.min_size, self.max_pixels, self.decode = min_size, max_pixels, decode
        self._seen: OrderedDict[str, tuple[str, str] | tuple[int, int]] = OrderedDict()

    def _verdict(self, ref: str):
        hit = self._seen.get(ref)
        if hit is not None:
            self._seen.move_to_end(ref)
            return hit
        try:
            out = verify_image(ref, self.max_pixels, decode=self.decode)
        except ImageError as e:
            out = (e.reason, e.detail)
        except Exception as e:  # noqa: BLE001  whatever a decoder raises, it is this image's drop
            out = ("corrupt_image", f"{ref}: {type(e).__name__}: {e}")
        self._seen[ref] = out
        if len(self._seen) > self.CACHE:
            self._seen.popitem(last=False)
        return out

    def check(self, s: Sample):
        for ref in s.images:
            v = self._verdict(ref)
            if isinstance(v[0], str):
                return v
            w, h = v
            if w < self.min_size or h < self.min_size:
                return "image_too_small", f"{ref}: {w}x{h} < {self.min_size}x{self.min_size}"
        return None


def structure_rules(max_images: int = 5) -> list[Rule]:
    return [EmptyTurn(), NoAssistantTurn(), AlternatingTurns(), PlaceholderCount(), MaxImages(max_images)]


def default_rules(
    min_size: int = 50, max_images: int = 5, max_pixels: int | None = None, roots: Sequence[str] | None = None,
    decode: bool = True,
) -> list[Rule]:
    """The paper's rules in cheap-first order."""
    return [*structure_rules(max_images), PathEscape(roots), ImageCheck(min_size, max_pixels, decode)]


def check_sample(sample: Sample, rules: Iterable[Rule]) -> Drop | None:
    for rule in rules:
        try:
            verdict = rule.check(sample)
        except Exception as e:  # noqa: BLE001  a rule that cannot judge a sample drops it, with why
            verdict = (getattr(rule, "name", "check_error"), f"{type(e).__name__}: {str(e)[:300]}")
        if verdict is not None:
            reason, detail = verdict
            return Drop(sample.id, sample.source, reason, detail)
    return None


def clean(samples: Iterable[Sample | Drop], rules: Sequence[Rule] | None = None) -> Iterator[Sample | Drop]:
    """Apply ``rules`` to every Sample; Drops from earlier steps pass through unchanged."""
    rules = default_rules() if rules is None else list(rules)
    for item in samples:
        if isinstance(item, Drop):
            yield item
            continue
        yield check_sample(item, rules) or item


# --------------------------------------------------------------------------------------------------- caps


def sample_key(sample_id: str, seed: int) -> int:
    """A stable pseudo-random 64-bit key per (id, seed): the same sample is kept whatever the order or sharding."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{sample_id}".encode(), digest_size=8).digest(), "big")


# ------------------------------------------------------------------------------------------------ counting


class DropCounter:
    """Counts rows in / out per source and drops per (source, reason), keeping a few examples per reason."""

    def __init__(self, examples: int = 3):
        self.max_examples = examples
        self.rows_in: Counter[str] = Counter()
        self.rows_out: Counter[str] = Counter()
        self.drops: dict[str, Counter[str]] = defaultdict(Counter)
        self.examples: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))

    def add(self, item: Sample | Drop) -> None:
        """Count one final outcome (a kept Sample or a Drop)."""
        self.rows_in[item.source] += 1
        if isinstance(item, Drop):
            self.drops[item.source][item.reason] += 1
            ex = self.examples[item.source][item.reason]
            if len(ex) < self.max_examples:
                ex.append({"id": item.id, "detail": item.detail[:300]})
        else:
            self.rows_out[item.source] += 1

    def count(self, items: Iterable[Sample | Drop], drops_only: bool = False) -> Iterator[Sample | Drop]:
        """Pass a stream through, counting it; with ``drops_only`` Drops are consumed and only Samples go on."""
        for item in items:
            self.add(item)
            if not (drops_only and isinstance(item, Drop)):
                yield item

    def merge(self, other: "DropCounter") -> None:
        self.rows_in.update(other.rows_in)
        self.rows_out.update(other.rows_out)
        for src, c in other.drops.items():
            self.drops[src].update(c)
            for reason, ex in other.examples[src].items():
                mine = self.examples[src][reason]
                mine.extend(ex[: max(0, self.max_examples - len(mine))])

    def to_dict(self) -> dict[str, Any]:
        sources = sorted(set(self.rows_in) | set(self.rows_out))
        return {
            s: {
                "rows_in": self.rows_in[s],
                "rows_out": self.rows_out[s],
                "drops": dict(sorted(self.drops[s].items())),
                "examples": {r: list(v) for r, v in sorted(self.examples[s].items())},
            }
            for s in sources
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], examples: int = 3) -> "DropCounter":
        c = cls(examples)
        for s, v in d.items():
            c.rows_in[s] = v["rows_in"]
            c.rows_out[s] = v["rows_out"]
            c.drops[s].update(v.get("drops", {}))
            for r, ex in v.get("examples", {}).items():
                c.examples[s][r] = list(ex)
        return c

    def markdown(self) -> str:
        """Per source: rows in, rows out, and every drop reason with its count and an example."""
        lines = ["| source | rows in | rows out | reason | dropped | example |", "|---|---:|---:|---|---:|---|"]
        for s, v in self.to_dict().items():
            lines.append(f"| {s} | {v['rows_in']} | {v['rows_out']} | | | |")
            for r, n in v["drops"].items():
                ex = v["examples"].get(r) or [{}]
                eg = f"{ex[0].get('id', '')}: {ex[0].get('detail', '')}".replace("|", "\\|")[:120]
                lines.append(f"| | | | {r} | {n} | {eg} |")
        return "\n".join(lines)
