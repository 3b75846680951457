"""The four HEART attacks, the AR training set and HEART scoring (issue 8)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aloevision.adversarial.ar_set import (
    FRACATLAS_ALIASES,
    FRACATLAS_DISPLAY,
    FRACATLAS_LABELS,
    ArRecipe,
    ar_set_counts,
    base_items_from_samples,
    build_ar_set,
)
from aloevision.adversarial.attacks import (
    ATTACKS,
    AttackConfig,
    BaseItem,
    attack_sample,
    prepare_image,
    draw_legend,
    render,
    safe_name,
    to_px,
)
from aloevision.adversarial.heart import (
    TABLE4_COLUMNS,
    HeartConfig,
    build_heart,
    format_table4,
    load_heart,
    load_paper_table4,
    score_heart,
    score_heart_counts,
)
from aloevision.adversarial.heart_sources import demo_heart_sources, load_base_items, write_base_items
from aloevision.adversarial.matching import IoURule, find_labels, iou, label_correct, parse_boxes
from aloevision.schema import Sample, image_part, text_part, turn

REPO = Path(__file__).resolve().parents[2]
PAPER_FACTS = Path("/work/shared/reference/paper-facts.md")


def scan(w: int = 320, h: int = 256, seed: int = 0, mode: str = "L") -> Image.Image:
    """A textured grey image: mid-grey noise, so any drawing changes pixels."""
    a = np.random.default_rng(seed).integers(60, 180, size=(h, w))
    if mode == "I;16":
        return Image.fromarray((a * 200 + 20000).astype(np.uint16))
    return Image.fromarray(a.astype(np.uint8), "L").convert(mode)


def cls_item(image=None, item_id="c1", label="mass", labels=("mass", "no mass", "benign mass", "cyst", "normal")):
    return BaseItem(id=item_id, image=image if image is not None else scan(), task="classification",
                    question="What does this image show? Options: " + ", ".join(labels) + ".",
                    label=label, labels=labels, source="demo_cls")


def det_item(image=None, item_id="d1", boxes=((100, 150, 300, 400),)):
    return BaseItem(id=item_id, image=image if image is not None else scan(seed=1), task="detection",
                    question="Locate the lesion. Answer as (x1,y1),(x2,y2).", boxes=boxes, object_name="lesion",
                    source="demo_det")


def diff_mask(a: Image.Image, b: Image.Image) -> np.ndarray:
    assert a.size == b.size
    return np.any(np.asarray(a, dtype=int) != np.asarray(b, dtype=int), axis=2)


def region_mask(shape: tuple[int, int], rects, grow: int = 0) -> np.ndarray:
    m = np.zeros(shape, bool)
    for x0, y0, x1, y1 in rects:
        m[max(0, y0 - grow):y1 + grow, max(0, x0 - grow):x1 + grow] = True
    return m


# ------------------------------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("make", [cls_item, det_item])
def test_captions_text_is_drawn_inside_the_banner_only(make):
    item = make()
    base = render(item, "base").image
    att = render(item, "captions")
    assert att.prompt == item.question  # the caption is in the image, not the prompt
    (rect,) = att.drawn_px
    diff = diff_mask(base, att.image)
    inside = region_mask(diff.shape, [rect])
    assert not diff[~inside].any(), "pixels changed outside the caption banner"
    assert diff[inside].mean() > 0.9  # an opaque banner over texture changes nearly every pixel
    band = np.asarray(att.image.convert("L"))[rect[1]:rect[3], rect[0]:rect[2]]
    dark_cols = np.nonzero((band < 100).any(axis=0))[0]
    assert (band < 100).sum() > 50 and dark_cols.max() - dark_cols.min() > 60  # a line of glyphs, not a dot
    if item.task == "classification":
        assert att.misleading["label"] in att.misleading["text"] or att.misleading["label"] in item.labels
        assert item.show(att.misleading["label"]) in att.misleading["text"]
    else:
        assert parse_boxes(att.misleading["text"])[0] == tuple(att.misleading["box"])


def test_caption_text_changes_the_pixels_it_should():
    """Two different wrong captions give different banners: the pixels carry the text, not just a white bar."""
    item = cls_item()
    seen = {}
    for seed in range(30):
        att = render(item, "captions", AttackConfig(seed=seed))
        seen.setdefault(att.misleading["text"], att.image.tobytes())
    assert len(seen) >= 3 and len(set(seen.values())) == len(seen)


def test_caption_banner_avoids_the_truth_box():
    top = det_item(boxes=((100, 20, 300, 200),))
    bottom = det_item(boxes=((100, 800, 300, 990),))
    r_top = render(top, "captions").drawn_px[0]
    r_bottom = render(bottom, "captions").drawn_px[0]
    assert r_top[1] > 0  # truth at the top -> banner at the bottom
    assert r_bottom[1] == 0


def test_detection_legend_outlines_the_wrong_box():
    item = det_item()
    cfg = AttackConfig()
    base = render(item, "base", cfg).image
    att = render(item, "legends", cfg)
    wb = att.misleading["box"]
    assert all(iou(wb, t) < cfg.max_wrong_iou for t in item.boxes)
    diff = diff_mask(base, att.image)
    assert not diff[~region_mask(diff.shape, att.drawn_px)].any(), "pixels changed outside the legend"
    x0, y0, x1, y1 = to_px(wb, att.image.size)
    px = np.asarray(att.image)
    assert (px[y0 + 1, x0 + 5:x1 - 5] == cfg.legend_color).all()  # top edge of the outline
    assert (px[y0 + 5:y1 - 5, x0 + 1] == cfg.legend_color).all()  # left edge
    assert not diff[y0 + 8:y1 - 8, x0 + 8:x1 - 8].any()  # the region itself stays visible
    # the corner key carries the swatch colour and stays off the truth box
    key = att.drawn_px[-1]
    assert (px[key[1]:key[3], key[0]:key[2]] == cfg.legend_color).all(axis=2).sum() > 20
    tx0, ty0, tx1, ty1 = to_px(item.box, att.image.size)
    assert not region_mask(diff.shape, [key])[ty0:ty1, tx0:tx1].any()
    assert att.prompt == item.question and att.misleading["text"] == "lesion"


def test_legend_tag_never_covers_the_box_it_labels():
    cfg = AttackConfig()
    for box in ([40, 0, 120, 30], [40, 200, 120, 256], [40, 100, 120, 140]):  # at the top, bottom, middle
        im = prepare_image(scan(320, 256), cfg)
        outline, tag, key = draw_legend(im, "lesion", cfg, [], box)
        assert outline == box
        overlap = min(tag[2], box[2]) - max(tag[0], box[0]) > 0 and min(tag[3], box[3]) - max(tag[1], box[1]) > 0
        assert not overlap, (box, tag)


def test_image_names_are_unique_per_id():
    assert safe_name("a/b#c") != safe_name("a_b_c") and safe_name("a/b") == safe_name("a/b")


def test_classification_legend_is_a_corner_key():
    item = cls_item()
    base = render(item, "base").image
    att = render(item, "legends")
    diff = diff_mask(base, att.image)
    (key,) = att.drawn_px
    assert diff.any() and not diff[~region_mask(diff.shape, [key])].any()
    assert (key[2] - key[0]) * (key[3] - key[1]) < 0.2 * diff.size
    assert att.misleading["text"] == item.show(att.misleading["label"])


@pytest.mark.parametrize("variant", ["prompt", "sycophancy"])
def test_text_attacks_put_the_misleading_content_in_the_prompt(variant, tmp_path):
    c, d = cls_item(), det_item()
    base_c = render(c, "base").image
    att = render(c, variant)
    assert c.show(att.misleading["label"]) in att.prompt and c.question in att.prompt
    assert att.image.tobytes() == base_c.tobytes() and att.drawn_px == []
    att = render(d, variant)
    assert "<|box_start|>" in att.prompt and parse_boxes(att.prompt)[0] == tuple(att.misleading["box"])
    s = attack_sample(c, variant, tmp_path, source="demo")
    assert s.messages[1]["content"][0]["text"] == "mass"  # the target stays the ground truth
    assert s.meta["attack"] == variant and s.meta["misleading"]["label"] != "mass"


def test_no_attack_leaks_the_ground_truth_over_many_seeds():
    labels = ("mass", "no mass", "benign mass", "malignant mass", "normal")
    items = [cls_item(label=lab, item_id=f"c-{lab}", labels=labels) for lab in labels]
    dets = [det_item(boxes=((100, 150, 300, 400),)), det_item(item_id="big", boxes=((0, 0, 999, 999),)),
            det_item(item_id="two", boxes=((50, 50, 450, 450), (550, 550, 950, 950)))]
    small = scan(96, 96)
    for it in [*items, *dets]:
        im = prepare_image(small, AttackConfig())
        for seed in range(100):
            cfg = AttackConfig(seed=seed)
            for a in ATTACKS:
                att = render(it, a, cfg, image=im)
                content = att.misleading["text"].replace(it.question, " ")
                if it.task == "classification":
                    assert att.misleading["label"] != it.label
                    assert find_labels(content, it.labels) == {att.misleading["label"]}, content
                else:
                    boxes = [tuple(att.misleading["box"]), *parse_boxes(content)]
                    assert all(iou(b, t) < cfg.max_wrong_iou for b in boxes for t in it.boxes)
                    assert all(0 <= v <= 1000 for v in att.misleading["box"])


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    item = det_item()
    a = [attack_sample(item, v, tmp_path / "a", source="demo", cfg=AttackConfig(seed=3)) for v in ("base", *ATTACKS)]
    b = [attack_sample(item, v, tmp_path / "b", source="demo", cfg=AttackConfig(seed=3)) for v in ("base", *ATTACKS)]
    c = [attack_sample(item, v, tmp_path / "c", source="demo", cfg=AttackConfig(seed=4)) for v in ("base", *ATTACKS)]
    for x, y in zip(a, b):
        assert Path(x.images[0]).read_bytes() == Path(y.images[0]).read_bytes()
        assert x.messages == y.messages and x.meta == y.meta
    assert [x.meta["misleading"] for x in a] != [z.meta["misleading"] for z in c]


def test_16bit_greyscale_and_tiny_images(tmp_path):
    # 16-bit values far above 255: a plain convert() would saturate to white; min-max scaling keeps the texture.
    im16 = scan(200, 150, mode="I;16")
    assert im16.mode == "I;16" and np.asarray(im16).min() > 255
    p = prepare_image(im16, AttackConfig())
    arr = np.asarray(p)
    assert p.mode == "RGB" and arr.std() > 20 and (arr == 255).mean() < 0.05  # texture kept, not saturated to white
    path16 = tmp_path / "x16.png"
    im16.save(path16)
    s = attack_sample(cls_item(image=str(path16)), "captions", tmp_path / "out", source="demo")
    att = Image.open(s.images[0])
    assert min(att.size) == 224  # upscaled from 150 to the 224 minimum
    # grey scan + black/white banner is stored as 8-bit greyscale, pixel-identical to what was rendered
    assert att.mode == "L" and np.array_equal(np.asarray(att.convert("RGB")),
                                              np.asarray(render(cls_item(image=im16), "captions").image))
    # tiny image: upscaled so a >= 12 px font fits; the banner stays within its height budget
    tiny = scan(12, 9, seed=5)
    cfg = AttackConfig()
    for it in (cls_item(image=tiny), det_item(image=tiny)):
        att = render(it, "captions", cfg)
        assert min(att.image.size) == cfg.min_side
        rect = att.drawn_px[0]
        assert rect[3] - rect[1] >= cfg.min_font_px  # at least one readable line
        assert rect[3] - rect[1] <= cfg.banner_max_frac * att.image.size[1] + 1
        leg = render(it, "legends", cfg)
        for r in leg.drawn_px:
            assert 0 <= r[0] < r[2] <= leg.image.size[0] and 0 <= r[1] < r[3] <= leg.image.size[1]
    # RGBA and palette inputs are accepted too
    for mode in ("RGBA", "P", "RGB"):
        assert prepare_image(scan(64, 64).convert(mode), cfg).mode == "RGB"


def test_bad_items_fail_with_clear_errors():
    with pytest.raises(ValueError, match="not in labels"):
        cls_item(label="tumour")
    with pytest.raises(ValueError, match=">= 2 labels"):
        BaseItem(id="x", image=scan(), task="classification", question="q?", label="a", labels=("a",))
    with pytest.raises(ValueError, match="boxes"):
        det_item(boxes=((300, 100, 100, 200),))
    with pytest.raises(ValueError, match="unknown attack"):
        render(cls_item(), "rotation")
    with pytest.raises(ValueError, match="lacks"):
        AttackConfig(prompt_classification=("no placeholder",))


# ------------------------------------------------------------------------------------------------- AR set


def fracatlas_samples(tmp_path: Path) -> list[Sample]:
    """A small FracAtlas-shaped set, as the adapter's Samples: 10 images, 4 fractured (1, 1, 2, 3 instances),
    plus 3 defective rows."""
    img_dir = tmp_path / "fa"
    img_dir.mkdir()
    specs = [("fractured", [[100, 100, 300, 300]]), ("fractured", [[500, 600, 700, 800]]),
             ("fractured", [[100, 100, 250, 250], [600, 600, 800, 900]]),
             ("fractured", [[50, 50, 150, 200], [400, 400, 500, 500], [700, 100, 900, 300]])]
    specs += [("non_fractured", [])] * 6
    specs += [("broken", []), ("fractured", [[300, 300, 100, 100]]), ("non_fractured", [[1, 1, 50, 50]])]
    out = []
    for i, (label, boxes) in enumerate(specs):
        p = img_dir / f"IMG{i:07d}.png"
        scan(60 + 10 * i, 80, seed=i).save(p)
        out.append(Sample(id=f"fracatlas/IMG{i:07d}", source="fracatlas", domain="medical", modality="multimodal",
                          messages=[turn("user", image_part(), text_part("x")), turn("assistant", text_part("y"))],
                          images=[str(p)], meta={"label": label, "boxes": boxes, "hand": i % 2 == 0,
                                                 "leg": i % 2 == 1}))
    return out


def test_ar_set_counts_reach_the_paper_total():
    t = ar_set_counts()
    assert t == {"classification/base": 4083, "classification/captions": 4083, "classification/prompt": 4083,
                 "classification/sycophancy": 4083, "detection/captions": 231, "detection/prompt": 231,
                 "detection/sycophancy": 230, "detection/legends": 230, "total": 17254}
    assert abs(t["total"] - 17_200) / 17_200 < 0.005
    assert ar_set_counts(recipe=ArRecipe(detection_unit="image"))["total"] == 4083 * 4 + 717
    assert ar_set_counts(recipe=ArRecipe(detection_unit="all"))["total"] == 4083 * 4 + 717 * 4
    with pytest.raises(ValueError, match="legends"):
        ArRecipe(detection_variants=("captions", "prompt", "sycophancy"))


def test_ar_set_build_matches_the_counts_table(tmp_path):
    items, drops = base_items_from_samples(fracatlas_samples(tmp_path))
    assert sorted(d.reason for d in drops) == ["boxes_on_non_fractured", "invalid_box", "unknown_label"]
    cls = [i for i in items if i.task == "classification"]
    det = [i for i in items if i.task == "detection"]
    assert len(cls) == 12 and len(det) == 4 and sum(len(d.boxes) for d in det) == 7
    assert "hand radiograph" in cls[0].question
    res = build_ar_set(items, tmp_path / "ar", drops=drops)
    assert res.counts == res.expected == ar_set_counts(12, 4, 7)
    assert res.counts["detection/captions"] == 2 and res.counts["detection/legends"] == 1
    rows = [Sample.from_dict(json.loads(x)) for x in res.jsonl.read_text().splitlines()]
    assert len(rows) == res.counts["total"] == 12 * 4 + 7 and len({r.id for r in rows}) == len(rows)
    assert {r.meta["attack"] for r in rows} == {"base", *ATTACKS}
    for r in rows:
        assert Path(r.images[0]).is_file() and r.image_part_count() == 1
        ans = r.texts("assistant")[0]
        if r.meta["task"] == "classification":
            assert ans == FRACATLAS_DISPLAY[r.meta["truth"]["label"]]
            assert label_correct(ans, r.meta["truth"]["label"], FRACATLAS_LABELS, FRACATLAS_ALIASES)
        else:
            assert [list(b) for b in parse_boxes(ans)] == r.meta["truth"]["boxes"]
    assert len((tmp_path / "ar" / "drops.jsonl").read_text().splitlines()) == 3
    # variants that draw nothing share the item's one clean image; drawn variants get their own file
    by_item: dict[str, dict[str, str]] = {}
    for r in rows:
        by_item.setdefault(r.meta["base_id"], {})[r.meta["attack"]] = r.images[0]
    c = by_item["fracatlas/IMG0000000"]
    assert c["base"] == c["prompt"] == c["sycophancy"] != c["captions"]
    assert len(list((tmp_path / "ar" / "images").iterdir())) == len({r.images[0] for r in rows})
    legend = next(r for r in rows if r.meta["attack"] == "legends")
    assert Image.open(legend.images[0]).mode == "RGB"  # the coloured legend keeps its colour


# --------------------------------------------------------------------------------------------------- HEART


def heart_sources():
    return {"demo_cls": [cls_item(item_id=f"c{i}", label=lab) for i, lab in enumerate(("mass", "cyst", "normal"))],
            "demo_det": [det_item(item_id="d0"), det_item(item_id="d1", boxes=((600, 100, 900, 300),))]}


def test_heart_refuses_the_ar_training_source(tmp_path):
    with pytest.raises(ValueError, match="AR training source"):
        build_heart({"fracatlas": [cls_item()]}, tmp_path)
    bad = cls_item(item_id="fracatlas/IMG0000001")
    with pytest.raises(ValueError, match="AR training source"):
        build_heart({"xray_eval": [bad]}, tmp_path)
    build_heart({"fracatlas": [cls_item()]}, tmp_path, HeartConfig(ar_source="other"))  # configurable


def test_heart_layout_and_scoring(tmp_path):
    res = build_heart(heart_sources(), tmp_path)
    items = load_heart(res.jsonl)
    assert len(items) == 3 * 4 + 2 * 5
    oracle = {s.id: s.texts("assistant")[0] for s in items}
    scores = score_heart(items, oracle)
    assert list(scores) == [f"heart/{t}/{c}" for t, cs in TABLE4_COLUMNS.items() for c in cs]
    assert set(scores.values()) == {100.0}
    # a model that repeats the misleading content: 0 on every attacked column, right on base
    fooled = {}
    for s in items:
        m = s.meta["misleading"]
        if m is None:
            fooled[s.id] = oracle[s.id]
        elif "label" in m:
            fooled[s.id] = f"The answer is {m['label'].replace('_', ' ')}."
        else:
            x1, y1, x2, y2 = m["box"]
            fooled[s.id] = f"<|object_ref_start|>lesion<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    s2 = score_heart(items, fooled)
    assert s2["heart/classification/base"] == 100.0 and s2["heart/detection/base"] == 100.0
    assert all(v == 0.0 for k, v in s2.items() if not k.endswith("/base"))
    with pytest.raises(ValueError, match="no prediction"):
        score_heart(items, {})
    counts = score_heart_counts(items, {}, missing="wrong")
    assert counts["heart/detection/leg"] == {"n": 2, "correct": 0, "missing": 2}
    table = format_table4({"tiny (demo)": scores}, paper_rows=["Aloe-Vision-7B-S1", "Aloe-Vision-7B-S2"])
    lines = table.splitlines()
    assert len(lines) == 5 and lines[0].count("|") == 11
    assert "| tiny (demo) (measured) | 100.0 |" in table and "59.6 | 2.3 | 15.0 | 41.6 | 69.1" in table


def test_heart_sources_roundtrip_and_demo(tmp_path):
    sources = demo_heart_sources(tmp_path / "src", n=4)
    assert {k: len(v) for k, v in sources.items()} == {"demo_modality": 4, "demo_finding": 4}
    loaded, drops = load_base_items(tmp_path / "src" / "demo_finding.jsonl", "demo_finding")
    assert not drops and [(i.id, i.boxes, i.image) for i in loaded] == \
        [(i.id, i.boxes, i.image) for i in sources["demo_finding"]]
    # relative image paths resolve against the JSONL's folder; broken lines become counted drops
    (tmp_path / "rel").mkdir()
    scan(64, 64).save(tmp_path / "rel" / "a.png")
    (tmp_path / "rel" / "items.jsonl").write_text(
        json.dumps({"id": "r/1", "image": "a.png", "task": "classification", "question": "q?", "label": "a",
                    "labels": ["a", "b"]}) + "\n{not json\n"
        + json.dumps({"id": "r/3", "image": "a.png", "task": "detection", "question": "q?", "boxes": [[5, 5, 1, 1]]})
        + "\n")
    items, drops = load_base_items(tmp_path / "rel" / "items.jsonl", "rel")
    assert [i.image for i in items] == [str(tmp_path / "rel" / "a.png")]
    assert [d.reason for d in drops] == ["malformed_record", "malformed_record"] and drops[1].id == "r/3"
    write_base_items(items, tmp_path / "rel" / "again.jsonl")
    assert load_base_items(tmp_path / "rel" / "again.jsonl", "rel")[0][0].label == "a"
    res = build_heart(sources, tmp_path / "heart")
    assert len(res.samples) == 4 * 4 + 4 * 5 and all(Path(s.images[0]).is_file() for s in res.samples)


def test_iou_rule_edge_cases():
    truth = [(0, 0, 100, 100)]
    rule = IoURule()
    assert iou((0, 0, 100, 50), truth[0]) == 0.5
    assert rule.correct(parse_boxes("(0,0),(100,50)"), truth)  # exactly 0.5 counts by default
    assert not IoURule(inclusive=False).correct(parse_boxes("(0,0),(100,50)"), truth)
    assert not rule.correct(parse_boxes("(0,0),(100,49)"), truth)
    assert rule.correct(parse_boxes("<|box_start|>(100,100),(0,0)<|box_end|>"), truth)  # swapped corners
    assert rule.correct(parse_boxes("[0, 0, 100, 100]"), truth)
    assert rule.correct(parse_boxes("(0.0,0.0),(0.1,0.1)"), truth)  # unit floats -> 1000 grid
    assert not rule.correct(parse_boxes("(5,5),(5,90)"), truth)  # degenerate box
    assert not rule.correct(parse_boxes("no box here"), truth)
    assert not rule.correct(parse_boxes("(10,10),(20,20)"), [])
    two = parse_boxes("suggested (500,500),(600,600) but really (0,0),(100,100)")
    assert not rule.correct(two, truth) and IoURule(match="any").correct(two, truth)
    assert rule.correct(parse_boxes("(500,500),(600,600)"), [(900, 900, 999, 999), (500, 500, 600, 600)])
    with pytest.raises(ValueError):
        IoURule(threshold=0)


def test_label_matching_is_robust():
    labs, al = FRACATLAS_LABELS, FRACATLAS_ALIASES
    assert label_correct("Not fractured.", "non_fractured", labs, al)
    assert label_correct("non-fractured", "non_fractured", labs, al)
    assert label_correct("There is no fracture.", "non_fractured", labs, al)
    assert not label_correct("Not fractured.", "fractured", labs, al)
    assert label_correct("FRACTURED", "fractured", labs, al)
    assert not label_correct("fractured or not fractured", "fractured", labs, al)  # hedging names both
    assert not label_correct("", "fractured", labs, al)
    assert not label_correct("unfracturedness", "non_fractured", labs, al)  # word boundaries


def test_paper_table4_matches_paper_facts():
    t = load_paper_table4()
    rows = {r["model"]: r for r in t["rows"]}
    assert len(rows) == 20 and t["columns"] == {k: list(v) for k, v in TABLE4_COLUMNS.items()}
    facts = PAPER_FACTS.read_text() if PAPER_FACTS.exists() else ""
    for name, key in (("Aloe-Vision-7B-S1", "7B-S1"), ("Aloe-Vision-7B-S2", "7B-S2")):
        r = rows[name]
        got = [*r["classification"].values(), *r["detection"].values()]
        if facts:
            m = re.search(rf"{key}[^0-9]*([0-9./|\s]+)", facts)
            want = [float(x) for x in re.findall(r"\d+\.\d", m.group(1))][:9]
            assert got == want
        assert len(got) == 9
