"""FracAtlas (figshare 22363012), musculoskeletal X-rays with fracture boxes; used by the adversarial stage.

Native layout (default ``files`` / ``images``)::

    <path>/dataset.csv                               image_id, hand, leg, hip, shoulder, mixed, [hardware,
                                                     multiscan, fractured, fracture_count, frontal, lateral, oblique]
    <path>/images/Fractured/IMG0000019.jpg
    <path>/images/Non_fractured/IMG0000000.jpg
    <path>/Annotations/COCO JSON/*.json              {"images": [{id, file_name, width, height}],
                                                      "annotations": [{image_id, bbox: [x, y, w, h]}]}
    <path>/Annotations/PASCAL VOC/IMG0000019.xml     <size><width/><height/></size><object><bndbox>xmin..ymax
    <path>/Annotations/YOLO/IMG0000019.txt           "class cx cy w h" per line, normalised

``options.annotations``: ``auto`` (COCO if present, else VOC, else YOLO) | ``coco`` | ``voc`` | ``yolo``.
Boxes go to the 1000 grid (:mod:`aloevision.sources.boxes`). The sample is a fracture question with a grounded
answer (``options.question``, ``options.answer_fractured`` with ``{boxes}``, ``options.answer_normal``).
``meta`` (the adversarial stage reads it): ``label`` fractured | non_fractured (the csv ``fractured`` column, else
the image folder, else whether boxes exist), ``boxes`` [[x1, y1, x2, y2]] on the grid, body-part flags
``hand/leg/hip/shoulder/mixed`` and the other csv columns as ints, ``width``/``height``.
"""

from __future__ import annotations

import glob
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from aloevision.images import image_size, is_regular
from aloevision.schema import Drop, Sample, image_part, text_part
from aloevision.sources.base import RecordError, SourceContext, read_file, run_adapter
from aloevision.sources.boxes import BoxError, coco_box, format_box, format_ref, voc_box, yolo_box

DEFAULT_FILES = ["dataset.csv"]
DEFAULT_IMAGES = "images"
COCO_DIR, VOC_DIR, YOLO_DIR = "Annotations/COCO JSON", "Annotations/PASCAL VOC", "Annotations/YOLO"
BODY_PARTS = ("hand", "leg", "hip", "shoulder", "mixed")
QUESTION = "Is there a fracture in this X-ray? If so, where is it?"
ANSWER_FRACTURED = "Yes, there is a fracture: {boxes}."
ANSWER_NORMAL = "No, there is no visible fracture in this X-ray."


class Annotations:
    def __init__(self, root: Path, kind: str):
        if kind == "auto":
            kind = next((k for k, d in (("coco", COCO_DIR), ("voc", VOC_DIR), ("yolo", YOLO_DIR))
                         if (root / d).is_dir()), "none")
        if kind not in ("coco", "voc", "yolo", "none"):
            raise ValueError(f"fracatlas options.annotations={kind!r}: use auto, coco, voc or yolo")
        self.root, self.kind = root, kind
        self.coco: dict[str, tuple[int, int, list]] = {}
        self.broken: dict[str, str] = {}  # COCO files that could not be read: every record then drops as bad_box
        if kind == "coco":
            for f in sorted(glob.glob(str(root / COCO_DIR / "*.json"))):
                try:
                    data = json.loads(_read_small(Path(f), 1 << 30))
                    if not isinstance(data, dict):
                        raise ValueError(f"top level is {type(data).__name__}, not an object")
                    self._add_coco(data)
                except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
                    self.broken[Path(f).name] = f"{type(e).__name__}: {str(e)[:200]}"

    def _add_coco(self, data: dict) -> None:
        by_id = {im["id"]: im for im in data.get("images", [])}
        for im in by_id.values():
            self.coco.setdefault(os.path.basename(im["file_name"]), (im.get("width"), im.get("height"), []))
        for a in data.get("annotations", []):
            im = by_id.get(a.get("image_id"))
            if im is not None and a.get("bbox"):
                self.coco[os.path.basename(im["file_name"])][2].append(a["bbox"])

    def boxes(self, name: str, size) -> tuple[list[tuple[int, int, int, int]], tuple[int, int] | None]:
        """Grid boxes for image ``name``; ``size()`` gives (w, h) from the image header when the file lacks it."""
        stem = Path(name).stem
        if self.broken:
            raise RecordError("bad_box", f"annotation file(s) unreadable: {self.broken}")
        try:
            if self.kind == "coco":
                w, h, raw = self.coco.get(name, (None, None, []))
                if raw and not (w and h):
                    w, h = size()
                return [coco_box(b, w, h) for b in raw], (w, h) if w else None
            if self.kind == "voc":
                f = self.root / VOC_DIR / f"{stem}.xml"
                if not f.exists():
                    return [], None
                doc = ET.fromstring(_read_small(f, 16 << 20))
                w = int(float(doc.findtext("size/width") or 0))
                h = int(float(doc.findtext("size/height") or 0))
                if not (w and h):
                    w, h = size()
                out = []
                for bb in doc.iter("bndbox"):
                    v = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                    out.append(voc_box(*v, w, h))
                return out, (w, h)
            if self.kind == "yolo":
                f = self.root / YOLO_DIR / f"{stem}.txt"
                if not f.exists():
                    return [], None
                out = []
                for line in _read_small(f, 16 << 20).splitlines():
                    if line.strip():
                        vals = line.split()
                        if len(vals) < 5:
                            raise BoxError(f"YOLO line {line!r} has fewer than 5 numbers")
                        out.append(yolo_box(*(float(v) for v in vals[1:5])))
                return out, None
        except (BoxError, ValueError, TypeError, OSError, ET.ParseError) as e:
            raise RecordError("bad_box", f"{name}: {e}") from None
        return [], None


def _read_small(path: Path, limit: int) -> str:
    """A text annotation file, refused (OSError) when it is not a regular file or larger than ``limit`` bytes: a FIFO
    never blocks, a huge file is never read."""
    if not is_regular(path):
        raise OSError(f"{path.name} is not a regular file")
    if path.stat().st_size > limit:
        raise OSError(f"{path.name} is over {limit} bytes")
    return path.read_bytes().decode("utf-8", errors="strict")


def _flag(v) -> int | str:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return v


def read(src) -> Iterator[Sample | Drop]:
    ctx = SourceContext.from_config(src, DEFAULT_FILES, DEFAULT_IMAGES)
    ann = Annotations(ctx.root, str(ctx.options.get("annotations", "auto")))
    question = ctx.options.get("question", QUESTION)
    ans_frac = ctx.options.get("answer_fractured", ANSWER_FRACTURED)
    ans_norm = ctx.options.get("answer_normal", ANSWER_NORMAL)
    csv_path = ctx.root / ctx.files[0] if not Path(ctx.path).is_file() else Path(ctx.path)
    if not csv_path.exists():
        raise FileNotFoundError(f"source {ctx.name}: {csv_path} not found (FracAtlas ships dataset.csv)")

    def convert(ctx: SourceContext, label: str, i: int, rec: dict) -> Sample | Drop:
        name = str(rec.get("image_id") or "").strip()
        if not name:
            raise RecordError("malformed_record", "no image_id")
        if not Path(name).suffix:
            name += ".jpg"
        ref = ctx.locator().locate(name)  # found by name under images/Fractured or images/Non_fractured
        boxes, wh = ann.boxes(name, lambda: image_size(ref))
        folder_label = ("non_fractured" if "non_fractured" in ref.lower()
                        else "fractured" if "fractured" in ref.lower() else None)
        if rec.get("fractured") not in (None, ""):
            label_ = "fractured" if _flag(rec["fractured"]) == 1 else "non_fractured"
        else:
            label_ = folder_label or ("fractured" if boxes else "non_fractured")
        if label_ == "fractured" and boxes:
            answer = ans_frac.format(boxes=", ".join(format_ref("fracture") + format_box(b) for b in boxes))
        elif label_ == "fractured":
            answer = ctx.options.get("answer_fractured_nobox", "Yes, there is a fracture.")
        else:
            answer = ans_norm
        meta = {"label": label_, "boxes": [list(b) for b in boxes], "file_name": name}
        for k, v in rec.items():
            if k not in ("image_id", "id"):
                meta[k] = _flag(v)
        for k in BODY_PARTS:
            meta.setdefault(k, 0)
        if wh:
            meta["width"], meta["height"] = wh
        messages = [
            {"role": "user", "content": [image_part(), text_part(question)]},
            {"role": "assistant", "content": [text_part(answer)]},
        ]
        return ctx.sample(Path(name).stem, messages, [ref], meta)

    def with_id(r):  # drops and samples share the id <source>/<image stem>
        if isinstance(r, dict) and r.get("image_id"):
            return {"id": Path(str(r["image_id"]).strip()).stem, **r}
        return r

    records = ((csv_path.stem, i, with_id(r)) for i, r in enumerate(read_file(csv_path)))
    return run_adapter(ctx, records, convert)
