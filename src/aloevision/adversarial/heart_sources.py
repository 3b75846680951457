"""Where HEART base items come from: a small JSONL format any classification / detection evaluation set can be
converted to, and a demo source drawn with the demo scan generator.

One JSON object per line::

    {"id": "chestx/000123", "image": "/abs/path.png", "task": "classification", "question": "...",
     "label": "pneumonia", "labels": ["normal", "pneumonia", "effusion"], "label_aliases": {"normal": ["no finding"]}}
    {"id": "chestx/000124", "image": "/abs/path.png", "task": "detection", "question": "...",
     "boxes": [[x1, y1, x2, y2]], "object": "nodule"}

``image`` is an image reference (``aloevision.images``); a relative path is resolved against the JSONL's folder.
Boxes are on the [0, 1000) grid. A line that cannot become a BaseItem is a Drop with a reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from aloevision.adversarial.attacks import BaseItem, save_png
from aloevision.schema import Drop


def item_to_dict(it: BaseItem) -> dict[str, Any]:
    if not isinstance(it.image, (str, os.PathLike)):
        raise TypeError(f"BaseItem {it.id}: only items whose image is a reference can be written")
    d: dict[str, Any] = {"id": it.id, "image": os.fspath(it.image), "task": it.task, "question": it.question}
    if it.task == "classification":
        d.update(label=it.label, labels=list(it.labels))
    else:
        d.update(boxes=[list(b) for b in it.boxes], object=it.object_name)
    if it.label_aliases:
        d["label_aliases"] = {k: list(v) for k, v in it.label_aliases.items()}
    if it.display:
        d["display"] = dict(it.display)
    return d


def write_base_items(items: Iterable[BaseItem], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(item_to_dict(it), ensure_ascii=False) + "\n")
    return p


def load_base_items(path: str | os.PathLike, source: str) -> tuple[list[BaseItem], list[Drop]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"HEART source {source!r}: {p} not found")
    items: list[BaseItem] = []
    drops: list[Drop] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rid = f"{source}/line{n}"
            try:
                d = json.loads(line)
                rid = str(d.get("id") or rid)
                img = str(d["image"])
                if "::" not in img and not os.path.isabs(img):
                    img = str(p.parent / img)
                items.append(BaseItem(
                    id=rid, image=img, task=d["task"], question=d["question"], source=source,
                    label=d.get("label"), labels=tuple(d.get("labels", ())),
                    boxes=tuple(tuple(b) for b in d.get("boxes", ())),  # type: ignore[arg-type]
                    object_name=d.get("object", "finding"), label_aliases=d.get("label_aliases", {}),
                    display=d.get("display", {}),
                ))
            except json.JSONDecodeError as e:
                drops.append(Drop(rid, source, "malformed_record", f"line {n}: {e}"))
            except (KeyError, TypeError, ValueError) as e:
                drops.append(Drop(rid, source, "malformed_record", f"line {n}: {type(e).__name__}: {e}"))
    return items, drops


def demo_heart_sources(out_dir: str | os.PathLike, n: int = 8, seed: int = 0) -> dict[str, list[BaseItem]]:
    """Two small HEART sources from the demo scan generator: ``demo_modality`` (classification: which of the four
    demo modalities) and ``demo_finding`` (detection: the box of the one bright finding). Images go to
    ``out_dir/base/`` and each source's base items to ``out_dir/<source>.jsonl``."""
    from aloevision.demo.images import make_scan
    from aloevision.demo.vocabulary import MODALITIES, POSITIONS

    out = Path(out_dir)
    cls: list[BaseItem] = []
    det: list[BaseItem] = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        modality = MODALITIES[i % len(MODALITIES)]
        scan = make_scan(rng, modality, size=(128, 112), position=POSITIONS[(i // 2) % len(POSITIONS)])
        path = out / "base" / f"scan{i:04d}.png"
        save_png(scan.image, path)
        cls.append(BaseItem(
            id=f"demo_modality/{i:04d}", image=str(path.resolve()), task="classification", source="demo_modality",
            question=f"Which imaging modality is this? Answer with one of: {', '.join(MODALITIES)}.",
            label=modality, labels=tuple(MODALITIES), label_aliases={"X-ray": ["xray", "radiograph"]},
            display={m: m for m in MODALITIES},
        ))
        det.append(BaseItem(
            id=f"demo_finding/{i:04d}", image=str(path.resolve()), task="detection", source="demo_finding",
            question="Locate the bright finding. Give its bounding box as (x1,y1),(x2,y2) on a 0-1000 grid.",
            boxes=(scan.box_1000(),), object_name="finding",  # type: ignore[arg-type]
        ))
    sources = {"demo_modality": cls, "demo_finding": det}
    for name, items in sources.items():
        write_base_items(items, out / f"{name}.jsonl")
    return sources
