"""The adversarially robust (AR) training set (paper §5.1): every attack type, plus clean items, applied to
FracAtlas only, written as unified Samples (JSONL) with the attacked images in a folder.

The paper gives the total (17.2K samples from FracAtlas' 4,083 images) but not the breakdown. The default
:class:`ArRecipe` reaches 17,254 (17.25K, 0.3% above the quoted 17.2K) on the real FracAtlas numbers (4,083 images,
717 fractured, 922 fracture instances):

* classification, every image x {base, captions, prompt, sycophancy}      4,083 x 4 = 16,332
* detection, one sample per fracture instance (an image with k fractures gets k samples), the attack rotating
  round-robin over {captions, prompt, sycophancy, legends} in id order   922 = 231 + 231 + 230 + 230
                                                                         total 17,254

Every detection sample's answer lists ALL the image's fracture boxes (a complete detection); images with more
fractures simply get more attacked detection samples. `ar_set_counts()` computes the table for any recipe and
any dataset numbers, `python -m aloevision.adversarial.ar_set` prints it with the alternatives considered, and
`build_ar_set` checks that what it wrote matches the table computed from the items it was given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from aloevision.adversarial.attacks import ATTACKS, VARIANTS, AttackConfig, BaseItem, attack_sample, prepare_image
from aloevision.adversarial.matching import valid_box
from aloevision.schema import Drop, Sample

# The real dataset (Sci Data 2023; ../shared/reference/datasets.md §9).
FRACATLAS_IMAGES, FRACATLAS_FRACTURED, FRACATLAS_INSTANCES = 4083, 717, 922
PAPER_AR_SAMPLES = 17_200  # "17.2k samples" (paper §5.1)

FRACATLAS_LABELS = ("fractured", "non_fractured")
FRACATLAS_DISPLAY = {"fractured": "fractured", "non_fractured": "not fractured"}
FRACATLAS_ALIASES = {
    "fractured": ("fracture", "fractured bone", "broken bone"),
    "non_fractured": ("not fractured", "no fracture", "non fractured", "unfractured", "without fracture"),
}
BODY_PARTS = ("hand", "leg", "hip", "shoulder", "mixed")
AR_SOURCE = "fracatlas"


@dataclass
class ArRecipe:
    """Which variants each task gets. detection_unit: "instance" (one detection sample per fracture instance, the
    attack rotating over detection_variants), "image" (one per fractured image, rotating), "all" (every fractured
    image x every detection variant)."""

    classification_variants: tuple[str, ...] = ("base", "captions", "prompt", "sycophancy")
    detection_variants: tuple[str, ...] = ("captions", "prompt", "sycophancy", "legends")
    detection_unit: str = "instance"

    def __post_init__(self) -> None:
        self.classification_variants = tuple(self.classification_variants)
        self.detection_variants = tuple(self.detection_variants)
        for v in (*self.classification_variants, *self.detection_variants):
            if v not in VARIANTS:
                raise ValueError(f"ArRecipe: unknown variant {v!r}; expected one of {VARIANTS}")
        if self.detection_unit not in ("instance", "image", "all"):
            raise ValueError(f"ArRecipe.detection_unit must be instance|image|all, got {self.detection_unit!r}")
        if self.detection_unit != "all" and self.detection_variants == ():
            raise ValueError("ArRecipe: rotating detection units need at least one detection variant")
        covered = set(self.classification_variants) | set(self.detection_variants)
        missing = [a for a in ATTACKS if a not in covered]
        if missing:  # the paper applies ALL attack types
            raise ValueError(f"ArRecipe: attacks {missing} are in neither task's variants")


def ar_set_counts(
    n_images: int = FRACATLAS_IMAGES,
    n_fractured: int = FRACATLAS_FRACTURED,
    n_instances: int = FRACATLAS_INSTANCES,
    recipe: ArRecipe | None = None,
) -> dict[str, int]:
    """Samples per "task/variant" (insertion order = table order) and "total", from the dataset's numbers."""
    r = recipe or ArRecipe()
    table = {f"classification/{v}": n_images for v in r.classification_variants}
    dv = r.detection_variants
    if r.detection_unit == "all":
        table.update({f"detection/{v}": n_fractured for v in dv})
    else:
        n = n_instances if r.detection_unit == "instance" else n_fractured
        table.update({f"detection/{v}": n // len(dv) + (1 if i < n % len(dv) else 0) for i, v in enumerate(dv)})
    table["total"] = sum(table.values())
    return table


def format_counts(table: Mapping[str, int], target: int | None = PAPER_AR_SAMPLES) -> str:
    width = max(len(k) for k in table)
    lines = [f"{'task/variant':<{width}}  samples", f"{'-' * width}  -------"]
    lines += [f"{k:<{width}}  {v:>7,}" for k, v in table.items()]
    if target:
        t = table["total"]
        lines.append(f"{'paper':<{width}}  {target:>7,}  (total is {100 * (t - target) / target:+.1f}%)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ base items


def _body_part(meta: Mapping[str, Any]) -> str | None:
    if isinstance(meta.get("body_part"), str) and meta["body_part"]:
        return meta["body_part"]
    parts = meta.get("body_parts")
    if isinstance(parts, (list, tuple)) and len(parts) == 1:
        return str(parts[0])
    flags = meta.get("body_part_flags") if isinstance(meta.get("body_part_flags"), Mapping) else meta
    on = [p for p in BODY_PARTS if bool(flags.get(p))]
    return on[0] if len(on) == 1 and on[0] != "mixed" else None


def fracatlas_questions(part: str | None) -> tuple[str, str]:
    where = f"this {part} radiograph" if part else "this radiograph"
    cls_q = f"Is there a bone fracture in {where}? Answer 'fractured' or 'not fractured'."
    det_q = (f"Locate every bone fracture in {where}. Give each bounding box as (x1,y1),(x2,y2) on a 0-1000 grid.")
    return cls_q, det_q


def base_items_from_samples(
    samples: Iterable[Sample], source: str = AR_SOURCE
) -> tuple[list[BaseItem], list[Drop]]:
    """FracAtlas-shaped Samples -> classification items (every image) + detection items (fractured images with
    boxes). Reads ``meta["label"]`` (fractured | non_fractured), ``meta["boxes"]`` ([[x1,y1,x2,y2]] on the 1000
    grid) and body-part flags (``meta["body_part"]``, ``meta["body_parts"]`` or boolean hand/leg/hip/shoulder/mixed
    keys, optionally under ``meta["body_part_flags"]``). What cannot be used becomes a Drop with a reason."""
    items: list[BaseItem] = []
    drops: list[Drop] = []
    for s in samples:
        label = s.meta.get("label")
        if label not in FRACATLAS_LABELS:
            drops.append(Drop(s.id, s.source, "unknown_label", f"meta['label']={label!r}"))
            continue
        if len(s.images) != 1:
            drops.append(Drop(s.id, s.source, "not_one_image", f"{len(s.images)} images"))
            continue
        cls_q, det_q = fracatlas_questions(_body_part(s.meta))
        common = dict(source=source, label_aliases=FRACATLAS_ALIASES, display=FRACATLAS_DISPLAY,
                      meta={"sample_id": s.id})
        items.append(BaseItem(id=s.id, image=s.images[0], task="classification", question=cls_q, label=label,
                              labels=FRACATLAS_LABELS, **common))
        raw = s.meta.get("boxes") or []
        if label == "non_fractured":
            if raw:
                drops.append(Drop(s.id, s.source, "boxes_on_non_fractured", f"{len(raw)} boxes ignored"))
            continue
        try:
            boxes = tuple(tuple(int(round(float(v))) for v in b) for b in raw)
        except (TypeError, ValueError):
            boxes = ()
            drops.append(Drop(s.id, s.source, "invalid_box", f"unreadable boxes {raw!r}"))
            continue
        bad = [b for b in boxes if not valid_box(b)]
        if bad or not boxes:
            reason = "invalid_box" if bad else "fractured_without_boxes"
            drops.append(Drop(s.id, s.source, reason, f"boxes {list(boxes)}; detection item not built"))
            continue
        items.append(BaseItem(id=f"{s.id}#det", image=s.images[0], task="detection", question=det_q,
                              boxes=boxes, object_name="fracture", **common))  # type: ignore[arg-type]
    return items, drops


# ---------------------------------------------------------------------------------------------------- build


def plan_variants(items: Sequence[BaseItem], recipe: ArRecipe) -> list[tuple[BaseItem, str, int]]:
    """(item, variant, k) for every sample to build, k numbering repeated variants of the same item."""
    plan: list[tuple[BaseItem, str, int]] = []
    cls = sorted((i for i in items if i.task == "classification"), key=lambda i: i.id)
    det = sorted((i for i in items if i.task == "detection"), key=lambda i: i.id)
    for it in cls:
        plan += [(it, v, 0) for v in recipe.classification_variants]
    dv = recipe.detection_variants
    cursor = 0
    for it in det:
        if recipe.detection_unit == "all":
            plan += [(it, v, 0) for v in dv]
            continue
        n = len(it.boxes) if recipe.detection_unit == "instance" else 1
        seen: dict[str, int] = {}
        for _ in range(n):
            v = dv[cursor % len(dv)]
            cursor += 1
            plan.append((it, v, seen.get(v, 0)))
            seen[v] = seen.get(v, 0) + 1
    return plan


@dataclass
class ArSetResult:
    jsonl: Path
    image_dir: Path
    counts: dict[str, int]
    expected: dict[str, int]
    drops: list[Drop] = field(default_factory=list)


def build_ar_set(
    items: Sequence[BaseItem],
    out_dir: str | os.PathLike,
    recipe: ArRecipe | None = None,
    cfg: AttackConfig | None = None,
    drops: Sequence[Drop] = (),
    source: str = "fracatlas_ar",
    progress: bool = False,
) -> ArSetResult:
    """Write ``out_dir/ar_set.jsonl`` (one Sample per line), ``out_dir/images/``, ``out_dir/drops.jsonl`` and
    ``out_dir/counts.json``. Streams: one image in memory at a time. ``progress``: a tqdm bar over the samples."""
    recipe = recipe or ArRecipe()
    cfg = cfg or AttackConfig()
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_variants(items, recipe)
    counts = {k: 0 for k in ar_set_counts(0, 0, 0, recipe) if k != "total"}
    drops = list(drops)
    tmp = out / f".ar_set.jsonl.{os.getpid()}.tmp"
    clean_images: dict[str, str] = {}  # unattacked images written once per item
    prepared: tuple[str, Any] | None = None  # the last prepared image, reused by the item's other variants
    steps: Iterable[tuple[BaseItem, str, int]] = plan
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(plan, desc="AR set", unit=" samples", leave=False)
    with open(tmp, "w", encoding="utf-8") as f:
        for it, v, k in steps:
            try:
                if prepared is None or prepared[0] != it.id:
                    prepared = (it.id, prepare_image(it.image, cfg))
                sid = f"{source}/{it.id}/{v}" + (f"/{k}" if k else "")
                s = attack_sample(it, v, image_dir, source=source, cfg=cfg, sample_id=sid, image=prepared[1],
                                  extra_meta={"ar_variant_index": k}, clean_images=clean_images)
            except Exception as e:  # an unreadable image is counted, never fatal for the whole set
                from aloevision.images import ImageError

                if not isinstance(e, (ImageError, OSError, ValueError)):
                    raise
                reason = e.reason if isinstance(e, ImageError) else "attack_failed"
                drops.append(Drop(f"{source}/{it.id}/{v}", it.source, reason, str(e)[:300]))
                prepared = None
                continue
            f.write(s.to_json() + "\n")
            counts[f"{it.task}/{v}"] += 1
    os.replace(tmp, out / "ar_set.jsonl")
    counts["total"] = sum(counts.values())
    n_cls = len({i.id for i in items if i.task == "classification"})
    det = [i for i in items if i.task == "detection"]
    expected = ar_set_counts(n_cls, len(det), sum(len(i.boxes) for i in det), recipe)
    with open(out / "drops.jsonl", "w", encoding="utf-8") as f:
        for d in drops:
            f.write(json.dumps(d.to_dict()) + "\n")
    (out / "counts.json").write_text(json.dumps({"counts": counts, "expected": expected,
                                                  "drops": len(drops)}, indent=1))
    return ArSetResult(out / "ar_set.jsonl", image_dir, counts, expected, drops)


def _alternatives() -> list[tuple[str, ArRecipe]]:
    return [
        ("default: cls x {base,cap,pmt,syc} + det per instance, rotating {cap,pmt,syc,leg}", ArRecipe()),
        ("cls x {base,cap,pmt,syc} + det per fractured image, rotating", ArRecipe(detection_unit="image")),
        ("cls x {base,cap,pmt,syc} + det: every fractured image x {cap,pmt,syc,leg}", ArRecipe(detection_unit="all")),
        ("cls x {cap,pmt,syc} + det: every fractured image x {base,cap,pmt,syc,leg}",
         ArRecipe(("captions", "prompt", "sycophancy"), ("base", *ATTACKS), "all")),
    ]


def main() -> None:
    print(f"FracAtlas: {FRACATLAS_IMAGES:,} images, {FRACATLAS_FRACTURED:,} fractured, "
          f"{FRACATLAS_INSTANCES:,} fracture instances; paper: {PAPER_AR_SAMPLES:,} AR samples\n")
    print(format_counts(ar_set_counts()))
    print("\nalternatives (total, difference from 17.2K):")
    for name, r in _alternatives():
        t = ar_set_counts(recipe=r)["total"]
        print(f"  {t:>6,}  {100 * (t - PAPER_AR_SAMPLES) / PAPER_AR_SAMPLES:+6.1f}%  {name}")


if __name__ == "__main__":
    main()
