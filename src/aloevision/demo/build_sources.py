"""Demo versions of every training source, each in its NATIVE record format and file layout (datasets.md §1-9),
under `<demo>/<name>/` (conf/source/<name>.yaml points at `${paths.data_dir}/<name>`). Defects that later stages
must find are planted here and recorded in PLANTED.json.

Layouts (relative to `<demo>/<name>/`; they follow the DEFAULT_FILES / DEFAULT_IMAGES of the adapters):
  pubmedvision/  PubMedVision_Alignment_VQA.json; images_0.zip, images_1.zip (members `images/pmc_<n>_<k>.jpg`)
  medmax/        train.jsonl (`text`: `<image>`, MEDMAX_SEPARATOR between prompt and answer); images.tar.gz.aa/.ab
  mecovqa/       MeCoVQA_Complex+Region_VQA_train+Public_VQA.json, MeCoVQA_Grounding_train.json;
                 SAMed2Dv1/images/*.png, SAMed2Dv1/masks/*.png, SAMed2Dv1/SAMed2D_v1.json
  medgrit/       MedGRIT_demo_train_chatlm_img_coord.json ([question, answer] pairs); images/<id>.png
  medtrinity/    25M_full/train-00000-of-00001.parquet (file_name, caption, source, id);
                 25M_accessible/shard_00000.tar.zst
  cambrian/      jsons/Cambrian10M.jsonl; coco.tar.gz, pathvqa.tar.gz (members `coco/...`, `pathvqa/...`)
  aloe_text/     aloe_beta_medical_collection.json (medical; the demo mixture's `aloe_text`)
  aloe_general/  general_collection_demo.json (Aloe-Beta-General-Collection-like; not in the demo mixture)
  magpie/        data/train-00000-of-00001.parquet (`conversation`);
                 top_300k_shorter_conversations/train-00000-of-00001.parquet (`messages`)
  fracatlas/     images/Fractured|Non_fractured/IMG*.jpg; Annotations/COCO JSON/COCO_fracture_masks.json,
                 Annotations/PASCAL VOC/IMG*.xml, Annotations/YOLO/IMG*.txt; dataset.csv
"""

from __future__ import annotations

import io
import struct
import zlib

import imagehash
import numpy as np
from PIL import Image

from aloevision.demo.archives import write_split, write_tar_gz, write_tar_zst, write_zip
from aloevision.demo.context import MIN_EVAL_DISTANCE, BuildContext
from aloevision.demo.images import encode, in_mode, make_fracture_xray, make_photo
from aloevision.demo.qa import (
    MODALITY_LONG, MODALITY_STEM, TEXT_FACTS, Scene, article, caption, modality_questions, long_caption, qa_pairs,
    random_scene,
)
from aloevision.demo.vocabulary import BODY_PARTS, COLORS, GENERAL_TOPICS, SHAPES

# How a MedMax `text` separates the prompt from the response. The real separator is token 8710 (`<reserved08706>`)
# in Chameleon token space; how it is spelled inside `text` is UNCERTAIN (datasets.md §2) - the demo uses the literal.
MEDMAX_SEPARATOR = "<reserved08706>"
# Pillow refuses images above 2 x MAX_IMAGE_PIXELS at open(); the planted bomb declares more than that.
BOMB_SIZE = (20000, 20000)


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def corrupt_bytes(rng: np.random.Generator) -> bytes:
    """Not an image at all: random bytes behind a .jpg name."""
    return b"NOTANIMAGE" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes()


def truncated_jpeg(img: Image.Image) -> bytes:
    """A JPEG cut in half: the header opens, decoding the pixels fails."""
    data = encode(img, "JPEG", quality=90)
    return data[: len(data) // 2]


def bomb_png(size: tuple[int, int] = BOMB_SIZE) -> bytes:
    """A tiny PNG whose header declares a huge 8-bit greyscale image (a decompression bomb for Pillow's check)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size[0], size[1], 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (size[0] + 1) * 4)  # a few rows only; nobody should decode it
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


# Extra records per source that ask the modality questions of the demo benchmarks (open word, fixed-order MCQ, yes/no;
# aloevision.demo.qa.modality_questions) about a FRESH scan each, appended after the original rows so every planted
# defect keeps its row. PubMedVision, MedMax and Cambrian (PathVQA-like rows) ask one question per record; MeCoVQA and
# Med-GRIT ask all three about the image. The bulk is Cambrian's: ~1,900 distinct scans in all (with a few hundred the
# tiny model memorised its training images instead of learning to read the modality; docs/benchmarks.md "Demo run"),
# and the demo filter does not score Cambrian (the tiny model's perplexity pass costs ~40-100 ms a sample on 2 cores).
N_CLOSED = {"pubmedvision": 10, "medmax": 10, "mecovqa": 60, "medgrit": 60, "cambrian": 1800}
# The first LEAK_ITEMS CareQA-Vision-like closed items planted verbatim (image bytes, prompt, answer) into MedMax,
# each LEAK_COPIES times (as a benchmark image re-shared by several datasets): `leakage=off` trains on them,
# `leakage=phash` removes them. PLANTED.json lists every copy (kind eval_leak_item); eval.leaked_items scores exactly
# these items. With 24 items x 4 copies (x 3 epochs) the tiny model barely memorised them: few items, many copies.
LEAK_ITEMS = 12
LEAK_COPIES = 20


def far_scene(ctx: BuildContext, rng: np.random.Generator, **kw) -> Scene:
    """A random scene for an original record, redrawn until its pixels are pHash-far from every evaluation image
    (margin of 2 bits over MIN_EVAL_DISTANCE for the JPEG/PNG encoding and mode changes applied later): with the
    faint shading, a few of ~200 scans landed 4-8 bits from an evaluation scan of the same modality."""
    for _ in range(50):
        s = random_scene(rng, **kw)
        if ctx.far_from_eval(s.scan.image, MIN_EVAL_DISTANCE + 2):
            return s
    raise RuntimeError("demo generator: 50 scenes in a row were pHash-near an evaluation image")


def closed_scene(ctx: BuildContext, rng: np.random.Generator, fmt: str = "JPEG", **kw) -> tuple[Scene, bytes]:
    """A random scene and its encoded bytes, redrawn until it is pHash-far from every evaluation image."""
    for _ in range(50):
        s = random_scene(rng, **kw)
        data = encode(s.scan.image, fmt, quality=90)
        if ctx.far_from_eval(Image.open(io.BytesIO(data))):
            return s, data
    raise RuntimeError("demo generator: 50 scenes in a row were pHash-near an evaluation image")


# ----------------------------------------------------------------------------------------------------- PubMedVision
def build_pubmedvision(ctx: BuildContext, n: int = 30) -> None:
    base = "pubmedvision"
    records, zips = [], [{}, {}]
    for i in range(n):
        rng = ctx.rng("pubmedvision", i)
        rid = 700 + i
        n_img = 6 if i == 5 else (1 + int(rng.integers(3)) if i % 4 == 0 else 1)
        scenes = [far_scene(ctx, rng, size=(_pick(rng, [112, 128, 160]), 128)) for _ in range(n_img)]
        paths = [f"images/pmc_{rid}_{k}.jpg" for k in range(n_img)]
        for k, (p, s) in enumerate(zip(paths, scenes)):
            img = s.scan.image if k % 2 == 0 else s.scan.image.convert("RGB")
            zips[i % 2][p] = encode(img, "JPEG", quality=90)
        s0 = scenes[0]
        q, a = qa_pairs(s0)[int(rng.integers(len(qa_pairs(s0))))]
        if n_img > 1:
            q, a = "Write a description of the given images.", " ".join(caption(s) for s in scenes)
        rec = {
            "id": f"Alignment_VQA_{rid}",
            "image": paths,
            "body_part": _pick(rng, BODY_PARTS),
            "modality": MODALITY_LONG[s0.modality],
            "conversations": _conv(q, a),
        }
        records.append(rec)
        where = {"source": "pubmedvision", "record": rec["id"], "row": i,
                 "data_file": f"{base}/PubMedVision_Alignment_VQA.json"}
        if n_img == 6:
            ctx.plant("too_many_images", **where, n_images=6, detail="6 images > the 5-image limit")
        if i == 3:  # corrupt member
            zips[i % 2][paths[0]] = corrupt_bytes(rng)
            ctx.plant("corrupt_image", **where, file=f"{base}/images_{i % 2}.zip", member=paths[0])
        if i == 7:  # referenced in JSON, absent from every zip (the known PubMedVision issue)
            del zips[i % 2][paths[0]]
            ctx.plant("missing_image", **where, member=paths[0])
        if i == 9:
            rec["conversations"] = _conv(
                "What imaging modality is this?",
                "Photosynthesis is how plants turn sunlight, water and air into sugar and oxygen.",
            )
            ctx.plant("incoherent_qa", **where, detail="answer is about photosynthesis, not the image")
        if i == 11:  # a CMYK JPEG (printing-press colour space shows up in PMC figures)
            zips[i % 2][paths[0]] = encode(in_mode(s0.scan.image, "CMYK"), "JPEG", quality=90)
            ctx.plant("image_mode", **where, mode="CMYK", member=paths[0])
    for i in range(n, n + N_CLOSED["pubmedvision"]):  # closed VQA records (one question each, as PubMedVision)
        rng = ctx.rng("pubmedvision", i)
        rid = 700 + i
        s, data = closed_scene(ctx, rng)
        path = f"images/pmc_{rid}_0.jpg"
        zips[i % 2][path] = data
        q, a = modality_questions(s, rng)[0]
        records.append({"id": f"Alignment_VQA_{rid}", "image": [path], "body_part": _pick(rng, BODY_PARTS),
                        "modality": MODALITY_LONG[s.modality], "conversations": _conv(q, a)})
    ctx.write_json(f"{base}/PubMedVision_Alignment_VQA.json", records)
    for k, members in enumerate(zips):
        write_zip(ctx.path(f"{base}/images_{k}.zip"), members)
    ctx.register_source("pubmedvision", path=base, files=["PubMedVision_Alignment_VQA.json"], images="images_*.zip")


# ----------------------------------------------------------------------------------------------------------- MedMax
def build_medmax(ctx: BuildContext, n: int = 30) -> None:
    base = "medmax"
    rows, members = [], {}
    tasks = ["VQA", "Image Captioning", "Visual Chat", "Report Understanding"]
    sources = ["pmc_vqa", "slake", "quilt", "mimic_cxr"]
    leak = ctx.eval_images["slake/3"]  # MedMax ships SLAKE images: the exact-bytes leak
    for i in range(n):
        rng = ctx.rng("medmax", i)
        s = far_scene(ctx, rng, size=(128, _pick(rng, [112, 128])))
        task = tasks[i % len(tasks)]
        src = sources[i % 3]
        img_path = f"images/{src}/{src}_{i:05d}.jpg"
        q, a = qa_pairs(s)[int(rng.integers(len(qa_pairs(s))))]
        if task == "Image Captioning":
            q, a = "Describe the image.", caption(s)
        text = f"<image>\n{q}{MEDMAX_SEPARATOR}{a}"
        row = {"text": text, "tokens": [int(t) for t in rng.integers(4, 8192, 6)], "image_path": img_path,
               "task": task, "source": src, "credential": "no"}
        data = encode(s.scan.image, "JPEG", quality=88)
        where = {"source": "medmax", "row": i, "record": img_path, "data_file": f"{base}/train.jsonl"}
        if i == 4:
            data = truncated_jpeg(s.scan.image)
            ctx.plant("truncated_image", **where, file=f"{base}/images.tar.gz.aa+ab", member=img_path)
        if i == 6:
            data = leak["bytes"]
            row["text"] = f"<image>\nWhich modality is used to take this image?{MEDMAX_SEPARATOR}It is a scan."
            row["source"] = "slake"
            ctx.plant("eval_leak_exact", **where, file=f"{base}/images.tar.gz.aa+ab", member=img_path,
                      eval_benchmark=leak["benchmark"],
                      eval_id=leak["id"], eval_file=leak["file"], phash_distance=0)
        if i in (10, 11):  # generation tasks: the answer is an image -> understanding-only SFT must drop them
            row["task"] = "Image Generation" if i == 10 else "Multimodal Generation"
            row["text"] = f"Generate {article(s.modality)} image of the {s.organ}.{MEDMAX_SEPARATOR}<image>"
            ctx.plant("generation_task", **where, task=row["task"])
        if i == 12:  # credentialed row: no image or tokens shipped
            row.update(image_path=None, tokens=[], credential="yes", source="mimic_cxr")
            ctx.plant("credential_no_image", **where, detail="credential=yes, image_path null")
            data = None
        if data is not None:
            members[img_path] = data
        rows.append(row)
    for i in range(n, n + N_CLOSED["medmax"]):  # closed VQA rows (PMC-VQA / SLAKE style, one question each)
        rng = ctx.rng("medmax", i)
        s, data = closed_scene(ctx, rng)
        src = ("pmc_vqa", "slake")[i % 2]
        img_path = f"images/{src}/{src}_{i:05d}.jpg"
        q, a = modality_questions(s, rng)[0]
        members[img_path] = data
        rows.append({"text": f"<image>\n{q}{MEDMAX_SEPARATOR}{a}", "tokens": [int(t) for t in rng.integers(4, 8192, 6)],
                     "image_path": img_path, "task": "VQA", "source": src, "credential": "no"})
    for item in ctx.eval_questions.get("careqa_vision_mcq", [])[:LEAK_ITEMS]:  # planted verbatim evaluation items
        for c in range(LEAK_COPIES):
            img_path = f"images/slake/careqa_{item['id']}_{c}.jpg"
            members[img_path] = item["bytes"]
            ctx.plant("eval_leak_item", source="medmax", row=len(rows), record=img_path,
                      data_file=f"{base}/train.jsonl", file=f"{base}/images.tar.gz.aa+ab", member=img_path,
                      eval_benchmark="careqa_vision_mcq",
                      eval_id=item["id"], eval_items=[{"benchmark": "careqa_vision_mcq", "id": item["id"]}],
                      phash_distance=0, detail=f"copy {c + 1} of {LEAK_COPIES}: image, question and answer")
            rows.append({"text": f"<image>\n{item['prompt']}{MEDMAX_SEPARATOR}{item['answer']}", "tokens": [],
                         "image_path": img_path, "task": "VQA", "source": "slake", "credential": "no"})
    ctx.write_jsonl(f"{base}/train.jsonl", rows)
    tgz = write_tar_gz(ctx.root / f"{base}/images.tar.gz.tmp", members)
    (ctx.root / f"{base}/images.tar.gz.tmp").unlink()
    write_split(ctx.root / f"{base}/images.tar.gz", tgz, parts=2)
    ctx.register_source("medmax", path=base, files=["train.jsonl"], images="images.tar.gz.a*",
                        options={"separator": MEDMAX_SEPARATOR})


# ---------------------------------------------------------------------------------------------------------- MeCoVQA
def _mask_png(size: tuple[int, int], box: tuple[int, int, int, int] | None) -> bytes:
    w, h = size
    m = np.zeros((h, w), np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        m[y1:y2, x1:x2] = 255
    return encode(Image.fromarray(m), "PNG")


def build_mecovqa(ctx: BuildContext, n: int = 30) -> None:
    base = "mecovqa"
    vqa, grounding, index = [], [], {}
    modes = {1: "L", 2: "I;16", 3: "RGB", 4: "P", 5: "LA", 6: "RGBA"}
    for i in range(n):
        rng = ctx.rng("mecovqa", i)
        s = far_scene(ctx, rng, size=(_pick(rng, [96, 128]), 128), p_normal=0.0)
        stem = f"{MODALITY_STEM[s.modality]}_{i:05d}"
        img_rel, mask_rel = f"images/{stem}.png", f"masks/{stem}_{s.finding}.png"
        img = s.scan.image
        kind = ("grounding", "region", "complex")[i % 3]
        data_file = f"{base}/" + ("MeCoVQA_Grounding_train.json" if kind == "grounding" else
                                  "MeCoVQA_Complex+Region_VQA_train+Public_VQA.json")
        where = {"source": "mecovqa", "record": f"{kind}_{i}", "data_file": data_file, "image": f"SAMed2Dv1/{img_rel}"}
        if i in modes:
            img = in_mode(img, modes[i])
            ctx.plant("image_mode", **where, mode=modes[i])
        mask_box = s.scan.box
        if i == 8:
            img = img.resize((40, 30))
            mask_box = None
            ctx.plant("too_small_image", **where, size=[40, 30])
        if i == 13:
            ctx.write_bytes(f"{base}/SAMed2Dv1/{img_rel}", bomb_png())
            ctx.plant("decompression_bomb", **where, declared_size=list(BOMB_SIZE))
        else:
            ctx.write_bytes(f"{base}/SAMed2Dv1/{img_rel}", encode(img, "PNG"))
        if i == 16:
            mask_box = None
            ctx.plant("empty_mask", **where, mask=mask_rel, detail="all-zero mask: no box can be derived")
        ctx.write_bytes(f"{base}/SAMed2Dv1/{mask_rel}", _mask_png(img.size, mask_box))
        index[img_rel] = [mask_rel]
        box = s.scan.box_1000()
        # Half the records carry LLaVA's `<image>` in the human turn, half do not (UNCERTAIN in datasets.md §3).
        img_tok = "<image>\n" if i % 2 == 0 else ""
        if i % 3 == 0:
            grounding.append({
                "id": f"grounding_{i}", "image": img_rel,
                "conversations": _conv(f"{img_tok}Please segment the {s.finding} in this image.",
                                       f"Sure, it is <SEG><mask>{mask_rel}</mask>."),
            })
            ctx.expect("mecovqa", f"grounding_{i}", box_1000=list(box), mask=mask_rel)
        elif i % 3 == 1:
            vqa.append({
                "id": f"region_{i}", "image": img_rel,
                "conversations": _conv(f"{img_tok}What is shown in the region <region>{mask_rel}</region>?",
                                       f"The region shows a {s.finding} in the {s.position} area."),
            })
            ctx.expect("mecovqa", f"region_{i}", box_1000=list(box), mask=mask_rel)
        else:
            q, a = qa_pairs(s)[int(rng.integers(len(qa_pairs(s))))]
            vqa.append({"id": f"complex_{i}", "image": img_rel, "conversations": _conv(img_tok + q, a)})
    for i in range(n, n + N_CLOSED["mecovqa"]):  # closed multi-turn VQA about one image
        rng = ctx.rng("mecovqa", i)
        s, data = closed_scene(ctx, rng, fmt="PNG")
        stem = f"{MODALITY_STEM[s.modality]}_{i:05d}"
        img_rel = f"images/{stem}.png"
        ctx.write_bytes(f"{base}/SAMed2Dv1/{img_rel}", data)
        index[img_rel] = []
        if s.position is not None:
            mask_rel = f"masks/{stem}_{s.finding}.png"
            ctx.write_bytes(f"{base}/SAMed2Dv1/{mask_rel}", _mask_png(s.scan.image.size, s.scan.box))
            index[img_rel] = [mask_rel]
        conv = []
        for k, (q, a) in enumerate(modality_questions(s, rng)):
            conv += _conv(("<image>\n" if k == 0 and i % 2 == 0 else "") + q, a)
        vqa.append({"id": f"closed_{i}", "image": img_rel, "conversations": conv})
    ctx.write_json(f"{base}/MeCoVQA_Complex+Region_VQA_train+Public_VQA.json", vqa)
    ctx.write_json(f"{base}/MeCoVQA_Grounding_train.json", grounding)
    ctx.write_json(f"{base}/SAMed2Dv1/SAMed2D_v1.json", index)
    ctx.register_source("mecovqa", path=base, files=["MeCoVQA_Complex+Region_VQA_train+Public_VQA.json",
                                                      "MeCoVQA_Grounding_train.json"], images="SAMed2Dv1")


# --------------------------------------------------------------------------------------------------------- Med-GRIT
def _fmt_box(b, as_float: bool) -> str:
    if as_float:
        return f"({b[0]:.4f},{b[1]:.4f}),({b[2]:.4f},{b[3]:.4f})"
    return f"({b[0]},{b[1]}),({b[2]},{b[3]})"


def build_medgrit(ctx: BuildContext, n: int = 30) -> None:
    base = "medgrit"
    records = []
    for i in range(n):
        rng = ctx.rng("medgrit", i)
        s = far_scene(ctx, rng, size=(128, 128), p_normal=0.0)
        rid = f"{MODALITY_STEM[s.modality]}_{i:05d}"
        rel = f"images/{rid}.png"
        ctx.write_bytes(f"{base}/{rel}", encode(s.scan.image, "PNG"))
        as_float = i % 2 == 1  # both coordinate variants of datasets.md §4
        box = _fmt_box(s.scan.box_unit() if as_float else s.scan.box_1000(), as_float)
        img = f"<img>{rel}</img>\n"
        task = ("VG", "RO", "GC", "MII")[i % 4]
        if task == "VG":
            pairs = [[f"{img}Please locate the <ref>{s.finding}</ref> in the image.",
                      f"<ref>{s.finding}</ref><box>{box}</box>"]]
        elif task == "RO":
            pairs = [[f"{img}What is the object in <ref>this region</ref><box>{box}</box>?", f"It is a {s.finding}."]]
        elif task == "GC":
            pairs = [[f"{img}Describe the image with the location of each finding.",
                      f"This {s.modality} image of the {s.organ} shows a <ref>{s.finding}</ref><box>{box}</box>"
                      f" in the {s.position} region."]]
        else:
            pairs = [[f"{img}What imaging modality is this?", f"This is {article(s.modality)} image."],
                     ["Where is the finding located?", f"The {s.finding} is in the {s.position} region."]]
        records.append({"id": rid, "conversations": pairs})
        ctx.expect("medgrit", rid, box_1000=list(s.scan.box_1000()), task=task,
                   coord_variant="float_0_1" if as_float else "int_0_1000")
    for i in range(n, n + N_CLOSED["medgrit"]):  # closed questions as multi-turn [question, answer] pairs
        rng = ctx.rng("medgrit", i)
        s, data = closed_scene(ctx, rng, fmt="PNG", p_normal=0.0)
        rid = f"{MODALITY_STEM[s.modality]}_{i:05d}"
        rel = f"images/{rid}.png"
        ctx.write_bytes(f"{base}/{rel}", data)
        pairs = [[q, a] for q, a in modality_questions(s, rng)]
        pairs[0][0] = f"<img>{rel}</img>\n" + pairs[0][0]
        records.append({"id": rid, "conversations": pairs})
    ctx.write_json(f"{base}/MedGRIT_demo_train_chatlm_img_coord.json", records)
    ctx.register_source("medgrit", path=base, files=["MedGRIT_demo_train_chatlm_img_coord.json"], images=".")


# ------------------------------------------------------------------------------------------------------- MedTrinity
def _reencoded_leak(ctx: BuildContext) -> tuple[dict, bytes, int]:
    """Re-encode (lower JPEG quality + small resize) an evaluation image until its pHash lies 2-6 bits away."""
    for key in sorted(k for k in ctx.eval_images if k.startswith("mcq/")):
        ev = ctx.eval_images[key]
        orig = Image.open(io.BytesIO(ev["bytes"]))
        h0 = imagehash.phash(orig)
        for scale, quality in ((0.9, 40), (0.85, 30), (0.8, 25), (0.75, 20), (0.7, 15)):
            w, h = orig.size
            small = orig.resize((int(w * scale), int(h * scale)), Image.Resampling.BILINEAR)
            data = encode(small, "JPEG", quality=quality)
            d = h0 - imagehash.phash(Image.open(io.BytesIO(data)))
            if 2 <= d <= 6:
                return ev, data, int(d)
    raise RuntimeError("demo generator: no re-encoding of an evaluation image landed at pHash distance 2-6")


def build_medtrinity(ctx: BuildContext, n: int = 30) -> None:
    base = "medtrinity"
    rows, members = [], {}
    srcs = ["deeplesion", "brats", "nih_chest", "pmc_oa"]
    for i in range(n):
        rng = ctx.rng("medtrinity", i)
        s = far_scene(ctx, rng, size=(128, 128))
        src = srcs[i % len(srcs)]
        fname = f"{src}_{i:06d}.jpg"
        rows.append({"id": f"mt_{i:06d}", "file_name": fname, "caption": long_caption(s), "source": src})
        where = {"source": "medtrinity", "row": i, "record": f"mt_{i:06d}", "member": fname,
                 "data_file": f"{base}/25M_full/train-00000-of-00001.parquet",
                 "file": f"{base}/25M_accessible/shard_00000.tar.zst"}
        if i == 5:
            ctx.plant("missing_image", **where, detail="file_name absent from every shard (MedTrinity issue #33)")
            continue
        data = encode(s.scan.image, "JPEG", quality=90)
        if i == 8:
            ev, data, d = _reencoded_leak(ctx)
            rows[-1]["caption"] = "The image is a scan with a bright region of interest."
            ctx.plant("eval_leak_reencoded", **where, eval_benchmark=ev["benchmark"], eval_id=ev["id"],
                      eval_file="eval/mcq/DemoMCQ.tsv", phash_distance=d,
                      detail="JPEG re-encoded at lower quality and resized")
        members[fname] = data
    ctx.write_parquet(f"{base}/25M_full/train-00000-of-00001.parquet", rows)
    write_tar_zst(ctx.path(f"{base}/25M_accessible/shard_00000.tar.zst"), members)
    ctx.register_source("medtrinity", path=base, files=["25M_full/*.parquet"], images="25M_accessible/*.tar.zst")


# --------------------------------------------------------------------------------------------------------- Cambrian
def build_cambrian(ctx: BuildContext, n: int = 30) -> None:
    base = "cambrian"
    rows, tars = [], {"coco": {}, "pathvqa": {}}
    text_only = {20: "missing", 21: None, 22: "None", 23: "nan", 24: None}
    for i in range(n):
        rng = ctx.rng("cambrian", i)
        rid = f"cambrian_{i:05d}"
        if i in text_only:
            topic = GENERAL_TOPICS[i % len(GENERAL_TOPICS)]
            row = {"id": rid, "conversations": _conv(f"Explain {topic} in simple words.",
                                                      f"{topic.capitalize()} is a topic of science that people study.")}
            if text_only[i] != "missing":
                row["image"] = text_only[i]
            ctx.plant("text_only_variant", source="cambrian", row=i, record=rid,
                      data_file=f"{base}/jsons/Cambrian10M.jsonl",
                      image_field="absent" if text_only[i] == "missing" else text_only[i])
        elif i % 4 == 3:  # the medical sub-source inside a general collection
            s = far_scene(ctx, rng, size=(128, 128))
            rel = f"pathvqa/images/train_{i:04d}.jpg"
            tars["pathvqa"][rel] = encode(s.scan.image.convert("RGB"), "JPEG", quality=90)
            q, a = qa_pairs(s)[0]
            row = {"id": rid, "image": rel, "conversations": _conv("<image>\n" + q, a)}
        else:
            color, shape = _pick(rng, COLORS), _pick(rng, SHAPES)
            rel = f"coco/train2017/{i:012d}.jpg"
            tars["coco"][rel] = encode(make_photo(rng, color, shape), "JPEG", quality=90)
            conv = _conv("<image>\nWhat color is the shape?", f"The shape is a {color} {shape}.")
            conv += _conv("What shape is in the picture?", f"A {shape}.")  # multi-turn
            row = {"id": rid, "image": rel, "conversations": conv}
        if i == 29:
            row["image"] = "../../outside_the_root.jpg"
            ctx.plant("path_escape", source="cambrian", row=i, record=rid, image=row["image"],
                      data_file=f"{base}/jsons/Cambrian10M.jsonl")
        rows.append(row)
    for i in range(n, n + N_CLOSED["cambrian"]):  # PathVQA-like short questions, one per record, LLaVA format
        rng = ctx.rng("cambrian", i)
        s, data = closed_scene(ctx, rng)
        rel = f"pathvqa/images/train_{i:04d}.jpg"
        tars["pathvqa"][rel] = data
        q, a = modality_questions(s, rng)[0]
        conv = _conv("<image>\n" + q, a)
        rows.append({"id": f"cambrian_{i:05d}", "image": rel, "conversations": conv})
    ctx.write_jsonl(f"{base}/jsons/Cambrian10M.jsonl", rows)
    for name, members in tars.items():
        write_tar_gz(ctx.path(f"{base}/{name}.tar.gz"), members)
    ctx.register_source("cambrian", path=base, files=["jsons/Cambrian10M.jsonl"], images="*.tar.gz")


# ---------------------------------------------------------------------------------------------------- Aloe text sets
SYSTEM_PROMPT = "You are a helpful medical assistant."


def build_aloe(ctx: BuildContext) -> None:
    med = []
    for rep in range(2):
        for j, (q, correct, _d, expl) in enumerate(TEXT_FACTS):
            conv = [{"from": "system", "value": SYSTEM_PROMPT}] if rep == 0 else []
            conv += _conv(q, f"The answer is {correct}. {expl}")
            med.append({"id": f"aloe_med_{rep}_{j}", "conversations": conv})
    where = {"source": "aloe_text", "data_file": "aloe_text/aloe_beta_medical_collection.json"}
    med.append({"id": "aloe_med_bad_0", "conversations": [{"from": "human", "value": "Which organ makes bile?"},
                                                          {"from": "human", "value": "Please answer."},
                                                          {"from": "gpt", "value": "The liver."}]})
    ctx.plant("non_alternating_turns", **where, record="aloe_med_bad_0", row=len(med) - 1)
    med.append({"id": "aloe_med_bad_1", "conversations": [{"from": "system", "value": SYSTEM_PROMPT},
                                                          {"from": "human", "value": "Which organ pumps blood?"}]})
    ctx.plant("no_assistant_turn", **where, record="aloe_med_bad_1", row=len(med) - 1)
    med.append({"id": "aloe_med_bad_2", "conversations": _conv("Which organ filters the blood to make urine?", "")})
    ctx.plant("empty_turn", **where, record="aloe_med_bad_2", row=len(med) - 1)
    ctx.write_json("aloe_text/aloe_beta_medical_collection.json", med)
    ctx.register_source("aloe_text", path="aloe_text", files=["aloe_beta_medical_collection.json"])

    gen = []
    for j, topic in enumerate(GENERAL_TOPICS * 4):
        conv = _conv(f"Explain {topic} in simple words.",
                     f"{topic.capitalize()} is a topic of science that people study.")
        if j % 3 == 0:
            conv = [{"from": "system", "value": "You are a helpful assistant."}] + conv
        gen.append({"id": f"aloe_gen_{j}", "conversations": conv})
    ctx.write_json("aloe_general/general_collection_demo.json", gen)
    ctx.register_source("aloe_general", path="aloe_general", files=["general_collection_demo.json"])


# ----------------------------------------------------------------------------------------------------------- Magpie
def build_magpie(ctx: BuildContext, n: int = 24) -> None:
    base = "magpie"
    rows = []
    for i in range(n):
        topic = GENERAL_TOPICS[i % len(GENERAL_TOPICS)]
        conv = [{"role": "user", "content": f"Explain {topic} in simple words."},
                {"role": "assistant", "content": f"{topic.capitalize()} is a topic of science that people study."}]
        if i % 2 == 1:
            conv += [{"role": "user", "content": "Please explain step by step."},
                     {"role": "assistant", "content": f"First, {topic} is observed. Then people study it."}]
        rows.append({
            "conversation": conv, "system_prompt_key": "information-seeking", "instruction": conv[0]["content"],
            "intent": "learn about a science topic", "knowledge": "basic science", "difficulty": "easy",
            "quality": "good", "explanation": "clear question", "primary_tag": "Information seeking",
            "other_tags": ["Reasoning"], "model_name_response_base": "demo",
        })
    ctx.write_parquet(f"{base}/data/train-00000-of-00001.parquet", rows)
    # The top_* configs carry `messages` instead of `conversation` (datasets.md §8).
    top = [{"messages": r["conversation"], "category": r["primary_tag"], "reward_model_score": 1.0 + 0.1 * k}
           for k, r in enumerate(rows[:8])]
    ctx.write_parquet(f"{base}/top_300k_shorter_conversations/train-00000-of-00001.parquet", top)
    ctx.register_source("magpie", path=base, files=["data/*.parquet"])


# -------------------------------------------------------------------------------------------------------- FracAtlas
def build_fracatlas(ctx: BuildContext, n: int = 30, n_fractured: int = 12) -> None:
    base = "fracatlas"
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "fractured", "supercategory": "none"}]}
    csv_rows = []
    regions = ["hand", "leg", "hip", "shoulder"]
    for i in range(n):
        rng = ctx.rng("fracatlas", i)
        fractured = i < n_fractured
        size = (_pick(rng, [128, 160, 192]), _pick(rng, [160, 192, 224]))
        img, box = make_fracture_xray(rng, size, fractured)
        name = f"IMG{i + 1:07d}.jpg"
        folder = "Fractured" if fractured else "Non_fractured"
        ctx.write_bytes(f"{base}/images/{folder}/{name}", encode(img, "JPEG", quality=90))
        w, h = size
        coco["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        objects = ""
        yolo = ""
        if box is not None:
            x, y, bw, bh = box
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": i, "category_id": 1,
                                        "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                                        "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
            objects = (f"<object><name>fractured</name><pose>Unspecified</pose><truncated>0</truncated>"
                       f"<difficult>0</difficult><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + bw}</xmax>"
                       f"<ymax>{y + bh}</ymax></bndbox></object>")
            yolo = f"0 {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n"
        xml = (f"<annotation><folder>{folder}</folder><filename>{name}</filename><size><width>{w}</width>"
               f"<height>{h}</height><depth>1</depth></size><segmented>0</segmented>{objects}</annotation>\n")
        stem = name[:-4]
        ctx.path(f"{base}/Annotations/PASCAL VOC/{stem}.xml").write_text(xml)
        ctx.path(f"{base}/Annotations/YOLO/{stem}.txt").write_text(yolo)
        region = regions[i % 4]
        csv_rows.append([name] + [int(region == r) for r in regions] + [0, 0, 0, int(fractured),
                                                                        int(fractured), 1, 0, 0])
    ctx.write_json(f"{base}/Annotations/COCO JSON/COCO_fracture_masks.json", coco)
    ctx.write_csv(f"{base}/dataset.csv", ["image_id", "hand", "leg", "hip", "shoulder", "mixed", "hardware",
                                          "multiscan", "fractured", "fracture_count", "frontal", "lateral", "oblique"],
                  csv_rows)
    ctx.register_source("fracatlas", path=base, images="images")


def build_all(ctx: BuildContext) -> None:
    build_pubmedvision(ctx)
    build_medmax(ctx)
    build_mecovqa(ctx)
    build_medgrit(ctx)
    build_medtrinity(ctx)
    build_cambrian(ctx)
    build_aloe(ctx)
    build_magpie(ctx)
    build_fracatlas(ctx)
