"""Every adapter on small fixtures shaped like the real records (datasets.md), one fixture per UNCERTAIN variant.
Fixtures are written into tmp dirs: records as the datasets ship them, images generated with Pillow and packed into
the archives each dataset ships (zip, split tar.gz, tar.zst)."""

from __future__ import annotations

import io
import json
import math
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from aloevision.config import SourceConfig
from aloevision.images import ImageError, image_size, read_image_bytes, split_ref
from aloevision.schema import Drop, Sample
from aloevision.sources import ADAPTERS, MODULES, allowed_roots, read_source, source_inventory
from aloevision.sources.boxes import parse_qwen2vl_boxes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOEVISION_INDEX_CACHE", str(tmp_path / "index-cache"))


def png(size=(64, 48), color=(200, 30, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def split_file(path: Path, n: int = 2) -> None:
    data = path.read_bytes()
    step = len(data) // n + 1
    for k in range(n):
        (path.parent / f"{path.name}.a{chr(97 + k)}").write_bytes(data[k * step:(k + 1) * step])
    path.unlink()


def src(name: str, adapter: str, path: Path, modality="multimodal", domain="medical", **kw) -> SourceConfig:
    return SourceConfig(name=name, adapter=adapter, domain=domain, modality=modality, path=str(path), **kw)


def run(cfg) -> tuple[dict[str, Sample], dict[str, Drop]]:
    out = list(read_source(cfg))
    samples = {o.id: o for o in out if isinstance(o, Sample)}
    drops = {o.id: o for o in out if isinstance(o, Drop)}
    assert len(samples) + len(drops) == len(out), "ids must be unique"
    return samples, drops


def parts(s: Sample, turn: int) -> list[str]:
    return [p["type"] if p["type"] == "image" else p["text"] for p in s.messages[turn]["content"]]


# ---------------------------------------------------------------------------------------------- PubMedVision


def test_pubmedvision_images_prepended_from_zips(tmp_path):
    with zipfile.ZipFile(tmp_path / "images_0.zip", "w") as z:
        z.writestr("images/pmc_701_0.jpg", png(color=(1, 2, 3), fmt="JPEG"))
        z.writestr("images/pmc_701_1.jpg", png(size=(80, 60), fmt="JPEG"))
    with zipfile.ZipFile(tmp_path / "images_1.zip", "w") as z:  # the `unzip -j` variant: no folder in the zip
        z.writestr("pmc_702_0.jpg", png(size=(70, 70), fmt="JPEG"))
    conv = lambda q: [{"from": "human", "value": q}, {"from": "gpt", "value": "A CT scan of the abdomen."}]
    records = [
        {"id": "Alignment_VQA_701", "image": ["images/pmc_701_0.jpg", "images/pmc_701_1.jpg"], "body_part": "Abdomen",
         "modality": "Computed Tomography", "conversations": conv("Write a description of the given images.")},
        {"id": "Alignment_VQA_702", "image": ["images/pmc_702_0.jpg"], "body_part": "Chest", "modality": "X-Ray",
         "conversations": conv("What is shown?")},
        {"id": "Alignment_VQA_9", "image": ["images/pmc_9_0.jpg"], "body_part": "Chest", "modality": "X-Ray",
         "conversations": conv("Missing image in the zips (known issue).")},
        {"id": "Alignment_VQA_703", "image": ["images/pmc_701_0.jpg"], "body_part": "Chest", "modality": "X-Ray",
         "conversations": conv("Look:\n<image>\nWhat is it?")},  # a record that does carry <image>
    ]
    (tmp_path / "PubMedVision_Alignment_VQA.json").write_text(json.dumps(records))
    samples, drops = run(src("pubmedvision", "pubmedvision", tmp_path))
    s = samples["pubmedvision/Alignment_VQA_701"]
    assert parts(s, 0) == ["image", "image", "Write a description of the given images."]
    assert [m["role"] for m in s.messages] == ["user", "assistant"]
    assert [split_ref(r)[1] for r in s.images] == ["images/pmc_701_0.jpg", "images/pmc_701_1.jpg"]
    assert image_size(s.images[1]) == (80, 60)
    assert s.meta["modality"] == "Computed Tomography" and s.meta["body_part"] == "Abdomen"
    assert (s.domain, s.modality, s.category) == ("medical", "multimodal", "medical_multimodal")
    flat = samples["pubmedvision/Alignment_VQA_702"]
    assert split_ref(flat.images[0]) == (str(tmp_path / "images_1.zip"), "pmc_702_0.jpg")
    assert drops["pubmedvision/Alignment_VQA_9"].reason == "missing_image"
    assert parts(samples["pubmedvision/Alignment_VQA_703"], 0) == ["Look:", "image", "What is it?"]


def test_pubmedvision_extracted_folder_and_mismatch(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(png(fmt="JPEG"))
    rec = {"id": "X_1", "image": ["images/a.jpg"],
           "conversations": [{"from": "human", "value": "<image><image> two?"}, {"from": "gpt", "value": "one"}]}
    ok = {"id": "X_2", "image": ["images/a.jpg"],
          "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    (tmp_path / "PubMedVision_InstructionTuning_VQA.json").write_text(json.dumps([rec, ok]))
    samples, drops = run(src("pubmedvision", "pubmedvision", tmp_path))
    assert drops["pubmedvision/X_1"].reason == "placeholder_mismatch"
    assert samples["pubmedvision/X_2"].images == [str((tmp_path / "images" / "a.jpg").resolve())]


# ---------------------------------------------------------------------------------------------------- MedMax


def test_medmax_split_tarball_and_drops(tmp_path):
    write_tar(tmp_path / "images.tar.gz", {"images/pmc/1.jpg": png(fmt="JPEG"), "./images/mimic/2.png": png()},
              "w:gz")
    split_file(tmp_path / "images.tar.gz", 3)  # images.tar.gz.aa/.ab/.ac, as shipped
    rows = [
        {"text": "<image>\nWhat organ is shown?<reserved08706>The liver.", "image_path": "images/pmc/1.jpg",
         "task": "VQA", "source": "pmc_vqa", "credential": "no", "tokens": [8711, 1, 8710, 2]},
        {"text": "Generate an image of a chest X-ray.<reserved08706><image>", "image_path": "images/pmc/1.jpg",
         "task": "Image Generation", "source": "x", "credential": "no"},
        {"text": "Describe.<reserved08706>Here: <image>", "image_path": "images/pmc/1.jpg",
         "task": "Visual Chat", "source": "x", "credential": "no"},
        {"text": "<image>\nFindings?<reserved08706>Clear lungs.", "task": "Report Understanding",
         "source": "mimic", "credential": "yes"},
        {"text": "<image> Question without separator. Answer.", "image_path": "images/pmc/1.jpg", "task": "VQA",
         "source": "x", "credential": "no"},
        {"text": "Hi<reserved08706>Hello.<reserved08706>And <image>?<reserved08706>An X-ray.<reserved08706>",
         "image_path": ["images/mimic/2.png"], "task": "Visual Chat", "source": "x", "credential": "no"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"text": "broken json line')
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    samples, drops = run(src("medmax", "medmax", tmp_path))
    s = samples["medmax/train:0"]
    assert parts(s, 0) == ["image", "What organ is shown?"] and parts(s, 1) == ["The liver."]
    assert read_image_bytes(s.images[0])[:2] == b"\xff\xd8"
    assert s.meta["task"] == "VQA" and s.meta["origin"] == "pmc_vqa"
    assert drops["medmax/train:1"].reason == "generation_task"
    assert drops["medmax/train:2"].reason == "malformed_record"
    assert drops["medmax/train:3"].reason == "generation_task"  # image in the answer
    assert drops["medmax/train:4"].reason == "credentialed_image"
    assert drops["medmax/train:5"].reason == "no_turn_separator"
    multi = samples["medmax/train:6"]  # multi-turn, list image_path, trailing separator
    assert [m["role"] for m in multi.messages] == ["user", "assistant", "user", "assistant"]
    assert parts(multi, 2) == ["And", "image", "?"] and image_size(multi.images[0]) == (64, 48)


def test_medmax_extra_separator_option(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.png").write_bytes(png())
    row = {"text": "<image> Q?\n\nAnswer: A.", "image_path": "images/1.png", "task": "VQA", "credential": "no"}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    samples, drops = run(src("medmax", "medmax", tmp_path, options={"separators": ["\n\nAnswer:"]}))
    assert parts(samples["medmax/train:0"], 1) == ["A."]


# --------------------------------------------------------------------------------------------------- MeCoVQA


def mask_png(size, rect) -> bytes:
    m = Image.new("L", size, 0)
    if rect:
        ImageDraw.Draw(m).rectangle(rect, fill=255)  # inclusive corners
    buf = io.BytesIO()
    m.save(buf, "PNG")
    return buf.getvalue()


def test_mecovqa_release_tree_regions_grounding_and_merged_masks(tmp_path):
    # The release: MeCoVQA/train/MeCoVQA-{Complex,Region,Grounding}.json next to SA-Med2D's SAMed2Dv1/ tree.
    root = tmp_path / "SAMed2Dv1"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stem = "ct_00--CTSpine1K_Full--case1--z_0288"
    (root / "images" / f"{stem}.png").write_bytes(png(size=(200, 100)))
    (root / "images" / "ct_small.png").write_bytes(png(size=(100, 100)))
    (root / "masks" / "ct_1_liver.png").write_bytes(mask_png((200, 100), (20, 10, 59, 49)))
    (root / "masks" / "empty.png").write_bytes(mask_png((200, 100), None))
    # Two objects of class 0005: the merged mask (not shipped) is their union; class 0006 has different sizes.
    (root / "masks" / f"{stem}--0005_000.png").write_bytes(mask_png((200, 100), (20, 10, 59, 49)))
    (root / "masks" / f"{stem}--0005_001.png").write_bytes(mask_png((200, 100), (100, 60, 139, 89)))
    (root / "masks" / f"{stem}--0006_000.png").write_bytes(mask_png((200, 100), (0, 0, 9, 9)))
    (root / "masks" / f"{stem}--0006_001.png").write_bytes(mask_png((100, 50), (0, 0, 9, 9)))
    expected = "<|box_start|>(100,100),(300,500)<|box_end|>"  # cols 20..59 -> [20, 60) of 200 px
    merged = "<|box_start|>(100,100),(700,900)<|box_end|>"  # union: cols 20..139, rows 10..89
    img = f"images/{stem}.png"
    h = lambda v: {"from": "human", "value": v}
    g = lambda v: {"from": "gpt", "value": v}
    complex_ = [{"id": "c1", "image": img, "conversations": [h("<image>\nWhat modality?"), g("CT.")],
                 "answer_type": "open"}]
    region = [{"id": "r1", "image": img,  # no <image>: prepended
               "conversations": [h("What is in <region>masks/ct_1_liver.png</region>?"), g("The liver.")]},
              {"id": "r2", "image": "images/ct_small.png",  # the mask is 200x100, the image 100x100
               "conversations": [h("What is in <region>masks/ct_1_liver.png</region>?"), g("The liver.")]}]
    grounding = [
        {"id": "g1", "image": img,
         "conversations": [h("<image>\nSegment the liver."), g("It is <SEG><mask>masks/ct_1_liver.png</mask>.")]},
        {"id": "g2", "image": img, "conversations": [h("<image>\nSegment."), g("<SEG><mask>masks/empty.png</mask>")]},
        {"id": "g3", "image": img, "conversations": [h("<image>\nSegment."), g("Here <SEG>")]},
        {"id": "g4", "image": img, "conversations": [h("<image>\nSegment."), g("<SEG><mask>masks/nope.png</mask>")]},
        {"id": "g5", "image": img, "conversations": [
            h("<image>\nSegment the vertebra."), g(f"<SEG><mask>masks_merged/{stem}--0005_merged.png</mask>")]},
        {"id": "g6", "image": img, "conversations": [
            h("<image>\nSegment."), g(f"<SEG><mask>masks_merged/{stem}--0006_merged.png</mask>")]},
        {"id": "g7", "image": img, "conversations": [
            h("<image>\nSegment."), g(f"<SEG><mask>masks_merged/{stem}--0009_merged.png</mask>")]},
    ]
    train = tmp_path / "MeCoVQA" / "train"
    train.mkdir(parents=True)
    (tmp_path / "MeCoVQA" / "test").mkdir()
    (train / "MeCoVQA-Complex.json").write_text(json.dumps(complex_))
    (train / "MeCoVQA-Region.json").write_text(json.dumps(region))
    (train / "MeCoVQA-Grounding.json").write_text(json.dumps(grounding))
    (tmp_path / "MeCoVQA" / "test" / "MeCoVQA_Complex_VQA_test.json").write_text(json.dumps(complex_))
    cfg = src("mecovqa", "mecovqa", tmp_path, boxes=True)
    inv = source_inventory(cfg)
    assert inv["missing_files"] == [] and inv["files"]["MeCoVQA/train/MeCoVQA-Region.json"]["count"] == 1
    samples, drops = run(cfg)
    assert parts(samples["mecovqa/c1"], 0) == ["image", "What modality?"]
    assert samples["mecovqa/c1"].meta == {"task": "vqa", "answer_type": "open", "file": "MeCoVQA-Complex"}
    r1 = samples["mecovqa/r1"]
    assert parts(r1, 0) == ["image", f"What is in {expected}?"] and r1.meta["task"] == "region"
    g1 = samples["mecovqa/g1"]
    assert parts(g1, 1) == [f"It is {expected}."] and g1.meta["task"] == "grounding"
    assert parts(samples["mecovqa/g5"], 1) == [merged]
    assert drops["mecovqa/r2"].reason == "bad_mask"  # never a box in the mask's coordinates
    assert drops["mecovqa/g2"].reason == "empty_mask"
    assert drops["mecovqa/g3"].reason == "malformed_record"
    assert drops["mecovqa/g4"].reason == "missing_image"
    assert drops["mecovqa/g6"].reason == "bad_mask"
    assert drops["mecovqa/g7"].reason == "missing_image"
    assert "MeCoVQA-Grounding.json row" in drops["mecovqa/g4"].detail  # every drop names its file and row
    assert len(samples) + len(drops) == 10  # the test/ folder is not read

    # One file missing from the download: reported before reading, the others are read.
    (train / "MeCoVQA-Region.json").unlink()
    assert source_inventory(cfg)["missing_files"] == ["MeCoVQA/train/MeCoVQA-Region.json"]


# -------------------------------------------------------------------------------------------------- Med-GRIT


def test_medgrit_pairs_boxes_and_variants(tmp_path):
    (tmp_path / "images").mkdir()
    for stem in ("ct_001", "mr_002", "x_003"):
        (tmp_path / "images" / f"{stem}.png").write_bytes(png(size=(100, 100)))
    q = "<img>/mnt/authors/SAMed2D/images/ct_001.png</img>\nWhere is <ref>the liver</ref>?"
    rows = [
        {"id": "ct_001", "conversations": [[q, "<ref>the liver</ref><box>(587,126),(789,217)</box>"]]},
        {"id": "mr_002", "conversations": [["<img>images/mr_002.png</img> Find the kidney.",
                                            "<ref>kidney</ref><box>(0.5439, 0.0557), (0.7109, 0.2549)</box>"]]},
        {"id": "x_003", "conversations": [{"from": "human", "value": "What is <box>(10,20),(30,40)</box>?"},
                                          {"from": "gpt", "value": "A rib."}]},  # dict turns, no <img>
        {"id": "ct_004", "conversations": [["<img>images/ct_001.png</img> q", "<box>(10,20),(3000,40)</box>"]]},
        {"id": "ct_005", "conversations": [["<img>images/ct_001.png</img> q"]]},
        {"id": "ct_006", "conversations": [["<img>missing/zz.png</img> q", "a"]]},
    ]
    (tmp_path / "0301_CombinedAll_VG_train1_chatlm_img_coord2.json").write_text(json.dumps(rows))
    samples, drops = run(src("medgrit", "medgrit", tmp_path, boxes=True))
    s = samples["medgrit/ct_001"]
    assert parts(s, 0) == ["image", "Where is <|object_ref_start|>the liver<|object_ref_end|>?"]
    assert parts(s, 1) == ["<|object_ref_start|>the liver<|object_ref_end|>"
                           "<|box_start|>(587,126),(789,217)<|box_end|>"]
    assert s.images == [str((tmp_path / "images" / "ct_001.png").resolve())]
    assert s.meta == {"file": "0301_CombinedAll_VG_train1_chatlm_img_coord2", "task": "VG", "image_modality": "ct"}
    assert parse_qwen2vl_boxes(samples["medgrit/mr_002"].texts("assistant")[0]) == [(544, 56, 711, 255)]
    x = samples["medgrit/x_003"]
    assert parts(x, 0) == ["image", "What is <|box_start|>(10,20),(30,40)<|box_end|>?"]
    assert drops["medgrit/ct_004"].reason == "bad_box"
    assert drops["medgrit/ct_005"].reason == "malformed_record"
    assert drops["medgrit/ct_006"].reason == "missing_image"


# ------------------------------------------------------------------------------------------------ MedTrinity


def test_medtrinity_parquet_and_tar_zst(tmp_path):
    tar = tmp_path / "25M_accessible" / "shard_0.tar"
    tar.parent.mkdir()
    write_tar(tar, {"deeplesion/a_1.png": png(size=(90, 90)), "brats/b_2.jpg": png(fmt="JPEG")})
    (tar.parent / "shard_0.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(tar.read_bytes()))
    tar.unlink()
    meta = tmp_path / "25M_full" / "train-00000-of-00001.parquet"
    meta.parent.mkdir()
    pq.write_table(pa.table({
        "id": ["m1", "m2", "m3", "m4"],
        "file_name": ["a_1.png", "b_2.jpg", "gone.png", "a_1.png"],
        "caption": ["A CT slice of the chest; the region of interest is central.", "An MRI.", "x", "  "],
        "source": ["deeplesion", "brats", "pmc_oa", "deeplesion"],
    }), meta)
    samples, drops = run(src("medtrinity", "medtrinity", tmp_path, options={"prompt": "Describe the image."}))
    s = samples["medtrinity/m1"]
    assert parts(s, 0) == ["image", "Describe the image."]
    assert parts(s, 1) == ["A CT slice of the chest; the region of interest is central."]
    assert image_size(s.images[0]) == (90, 90) and s.images[0].endswith("shard_0.tar.zst::deeplesion/a_1.png")
    assert s.meta["origin"] == "deeplesion" and "<|box_start|>" not in json.dumps(s.messages)
    assert image_size(samples["medtrinity/m2"].images[0]) == (64, 48)
    assert drops["medtrinity/m3"].reason == "missing_image"
    assert drops["medtrinity/m4"].reason == "empty_turn"


def test_medtrinity_demo_config_embedded_images(tmp_path):
    pq.write_table(pa.table({
        "image": [{"bytes": png(size=(60, 60)), "path": "x.png"}],
        "id": ["d1"], "caption": ["A fundus photograph."],
    }), tmp_path / "train-00000.parquet")
    cfg = src("medtrinity", "medtrinity", tmp_path, options={"image_cache": str(tmp_path / "cache")})
    samples, _ = run(cfg)
    s = samples["medtrinity/d1"]
    assert image_size(s.images[0]) == (60, 60) and s.images[0].startswith(str(tmp_path / "cache"))
    assert s.messages[0]["content"][1]["text"] in MODULES["medtrinity"].PROMPTS


# -------------------------------------------------------------------------------------------------- Cambrian


def test_cambrian_text_only_variants_and_per_source_tars(tmp_path):
    write_tar(tmp_path / "coco.tar.gz", {"coco/train2017/1.jpg": png(fmt="JPEG")}, "w:gz")
    write_tar(tmp_path / "gqa.tar.gz", {"gqa/images/2.jpg": png(size=(55, 77), fmt="JPEG")}, "w:gz")
    split_file(tmp_path / "gqa.tar.gz")  # gqa.tar.gz.aa / .ab
    h = lambda v: {"from": "human", "value": v}
    g = lambda v: {"from": "gpt", "value": v}
    rows = [
        {"id": "img1", "image": "coco/train2017/1.jpg", "conversations": [h("<image>\nWhat?"), g("A cat."),
                                                                            h("Color?"), g("Red.")]},
        {"id": "img2", "image": "gqa/images/2.jpg", "conversations": [h("No placeholder here?"), g("Yes.")]},
        {"id": "t_missing", "conversations": [h("Hi"), g("Hello")]},
        {"id": "t_none", "image": None, "conversations": [h("Hi"), g("Hello")]},
        {"id": "t_None", "image": "None", "conversations": [h("Hi"), g("Hello")]},
        {"id": "t_nan", "image": "nan", "conversations": [h("Hi"), g("Hello")]},
        {"id": "t_NaN", "image": float("nan"), "conversations": [h("Hi"), g("Hello")]},
        {"id": "t_bad", "image": "None", "conversations": [h("<image>\nWhat?"), g("?")]},
        {"id": "sys", "conversations": [{"from": "system", "value": "Be brief."}, h("Hi"), g("Hello")]},
    ]
    (tmp_path / "jsons").mkdir()
    (tmp_path / "jsons" / "Cambrian10M.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples, drops = run(src("cambrian", "cambrian", tmp_path, domain="general"))
    a = samples["cambrian/img1"]
    assert [m["role"] for m in a.messages] == ["user", "assistant", "user", "assistant"]
    assert parts(a, 0) == ["image", "What?"] and a.meta["text_only"] is False
    b = samples["cambrian/img2"]
    assert parts(b, 0) == ["image", "No placeholder here?"] and image_size(b.images[0]) == (55, 77)
    for k in ("t_missing", "t_none", "t_None", "t_nan", "t_NaN"):
        t = samples[f"cambrian/{k}"]
        assert t.images == [] and t.meta["text_only"] and t.category == "general_multimodal"
    assert drops["cambrian/t_bad"].reason == "placeholder_mismatch"
    assert samples["cambrian/sys"].messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}


def test_cambrian_llava_boxes_converted_by_default(tmp_path):
    (tmp_path / "jsons").mkdir()
    conv = lambda a: [{"from": "human", "value": "Where is the dog?"}, {"from": "gpt", "value": a}]
    rows = [{"id": "r", "conversations": conv("[0.1, 0.2, 0.55, 0.9]")},
            {"id": "past", "conversations": conv("[0.1, 0.2, 1.05, 0.9]")},  # a normalised box past 1
            {"id": "inv", "conversations": conv("[0.6, 0.2, 0.55, 0.9]")},  # x2 < x1
            {"id": "ints", "conversations": conv("The counts are [0, 1, 0, 1] and [3.5, 4.0, 7.2, 9.9].")}]
    (tmp_path / "jsons" / "Cambrian10M.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    on, drops = run(src("cambrian", "cambrian", tmp_path))  # the default: one box format in the mixture
    off, _ = run(src("cambrian", "cambrian", tmp_path, options={"llava_boxes": False}))
    assert off["cambrian/r"].texts("assistant") == ["[0.1, 0.2, 0.55, 0.9]"]
    assert on["cambrian/r"].texts("assistant") == ["<|box_start|>(100,200),(550,900)<|box_end|>"]
    assert drops["cambrian/past"].reason == "bad_box" and drops["cambrian/inv"].reason == "bad_box"
    assert on["cambrian/ints"].texts("assistant") == ["The counts are [0, 1, 0, 1] and [3.5, 4.0, 7.2, 9.9]."]


# ----------------------------------------------------------------------------------------- Aloe text, Magpie


def test_aloe_text_roles_and_structure_drops(tmp_path):
    rows = [
        {"conversations": [{"from": "system", "value": "You are a doctor."}, {"from": "human", "value": "Fever?"},
                           {"from": "gpt", "value": "Rest and fluids."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "   "}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q2"},
                           {"from": "gpt", "value": "A"}]},
        {"conversations": [{"from": "human", "value": "Q"}]},
        {"conversations": [{"from": "doctor", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"conversations": []},
        {"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]},
    ]
    (tmp_path / "aloe_beta_medical_collection.json").write_text(json.dumps(rows))
    samples, drops = run(src("aloe_text", "aloe_text", tmp_path, modality="text"))
    f = "aloe_text/aloe_beta_medical_collection"
    s = samples[f"{f}:0"]
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    assert s.images == [] and s.category == "medical_text"
    assert parts(samples[f"{f}:1"], 1) == ["Hello"]
    assert {k.rsplit(":", 1)[1]: d.reason for k, d in drops.items()} == {
        "2": "empty_turn", "3": "non_alternating_turns", "4": "no_assistant_turn", "5": "malformed_record",
        "6": "malformed_record", "7": "non_alternating_turns",
    }


@pytest.mark.parametrize("column", ["conversation", "messages"])
def test_magpie_both_column_names(tmp_path, column):
    conv = [[{"role": "user", "content": "Explain gravity."}, {"role": "assistant", "content": "Mass attracts."},
             {"role": "user", "content": "More?"}, {"role": "assistant", "content": "Einstein."}],
            [{"role": "user", "content": "Only a question"}]]
    folder = tmp_path / ("data" if column == "conversation" else "top_300k_shorter_conversations")
    folder.mkdir()
    table = {column: conv, "difficulty": ["easy", "hard"]}
    if column == "messages":
        table["category"] = ["science", "x"]
    pq.write_table(pa.table(table), folder / "train-00000-of-00001.parquet")
    files = [] if column == "conversation" else ["top_300k_shorter_conversations/*.parquet"]
    samples, drops = run(src("magpie", "magpie", tmp_path, modality="text", domain="general", files=files))
    (s,) = samples.values()
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.meta["difficulty"] == "easy" and s.id == "magpie/train-00000-of-00001:0"
    assert [d.reason for d in drops.values()] == ["no_assistant_turn"]


# ------------------------------------------------------------------------------------------------- FracAtlas


def fracatlas_tree(root: Path, kind: str) -> None:
    (root / "images" / "Fractured").mkdir(parents=True)
    (root / "images" / "Non_fractured").mkdir(parents=True)
    Image.new("L", (400, 200), 80).save(root / "images" / "Fractured" / "IMG0000019.jpg")
    Image.new("L", (300, 300), 80).save(root / "images" / "Non_fractured" / "IMG0000000.jpg")
    (root / "dataset.csv").write_text(
        "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique\n"
        "IMG0000000.jpg,1,0,0,0,0,0,0,0,0,1,0,0\nIMG0000019.jpg,0,1,0,0,0,0,0,1,1,1,0,0\n")
    ann = root / "Annotations"
    if kind == "coco":
        (ann / "COCO JSON").mkdir(parents=True)
        (ann / "COCO JSON" / "COCO_fracture_masks.json").write_text(json.dumps({
            "images": [{"id": 7, "file_name": "IMG0000019.jpg", "width": 400, "height": 200}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [40, 20, 80, 100]}]}))
    elif kind == "voc":
        (ann / "PASCAL VOC").mkdir(parents=True)
        (ann / "PASCAL VOC" / "IMG0000019.xml").write_text(
            "<annotation><filename>IMG0000019.jpg</filename><size><width>400</width><height>200</height>"
            "<depth>1</depth></size><object><name>fractured</name><bndbox><xmin>40</xmin><ymin>20</ymin>"
            "<xmax>120</xmax><ymax>120</ymax></bndbox></object></annotation>")
    else:
        (ann / "YOLO").mkdir(parents=True)
        (ann / "YOLO" / "IMG0000019.txt").write_text("0 0.2 0.35 0.2 0.5\n")


@pytest.mark.parametrize("kind", ["coco", "voc", "yolo"])
def test_fracatlas_annotation_formats_agree(tmp_path, kind):
    fracatlas_tree(tmp_path, kind)
    samples, drops = run(src("fracatlas", "fracatlas", tmp_path, boxes=True))
    assert not drops
    f = samples["fracatlas/IMG0000019"]
    assert f.meta["label"] == "fractured" and f.meta["boxes"] == [[100, 100, 300, 600]]
    assert f.meta["leg"] == 1 and f.meta["hand"] == 0 and f.meta["fracture_count"] == 1
    assert "<|object_ref_start|>fracture<|object_ref_end|><|box_start|>(100,100),(300,600)<|box_end|>" in \
        f.texts("assistant")[0]
    n = samples["fracatlas/IMG0000000"]
    assert n.meta["label"] == "non_fractured" and n.meta["boxes"] == [] and n.meta["hand"] == 1
    assert image_size(n.images[0]) == (300, 300)


def test_fracatlas_hostile_annotations_are_drops_not_hangs(tmp_path):
    import os

    voc = tmp_path / "voc"
    fracatlas_tree(voc, "voc")
    xml = voc / "Annotations" / "PASCAL VOC" / "IMG0000019.xml"
    xml.unlink()
    os.mkfifo(xml)  # a FIFO where an annotation should be: refused, never opened
    samples, drops = run(src("fracatlas", "fracatlas", voc, boxes=True))
    assert drops["fracatlas/IMG0000019"].reason == "bad_box" and "not a regular file" in \
        drops["fracatlas/IMG0000019"].detail
    assert "fracatlas/IMG0000000" in samples
    coco = tmp_path / "coco"
    fracatlas_tree(coco, "coco")
    (coco / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json").write_text('{"images": [')  # cut off
    samples, drops = run(src("fracatlas", "fracatlas", coco, boxes=True))
    assert not samples and {d.reason for d in drops.values()} == {"bad_box"}
    assert "COCO_fracture_masks.json" in drops["fracatlas/IMG0000019"].detail


def test_fracatlas_label_from_folder_without_csv_column(tmp_path):
    fracatlas_tree(tmp_path, "voc")
    (tmp_path / "dataset.csv").write_text("image_id,hand,leg,hip,shoulder,mixed\nIMG0000019.jpg,0,1,0,0,0\n"
                                          "IMG0000000.jpg,1,0,0,0,0\nIMG9.jpg,0,0,0,0,0\n")
    samples, drops = run(src("fracatlas", "fracatlas", tmp_path))
    assert samples["fracatlas/IMG0000019"].meta["label"] == "fractured"
    assert samples["fracatlas/IMG0000000"].meta["label"] == "non_fractured"
    assert drops["fracatlas/IMG9"].reason == "missing_image"


# ------------------------------------------------------------------------------------------ registry, configs


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        read_source(src("x", "nope", tmp_path))
    with pytest.raises(FileNotFoundError, match="no data files match"):
        list(read_source(src("pubmedvision", "pubmedvision", tmp_path)))


def test_source_configs_compose_into_the_schema():
    names = sorted(p.stem for p in (REPO / "conf" / "source").glob("*.yaml"))
    assert set(ADAPTERS) <= set(names) | {"aloe_text"}
    for name in names:
        raw = OmegaConf.load(REPO / "conf" / "source" / f"{name}.yaml")
        raw.pop("defaults", None)
        # Options that interpolate the run's paths resolve only in the full config (checked below).
        opts = OmegaConf.to_container(raw.get("options") or OmegaConf.create({}), resolve=False)
        raw.options = {k: v for k, v in opts.items() if not (isinstance(v, str) and "${" in v)}
        cfg = OmegaConf.merge(OmegaConf.structured(SourceConfig), raw)
        assert cfg.adapter in ADAPTERS and cfg.name == name
        assert cfg.domain in ("medical", "general") and cfg.modality in ("multimodal", "text")
        mod = MODULES[cfg.adapter]
        assert mod.DEFAULT_FILES and mod.__doc__ and "Native layout" in mod.__doc__
    assert OmegaConf.load(REPO / "conf" / "source" / "medtrinity.yaml").cap == 400000
    from conftest import compose

    full = compose(["mixture=final"], root=Path("/tmp/x-root"))
    med = OmegaConf.to_container(full.mixture.sources.medtrinity, resolve=True)
    assert med["options"]["image_cache"] == "/tmp/x-root/outputs/cache/images"  # inside the artifact cache
    assert full.mixture.sources.cambrian.options.llava_boxes is True


def test_nan_literal_in_jsonl_is_text_only(tmp_path):
    # Cambrian dumps written by pandas carry a bare NaN token; Python's json reads it as float('nan').
    (tmp_path / "jsons").mkdir()
    line = '{"id": "n", "image": NaN, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}'
    (tmp_path / "jsons" / "Cambrian10M.jsonl").write_text(line + "\n")
    samples, _ = run(src("cambrian", "cambrian", tmp_path))
    assert samples["cambrian/n"].images == [] and math.isnan(json.loads(line)["image"])


def test_medgrit_task_inferred_in_mixed_files(tmp_path):
    (tmp_path / "images").mkdir()
    for stem in ("ct_1", "ct_2", "ct_3", "ct_4"):
        (tmp_path / "images" / f"{stem}.png").write_bytes(png())
    img = lambda s: f"<img>images/{s}.png</img> "
    rows = [
        {"id": "ct_1", "conversations": [[img("ct_1") + "Locate <ref>it</ref>.", "<ref>it</ref><box>(1,2),(3,4)</box>"]]},
        {"id": "ct_2", "conversations": [[img("ct_2") + "What is <box>(1,2),(3,4)</box>?", "A cyst."]]},
        {"id": "ct_3", "conversations": [[img("ct_3") + "Describe.", "A <ref>cyst</ref><box>(1,2),(3,4)</box> left."]]},
        {"id": "ct_4", "conversations": [[img("ct_4") + "Modality?", "CT."]]},
    ]
    (tmp_path / "0301_CombinedAll_7.5w_train1_chatlm_img_coord2.json").write_text(json.dumps(rows))
    samples, _ = run(src("medgrit", "medgrit", tmp_path))
    assert {k: s.meta["task"] for k, s in samples.items()} == {
        "medgrit/ct_1": "VG", "medgrit/ct_2": "RO", "medgrit/ct_3": "GC", "medgrit/ct_4": "MII"}


# Planted defect kind (demo generator) -> the drop reason the adapters + cleaning give it. Random bytes behind a
# .jpg name are "unreadable_image" here (Pillow cannot identify them); "corrupt_image" is for damaged real images.
PLANTED_REASON = {
    "corrupt_image": "unreadable_image", "missing_image": "missing_image", "too_many_images": "too_many_images",
    "truncated_image": "truncated_image", "generation_task": "generation_task",
    "credential_no_image": "credentialed_image", "too_small_image": "image_too_small",
    "decompression_bomb": "decompression_bomb", "empty_mask": "empty_mask", "path_escape": "path_escape",
    "empty_turn": "empty_turn", "no_assistant_turn": "no_assistant_turn",
    "non_alternating_turns": "non_alternating_turns",
}


def test_demo_data_reads_with_default_settings(demo_dir):
    """Every source config, with its default files/images, reads the demo generator's native trees; every planted
    defect is dropped with its reason and nothing else is dropped."""
    from aloevision.cleaning import DropCounter, clean, default_rules

    planted = json.loads((demo_dir / "PLANTED.json").read_text())
    counter = DropCounter(examples=100)
    for conf in sorted((REPO / "conf" / "source").glob("*.yaml")):
        raw = OmegaConf.load(conf)
        raw.pop("defaults", None)
        raw.path = str(demo_dir / conf.stem)
        if "image_cache" in (raw.get("options") or {}):  # ${paths.cache_dir}/images in the composed config
            raw.options.image_cache = str(demo_dir.parent / "cache" / "images")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SourceConfig), raw))
        out = list(counter.count(clean(read_source(cfg), default_rules(roots=allowed_roots(cfg)))))
        assert any(isinstance(o, Sample) for o in out), conf.stem
    report = counter.to_dict()
    expected: dict[tuple[str, str], int] = {}
    for p in planted:
        if p["kind"] in PLANTED_REASON:
            key = (p["source"], PLANTED_REASON[p["kind"]])
            expected[key] = expected.get(key, 0) + 1
    got = {(s, r): n for s, v in report.items() for r, n in v["drops"].items()}
    assert got == expected



def test_hub_id_setup_and_embedded_images_stay_inside_allowed_roots(tmp_path):
    """path = Hub id + options.image_root (what every conf/source comment recommends), and embedded images written
    to the image cache: the references land inside the source's allowed roots, so `path_escape` keeps them."""
    from aloevision.cleaning import PathEscape
    from aloevision.sources.base import SourceContext
    from aloevision.sources.medtrinity import convert

    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "s.tar", "w") as tf:
        data = png()
        info = tarfile.TarInfo("a.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    cache = tmp_path / "artifact-cache" / "images"
    cfg = src("medtrinity", "medtrinity", "UCSC-VLAA/MedTrinity-25M", hf_config="25M_demo",
              options={"image_root": str(shards), "image_cache": str(cache)})
    ctx = SourceContext.from_config(cfg, MODULES["medtrinity"].DEFAULT_FILES, "*.tar")
    assert not ctx.is_local and ctx.root == shards
    from_shard = convert(ctx, "hf", 0, {"id": "x", "file_name": "a.png", "caption": "c"})
    embedded = convert(ctx, "hf", 1, {"id": "y", "image": {"bytes": png(), "path": "y.png"}, "caption": "c"})
    roots = allowed_roots(cfg)
    assert str(shards) in roots and str(cache) in roots
    rule = PathEscape(roots)
    assert rule.check(from_shard) is None and rule.check(embedded) is None
    assert embedded.images[0].startswith(str(cache))
    assert PathEscape([cfg.path]).check(embedded)[0] == "path_escape"  # the old single root refused them all


def test_parquet_source_decodes_only_the_columns_it_reads(tmp_path, monkeypatch):
    """Magpie's release carries a 1,024-float `embedding` column the adapter never reads: the parquet reader asks
    pyarrow for the adapter's columns only, and the samples and drops are those of the same file read whole, and the
    samples those of the same rows as JSON lines (every key parsed)."""
    from aloevision.sources import magpie

    rows = []
    for i in range(40):
        conv = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
        if i % 7 == 3:
            conv = conv[:1]  # no assistant turn: a drop, whose id comes from the `uuid`-less record's `id`
        rows.append({"conversation": conv, "difficulty": ["easy", "hard"][i % 2], "quality": "good",
                     "id": f"row-{i}", "embedding": [float(i + j) / 1024 for j in range(1024)],
                     "model_name": "x" * 100})
    for d in ("pq/data", "js/data"):
        (tmp_path / d).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pq" / "data" / "train.parquet")
    (tmp_path / "js" / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = src("magpie", "magpie", tmp_path / "pq", modality="text", domain="general")

    asked: list = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        asked.append(kw.get("columns"))
        return real(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    got = run(cfg)
    assert asked == [["conversation", "difficulty", "quality", "id"]]  # present in the file, in the adapter's order
    monkeypatch.setattr(magpie, "COLUMNS", None)
    assert run(cfg) == got and asked[-1] is None  # every column: the same samples and drops
    monkeypatch.undo()
    as_jsonl = run(src("magpie", "magpie", tmp_path / "js", modality="text", domain="general", files=["data/*.jsonl"]))
    assert got[0] == as_jsonl[0] and len(got[0]) == 34 and got[1].keys() == as_jsonl[1].keys()
    assert set(got[1]) == {f"magpie/train:row-{i}" for i in range(40) if i % 7 == 3}


# ------------------------------------------------------------------------------------------- symlink rule


def test_top_level_symlinks_are_trusted_record_escapes_are_not(tmp_path):
    """Cluster layout: an image archive and an image folder on shared storage, symlinked into the working folder's
    source folder. Their samples are kept by ingest (the path rule trusts the source folder's own top-level links);
    a record path with `..`, an absolute path, or a symlink BELOW the top level that leaves its top-level target is
    still a counted `path_escape` drop."""
    from aloevision.ingestion import ingest_source
    from aloevision.sources.base import resolve_in_source

    shared = tmp_path / "gpfs"
    (shared / "extracted").mkdir(parents=True)
    with zipfile.ZipFile(shared / "images_0.zip", "w") as z:
        z.writestr("images/pmc_1.jpg", png(size=(64, 64), fmt="JPEG"))
    (shared / "extracted" / "b.jpg").write_bytes(png(size=(70, 70), fmt="JPEG"))
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(png(fmt="JPEG"))
    (shared / "extracted" / "inner_out.jpg").symlink_to(secret)  # inside the linked folder, pointing out of it
    root = tmp_path / "work" / "pubmedvision"
    (root / "real").mkdir(parents=True)
    (root / "images_0.zip").symlink_to(shared / "images_0.zip")  # top level: trusted
    (root / "images").symlink_to(shared / "extracted")  # top level: trusted
    (root / "real" / "inner.jpg").symlink_to(shared / "extracted" / "b.jpg")  # below the top level: refused

    conv = [{"from": "human", "value": "What is shown?"}, {"from": "gpt", "value": "A CT scan of the chest."}]
    images = {"zip": "images/pmc_1.jpg", "folder": "images/b.jpg", "dotdot": "images/../../secret.jpg",
              "absolute": str(secret), "inner": "real/inner.jpg", "inner_linked": "images/inner_out.jpg"}
    (root / "PubMedVision_Alignment_VQA.json").write_text(json.dumps(
        [{"id": k, "image": [v], "conversations": conv} for k, v in images.items()]))
    out = tmp_path / "out"
    out.mkdir()
    ingest_source(src("pubmedvision", "pubmedvision", root), 0, out)
    kept = {json.loads(line)["id"]: json.loads(line)["images"] for line in open(out / "samples.jsonl")}
    assert set(kept) == {"pubmedvision/zip", "pubmedvision/folder"}
    assert split_ref(kept["pubmedvision/zip"][0]) == (str(root / "images_0.zip"), "images/pmc_1.jpg")
    assert kept["pubmedvision/folder"] == [str((shared / "extracted" / "b.jpg").resolve())]
    drops = {json.loads(line)["id"]: json.loads(line)["reason"] for line in open(out / "drops.jsonl")}
    assert drops == {f"pubmedvision/{k}": "path_escape" for k in ("dotdot", "absolute", "inner", "inner_linked")}
    assert json.loads((out / "report.json").read_text())["drops"] == {"path_escape": 4}

    # the rule itself: top-level links resolve anywhere; absolute, '..' and inner escapes never
    assert resolve_in_source(root, "images_0.zip") == str((shared / "images_0.zip").resolve())
    assert resolve_in_source(root, "./images/b.jpg") == str((shared / "extracted" / "b.jpg").resolve())
    for rel in ("images/../../secret.jpg", str(secret), "/etc/hostname", "real/inner.jpg", "images/inner_out.jpg",
                "..\\secret.jpg"):
        with pytest.raises(ImageError) as e:
            resolve_in_source(root, rel)
        assert e.value.reason == "path_escape", rel
