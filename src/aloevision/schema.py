"""The unified sample every stage passes along, and the drop record for what a stage removes.

One row per conversation. `messages` is exactly what TRL's vision SFT consumes: a list of turns, each
`{"role": "system" | "user" | "assistant", "content": [part, ...]}` where a part is `{"type": "text", "text": str}`
or `{"type": "image"}`. `images` holds one image reference per image part, in placeholder order (see
`aloevision.images` for the reference format). Boxes live inside the text in Qwen2-VL format
`<|box_start|>(x1,y1),(x2,y2)<|box_end|>` on the [0, 1000) grid.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Domain = Literal["medical", "general"]
Modality = Literal["multimodal", "text"]
ROLES = ("system", "user", "assistant")


@dataclass
class Sample:
    id: str  # source-prefixed and stable across runs, e.g. "pubmedvision/Alignment_VQA_701"
    source: str
    domain: str  # medical | general
    modality: str  # multimodal | text
    messages: list[dict[str, Any]]
    images: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def category(self) -> str:
        """The mixture category this sample counts towards, e.g. "medical_multimodal"."""
        return f"{self.domain}_{self.modality}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def image_part_count(self) -> int:
        return sum(1 for m in self.messages for p in m["content"] if p.get("type") == "image")

    def texts(self, role: str | None = None) -> list[str]:
        """All text parts (of one role, if given), in order."""
        return [
            p["text"]
            for m in self.messages
            if role is None or m["role"] == role
            for p in m["content"]
            if p.get("type") == "text"
        ]


@dataclass
class Drop:
    """A sample a stage removed, with a machine-readable reason (counted in the stage report)."""

    id: str
    source: str
    reason: str  # snake_case, e.g. "image_too_small", "corrupt_image", "too_many_images"
    detail: str = ""

    def __post_init__(self) -> None:
        # Details quote hostile input (file names with undecodable bytes): keep them writable as UTF-8 everywhere.
        if not self.detail.isascii():
            self.detail = self.detail.encode("utf-8", "backslashreplace").decode("utf-8")
        if not self.id.isascii():
            self.id = self.id.encode("utf-8", "backslashreplace").decode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part() -> dict[str, Any]:
    return {"type": "image"}


def turn(role: str, *parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": role, "content": list(parts)}
