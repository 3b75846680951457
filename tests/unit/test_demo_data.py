"""The generated demo data: deterministic bytes, native layouts, every planted defect present and detectable, the
evaluation sets answerable from their images, and the source adapters reading it as the planted records say."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
import zstandard
from omegaconf import OmegaConf
from PIL import Image, UnidentifiedImageError

from aloevision.demo import generate
from aloevision.demo.build_sources import LEAK_COPIES, LEAK_ITEMS, MEDMAX_SEPARATOR
from aloevision.demo.generate import ensure_demo_data
from aloevision.demo.vocabulary import MODALITIES


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(demo_dir) -> Path:
    return demo_dir


@pytest.fixture(scope="module")
def planted(demo) -> list[dict]:
    return json.loads((demo / "PLANTED.json").read_text())


def by_kind(planted, kind) -> list[dict]:
    hits = [p for p in planted if p["kind"] == kind]
    assert hits, f"nothing of kind {kind!r} planted"
    return hits


def medmax_tar(demo) -> tarfile.TarFile:
    parts = sorted((demo / "medmax").glob("images.tar.gz.a?"))
    assert [p.name for p in parts] == ["images.tar.gz.aa", "images.tar.gz.ab"]
    return tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz")


def zst_members(path: Path) -> dict[str, bytes]:
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def decode_tsv_image(demo, index: str) -> bytes:
    with open(demo / "eval/mcq/DemoMCQ.tsv", newline="") as f:
        rows = {r["index"]: r for r in csv.DictReader(f, delimiter="\t")}
    return base64.b64decode(rows[index]["image"])


# ------------------------------------------------------------------------------------------------ build behaviour
def test_two_builds_are_byte_identical_and_fast(tmp_path):
    t0 = time.perf_counter()
    a = ensure_demo_data(tmp_path / "a")
    elapsed = time.perf_counter() - t0
    b = ensure_demo_data(tmp_path / "b")
    da, db = tree_digest(a), tree_digest(b)
    assert len(da) > 250 and da == db
    # ~2,300 scans, each pHash-checked against the evaluation images: 5.5 s alone, 68-74 s beside other jobs on 2 cores
    assert elapsed < 120, f"demo data took {elapsed:.1f}s to build (budget 120 s)"
    # no temp/lock leftovers beside the result
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a", "b"]


def test_ensure_is_idempotent_and_rebuilds_on_a_new_stamp(tmp_path, monkeypatch):
    d = ensure_demo_data(tmp_path / "demo")
    marker = d / "PLANTED.json"
    mtime = marker.stat().st_mtime_ns
    (d / "stray.txt").write_text("left by a user")
    assert ensure_demo_data(d) == d and marker.stat().st_mtime_ns == mtime  # same stamp: untouched
    assert (d / "stray.txt").exists()
    monkeypatch.setattr(generate, "GENERATOR_VERSION", "test-bump")
    ensure_demo_data(d)  # changed generator: rebuilt from scratch, atomically replaced
    assert not (d / "stray.txt").exists()
    assert json.loads((d / "VERSION.json").read_text())["generator_version"] == "test-bump"


def test_failed_build_leaves_no_partial_tree(tmp_path, monkeypatch):
    def boom(out_dir):
        (out_dir / "half.json").write_text("{}")
        raise RuntimeError("generator bug")

    monkeypatch.setattr(generate, "build_demo_data", boom)
    with pytest.raises(RuntimeError):
        ensure_demo_data(tmp_path / "demo")
    assert not (tmp_path / "demo").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


# ------------------------------------------------------------------------------------------------ native layouts
def test_pubmedvision_native(demo):
    recs = json.loads((demo / "pubmedvision/PubMedVision_Alignment_VQA.json").read_text())
    assert 20 <= len(recs) <= 40
    names = set()
    for k in (0, 1):
        with zipfile.ZipFile(demo / f"pubmedvision/images_{k}.zip") as zf:
            names |= set(zf.namelist())
    for r in recs:
        assert set(r) == {"id", "image", "body_part", "modality", "conversations"}
        assert isinstance(r["image"], list) and all(p.startswith("images/pmc_") for p in r["image"])
        assert [t["from"] for t in r["conversations"]] == ["human", "gpt"]
        assert "<image>" not in r["conversations"][0]["value"]  # PubMedVision carries no placeholder
    assert sum(p in names for r in recs for p in r["image"]) == sum(len(r["image"]) for r in recs) - 1  # one missing


def test_medmax_native(demo):
    rows = [json.loads(x) for x in (demo / "medmax/train.jsonl").read_text().splitlines()]
    assert 20 + LEAK_ITEMS * LEAK_COPIES <= len(rows) <= 40 + LEAK_ITEMS * LEAK_COPIES  # + the planted item copies
    for r in rows:
        assert set(r) == {"text", "tokens", "image_path", "task", "source", "credential"}
        assert MEDMAX_SEPARATOR in r["text"]
    understanding = [r for r in rows if "Generation" not in r["task"]]
    assert all(r["text"].startswith("<image>") for r in understanding)
    with medmax_tar(demo) as tf:
        members = set(tf.getnames())
    assert {r["image_path"] for r in rows if r["image_path"]} <= members


def test_mecovqa_native(demo):
    vqa = json.loads((demo / "mecovqa/MeCoVQA_Complex+Region_VQA_train+Public_VQA.json").read_text())
    gr = json.loads((demo / "mecovqa/MeCoVQA_Grounding_train.json").read_text())
    assert any("<region>masks/" in r["conversations"][0]["value"] for r in vqa)
    assert all(re.search(r"<SEG><mask>masks/[^<]+\.png</mask>", r["conversations"][1]["value"]) for r in gr)
    with_tok = [r["conversations"][0]["value"].startswith("<image>") for r in vqa + gr]
    assert any(with_tok) and not all(with_tok)  # both LLaVA variants
    for r in vqa + gr:
        assert (demo / "mecovqa/SAMed2Dv1" / r["image"]).is_file()
        for m in re.findall(r"masks/[^<]+\.png", json.dumps(r)):
            assert (demo / "mecovqa/SAMed2Dv1" / m).is_file()


def test_medgrit_native_has_both_box_scales(demo):
    recs = json.loads((demo / "medgrit/MedGRIT_demo_train_chatlm_img_coord.json").read_text())
    assert all(isinstance(p, list) and len(p) == 2 for r in recs for p in r["conversations"])
    assert all(re.match(r"<img>images/[a-z]+_\d+\.png</img>", r["conversations"][0][0]) for r in recs)
    boxes = re.findall(r"<box>\(([\d.]+),([\d.]+)\),\(([\d.]+),([\d.]+)\)</box>", json.dumps(recs))
    ints = [b for b in boxes if all("." not in v for v in b)]
    floats = [b for b in boxes if all("." in v and float(v) <= 1 for v in b)]
    assert ints and floats and len(ints) + len(floats) == len(boxes)
    assert all(int(v) < 1000 for b in ints for v in b)


def test_medtrinity_native(demo):
    t = pq.read_table(demo / "medtrinity/25M_full/train-00000-of-00001.parquet")
    assert {"file_name", "caption", "source"} <= set(t.column_names)
    members = zst_members(demo / "medtrinity/25M_accessible/shard_00000.tar.zst")
    names = t.column("file_name").to_pylist()
    assert sum(n in members for n in names) == len(names) - 1  # one planted missing image
    assert "<|box_start|>" not in " ".join(t.column("caption").to_pylist())


def test_cambrian_aloe_magpie_native(demo):
    rows = [json.loads(x) for x in (demo / "cambrian/jsons/Cambrian10M.jsonl").read_text().splitlines()]
    images = [r.get("image", "ABSENT") for r in rows]
    assert {"ABSENT", None, "None", "nan"} <= set(images)
    for name in ("coco", "pathvqa"):
        with tarfile.open(demo / f"cambrian/{name}.tar.gz") as tf:
            assert all(m.startswith(f"{name}/") for m in tf.getnames())
    aloe = json.loads((demo / "aloe_text/aloe_beta_medical_collection.json").read_text())
    roles = {t["from"] for r in aloe for t in r["conversations"]}
    assert roles == {"system", "human", "gpt"}
    magpie = pq.read_table(demo / "magpie/data/train-00000-of-00001.parquet").to_pylist()
    assert all({t["role"] for t in r["conversation"]} == {"user", "assistant"} for r in magpie)
    top = pq.read_table(demo / "magpie/top_300k_shorter_conversations/train-00000-of-00001.parquet")
    assert "messages" in top.column_names


def test_fracatlas_annotations_agree(demo):
    root = demo / "fracatlas"
    frac = sorted((root / "images/Fractured").glob("IMG*.jpg"))
    normal = sorted((root / "images/Non_fractured").glob("IMG*.jpg"))
    assert len(frac) + len(normal) == 30 and frac and normal
    coco = json.loads((root / "Annotations/COCO JSON/COCO_fracture_masks.json").read_text())
    imgs = {i["id"]: i for i in coco["images"]}
    for ann in coco["annotations"]:
        im = imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        stem = im["file_name"][:-4]
        voc = ET.parse(root / f"Annotations/PASCAL VOC/{stem}.xml").getroot().find("object/bndbox")
        assert [int(voc.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")] == [x, y, x + w, y + h]
        _, cx, cy, bw, bh = map(float, (root / f"Annotations/YOLO/{stem}.txt").read_text().split())
        assert abs(cx * im["width"] - (x + w / 2)) < 0.01 and abs(bw * im["width"] - w) < 0.01
        assert abs(cy * im["height"] - (y + h / 2)) < 0.01 and abs(bh * im["height"] - h) < 0.01
    assert len(coco["annotations"]) == len(frac)
    with open(root / "dataset.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["fractured"]) for r in rows) == len(frac)


# ------------------------------------------------------------------------------------------------ planted defects
def test_corrupt_image_fails_to_decode(demo, planted):
    p = by_kind(planted, "corrupt_image")[0]
    with zipfile.ZipFile(demo / p["file"]) as zf:
        data = zf.read(p["member"])
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(data))


def test_truncated_image_opens_but_fails_to_load(demo, planted):
    p = by_kind(planted, "truncated_image")[0]
    with medmax_tar(demo) as tf:
        data = tf.extractfile(p["member"]).read()
    im = Image.open(io.BytesIO(data))  # the header is intact ...
    with pytest.raises(OSError):
        im.load()  # ... the pixels are not


def test_size_count_and_bomb_defects(demo, planted):
    small = by_kind(planted, "too_small_image")[0]
    assert Image.open(demo / "mecovqa" / small["image"]).size == (40, 30)
    many = by_kind(planted, "too_many_images")[0]
    recs = {r["id"]: r for r in json.loads((demo / many["data_file"]).read_text())}
    assert len(recs[many["record"]]["image"]) == 6
    bomb = by_kind(planted, "decompression_bomb")[0]
    assert (demo / "mecovqa" / bomb["image"]).stat().st_size < 10_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(demo / "mecovqa" / bomb["image"])
    empty = by_kind(planted, "empty_mask")[0]
    assert not np.asarray(Image.open(demo / "mecovqa/SAMed2Dv1" / empty["mask"])).any()


def test_missing_images_are_really_missing(demo, planted):
    kinds = {p["source"]: p for p in by_kind(planted, "missing_image")}
    names = set()
    for k in (0, 1):
        with zipfile.ZipFile(demo / f"pubmedvision/images_{k}.zip") as zf:
            names |= set(zf.namelist())
    assert kinds["pubmedvision"]["member"] not in names
    assert kinds["medtrinity"]["member"] not in zst_members(demo / kinds["medtrinity"]["file"])


def test_image_modes(demo, planted):
    modes = {}
    for p in by_kind(planted, "image_mode"):
        if p["source"] == "mecovqa":
            modes[p["mode"]] = Image.open(demo / "mecovqa" / p["image"]).mode
        else:
            with zipfile.ZipFile(demo / "pubmedvision" / f"images_{p['row'] % 2}.zip") as zf:
                modes[p["mode"]] = Image.open(io.BytesIO(zf.read(p["member"]))).mode
    assert {"L", "I;16", "RGB", "P"} <= set(modes)
    assert all(k == v for k, v in modes.items()), modes


def test_exact_eval_leak_is_byte_identical(demo, planted):
    p = by_kind(planted, "eval_leak_exact")[0]
    with medmax_tar(demo) as tf:
        data = tf.extractfile(p["member"]).read()
    assert data == (demo / p["eval_file"]).read_bytes()
    assert p["phash_distance"] == 0


def test_reencoded_eval_leak_is_a_near_duplicate(demo, planted):
    p = by_kind(planted, "eval_leak_reencoded")[0]
    data = zst_members(demo / p["file"])[p["member"]]
    original = decode_tsv_image(demo, p["eval_id"])
    assert data != original
    a, b = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(original))
    assert a.size != b.size  # resized, not only re-encoded
    d = imagehash.phash(a) - imagehash.phash(b)
    assert 2 <= d <= 6 and d == p["phash_distance"]


def _training_images(demo) -> dict[str, bytes]:
    out = {}
    for z in sorted((demo / "pubmedvision").glob("*.zip")):
        with zipfile.ZipFile(z) as zf:
            out.update({f"pubmedvision/{n}": zf.read(n) for n in zf.namelist()})
    with medmax_tar(demo) as tf:
        out.update({f"medmax/{m.name}": tf.extractfile(m).read() for m in tf.getmembers()})
    for n, data in zst_members(next((demo / "medtrinity").rglob("*.tar.zst"))).items():
        out[f"medtrinity/{n}"] = data
    for t in sorted((demo / "cambrian").glob("*.tar.gz")):
        with tarfile.open(t) as tf:
            out.update({f"cambrian/{m.name}": tf.extractfile(m).read() for m in tf.getmembers()})
    for p in [*(demo / "medgrit").rglob("*.png"), *(demo / "mecovqa/SAMed2Dv1/images").glob("*.png"),
              *(demo / "fracatlas/images").rglob("*.jpg")]:
        out[str(p.relative_to(demo))] = p.read_bytes()
    return out


def test_only_the_planted_images_are_near_evaluation_images(demo, planted):
    """With 64-bit pHash: the exact leak at 0, the re-encoded one at 2-6, every other training image > 8 bits
    from every evaluation image - so a leakage radius between finds exactly the planted leaks."""
    from aloevision.evalsets import iter_eval_images

    cfg = OmegaConf.merge(OmegaConf.create({"paths": {"demo_dir": str(demo)}}),
                          {"eval": OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/eval/demo.yaml")})
    ev = []
    for b in cfg.eval.benchmarks.values():
        for _, img in iter_eval_images(b):
            ev.append(imagehash.phash(Image.open(io.BytesIO(img) if isinstance(img, bytes) else img)))
    leaks = {p["member"]: p["phash_distance"] for p in planted if p["kind"].startswith("eval_leak")}
    nearest = {}
    for name, data in _training_images(demo).items():
        try:
            h = imagehash.phash(Image.open(io.BytesIO(data)))
        except (OSError, Image.DecompressionBombError):  # the planted unreadable ones
            continue
        nearest[name] = min(h - e for e in ev)
    assert len(nearest) > 150
    for name, d in nearest.items():
        member = name.split("/", 1)[1]
        if member in leaks:
            assert d == leaks[member], (name, d)
        else:
            assert d > 8, f"{name} is {d} bits from an evaluation image but was not planted as a leak"
    item_leaks = [p for p in planted if p["kind"] == "eval_leak_item"]
    assert len(item_leaks) == LEAK_ITEMS * LEAK_COPIES and {p["phash_distance"] for p in item_leaks} == {0}
    assert len(leaks) == 2 + len(item_leaks) and min(leaks.values()) == 0 and 2 <= max(leaks.values()) <= 6


def test_incoherent_and_structural_text_defects(demo, planted):
    p = by_kind(planted, "incoherent_qa")[0]
    rec = {r["id"]: r for r in json.loads((demo / p["data_file"]).read_text())}[p["record"]]
    q, a = (t["value"] for t in rec["conversations"])
    assert "modality" in q and not any(m.lower() in a.lower() for m in MODALITIES) and "Photosynthesis" in a
    aloe = {r["id"]: r for r in json.loads((demo / "aloe_text/aloe_beta_medical_collection.json").read_text())}
    roles = lambda k: [t["from"] for t in aloe[by_kind(planted, k)[0]["record"]]["conversations"]]  # noqa: E731
    assert roles("non_alternating_turns") == ["human", "human", "gpt"]
    assert "gpt" not in roles("no_assistant_turn")
    empty = aloe[by_kind(planted, "empty_turn")[0]["record"]]["conversations"]
    assert empty[-1]["value"] == ""


def test_medmax_and_cambrian_row_defects(demo, planted):
    rows = [json.loads(x) for x in (demo / "medmax/train.jsonl").read_text().splitlines()]
    for p in by_kind(planted, "generation_task"):
        assert "Generation" in rows[p["row"]]["task"] and rows[p["row"]]["text"].endswith("<image>")
    cred = rows[by_kind(planted, "credential_no_image")[0]["row"]]
    assert cred["credential"] == "yes" and cred["image_path"] is None
    camb = [json.loads(x) for x in (demo / "cambrian/jsons/Cambrian10M.jsonl").read_text().splitlines()]
    assert ".." in camb[by_kind(planted, "path_escape")[0]["row"]]["image"]
    assert len(by_kind(planted, "text_only_variant")) >= 4


# ------------------------------------------------------------------------------------------------ answerability
def _finding_quadrant(img: Image.Image) -> str:
    a = np.asarray(img.convert("L"), dtype=np.float32)
    ys, xs = np.nonzero(a >= 240)  # the finding is the only near-white blob (the body outline is ~217)
    h, w = a.shape
    col = "left" if xs.mean() < w / 2 else "right"
    row = "upper" if ys.mean() < h / 2 else "lower"
    return f"{row} {col}"


def test_image_sets_ask_the_modality_balanced_and_chance_is_25_percent(demo):
    """DemoMCQ: modality questions, options in the fixed order of the training questions, answers balanced over the
    four letters (a constant letter scores 25 %); the ProbMed-like pairs and SLAKE-like open items balanced too."""
    from collections import Counter

    from aloevision.demo.qa import MODALITY_OPTIONS

    with open(demo / "eval/mcq/DemoMCQ.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert 40 <= len(rows) <= 80 and {r["category"] for r in rows} == {"modality"}
    assert all([r[k] for k in "ABCD"] == list(MODALITY_OPTIONS.values()) for r in rows)
    assert set(Counter(r["answer"] for r in rows).values()) == {len(rows) // 4}
    probmed = json.loads((demo / "eval/probmed/test.json").read_text())
    assert Counter(q["gt_ans"] for q in probmed) == {"yes": len(probmed) // 2, "no": len(probmed) // 2}
    assert set(Counter(q["image_type"] for q in probmed).values()) == {len(probmed) // 4}
    slake = [q for q in json.loads((demo / "eval/slake/test.json").read_text()) if q["q_lang"] == "en"]
    assert set(Counter(q["answer"] for q in slake).values()) == {len(slake) // 4} and len(slake) >= 40


def test_careqa_open_answers_are_readable_off_the_image(demo):
    rows = json.loads((demo / "eval/careqa_vision/CareQA-Vis_open.json").read_text())
    assert len(rows) >= 10
    for r in rows:
        img = Image.open(demo / "eval/careqa_vision" / r["image"])
        assert f"in the {_finding_quadrant(img)} region" in r["answer"]


# ------------------------------------------------------------------------------------------------ adapters agree
PLANTED_REASONS = {
    "corrupt_image": {"corrupt_image", "unreadable_image"},
    "truncated_image": {"truncated_image"},
    "too_small_image": {"image_too_small"},
    "too_many_images": {"too_many_images"},
    "missing_image": {"missing_image"},
    "decompression_bomb": {"decompression_bomb"},
    "empty_mask": {"empty_mask"},
    "generation_task": {"generation_task"},
    "credential_no_image": {"credentialed_image"},
    "path_escape": {"path_escape"},
    "non_alternating_turns": {"non_alternating_turns"},
    "no_assistant_turn": {"no_assistant_turn"},
    "empty_turn": {"empty_turn"},
}


def test_source_adapters_drop_every_planted_defect_and_find_the_boxes(demo, planted, tmp_path, monkeypatch):
    from types import SimpleNamespace

    sources = pytest.importorskip("aloevision.sources")
    cleaning = pytest.importorskip("aloevision.cleaning")
    monkeypatch.setenv("ALOEVISION_INDEX_CACHE", str(tmp_path / "index"))
    expected = json.loads((demo / "EXPECTED.json").read_text())
    drops, kept = [], {}
    for name in ("pubmedvision", "medmax", "mecovqa", "medgrit", "medtrinity", "cambrian", "aloe_text", "magpie",
                 "fracatlas"):
        src = SimpleNamespace(name=name, adapter=name, path=str(demo / name), files=[], images=None,
                              hf_config=None, split="train", boxes=True, cap=None, options={},
                              domain="medical", modality="multimodal")
        for item in cleaning.clean(sources.read_source(src)):
            if hasattr(item, "reason"):
                drops.append(item)
            else:
                kept[item.id] = item
    for p in planted:
        if p["kind"] not in PLANTED_REASONS:
            continue
        hits = [d for d in drops if d.source == p["source"] and d.reason in PLANTED_REASONS[p["kind"]]
                and (p.get("record", "\0") in d.id or d.id.endswith(f":{p.get('row')}"))]
        assert hits, f"planted {p} was not dropped; drops: {[(d.id, d.reason) for d in drops]}"
    planted_drops = sum(1 for p in planted if p["kind"] in PLANTED_REASONS)
    assert len(drops) == planted_drops, [(d.id, d.reason) for d in drops]  # nothing else is dropped
    box_re = re.compile(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>")
    checked = 0
    for source, recs in expected.items():
        for rid, info in recs.items():
            if info.get("task") == "MII":
                continue
            sample = next((s for k, s in kept.items() if k.startswith(source + "/") and k.endswith(rid)), None)
            if sample is None:  # e.g. the record of a planted empty mask
                continue
            boxes = [tuple(map(int, b)) for b in box_re.findall(" ".join(sample.texts()))]
            assert boxes, f"{sample.id}: no box in {sample.texts()}"
            assert all(max(abs(x - y) for x, y in zip(b, info["box_1000"])) <= 1 for b in boxes), (sample.id, boxes)
            checked += 1
    assert checked >= 30
