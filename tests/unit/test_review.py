"""Review galleries, histograms and coverage heatmaps are written and show the right examples."""

import csv
import json

from PIL import Image

from aloevision.config import FilterConfig, ThresholdConfig
from aloevision.schema import Sample, image_part, text_part, turn
from aloevision.scoring.coverage import coverage
from aloevision.scoring.review import review, select_examples
from aloevision.scoring.store import ScoreRecord
from aloevision.scoring.thresholds import Thresholds


def _data(tmp_path, n=12):
    img = tmp_path / "scan.png"
    Image.new("RGB", (300, 200), (30, 160, 90)).save(img)
    samples, scores = [], {}
    mods = ["CT", "MRI", "X-ray"]
    for i in range(n):
        src = "alpha" if i % 2 == 0 else "beta"
        s = Sample(id=f"{src}/{i}", source=src, domain="medical", modality="multimodal",
                   messages=[turn("user", image_part(), text_part(f"Question number {i} <b>?")),
                             turn("assistant", text_part(f"Answer number {i}."))], images=[str(img)])
        samples.append(s)
        scores[s.id] = ScoreRecord(
            id=s.id, source=src, score=float(1 + i % 5) if i != 5 else None, ppl=1.2 + i * 3.0,
            parse_failure=None if i != 5 else "missing_sq", n_loss_tokens=5,
            tags={"MOD": [mods[i % 3]], "MED": ["Oncology", "Neurology"] if i % 2 else ["Neurology"],
                  "SBP": ["Brain"], "GBP": ["Head"]} if i != 7 else {},
        )
    return samples, scores


def test_review_files_and_gallery_content(tmp_path):
    samples, scores = _data(tmp_path)
    cfg = FilterConfig(name="t", default=ThresholdConfig(min_score=3, min_ppl=2.0),
                       per_source={"beta": ThresholdConfig(max_ppl=20.0)})
    out = review(samples, scores, cfg, tmp_path / "review", k=2)
    assert set(out) == {"alpha", "beta"}
    for src, paths in out.items():
        assert paths["hist"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page = paths["gallery"].read_text()
        assert page.count("data:image/jpeg;base64,") >= 4
        assert "Question number" in page and "&lt;b&gt;" in page and "<b>?" not in page  # text is escaped
    alpha = out["alpha"]["gallery"].read_text()
    # alpha: scores 1,3,5,2,4,1 for ids 0,2,4,6,8,10 -> lowest score 1 (ids 0, 10), highest 5 (id 4)
    assert "Answer number 0." in alpha and "Answer number 4." in alpha
    assert "just outside min_score=3" in alpha and "just inside min_ppl=2" in alpha
    beta = out["beta"]["gallery"].read_text()
    assert "just outside max_ppl=20" in beta and "parse failures" in beta and "missing_sq" in beta
    assert "DROP: high_perplexity" in beta


def test_select_examples_near_thresholds():
    recs = [ScoreRecord(id=str(i), source="s", score=float(s), ppl=p)
            for i, (s, p) in enumerate([(1, 1.0), (2, 1.9), (3, 2.1), (4, 9.0), (5, 30.0)])]
    g = select_examples(recs, Thresholds(min_score=3, min_ppl=2.0, max_ppl=10.0), k=1)
    assert [r.id for r in g["just inside min_score=3"]] == ["2"]
    assert [r.id for r in g["just outside min_score=3"]] == ["1"]
    assert [r.id for r in g["just inside min_ppl=2"]] == ["2"]
    assert [r.id for r in g["just outside min_ppl=2"]] == ["1"]
    assert [r.id for r in g["just inside max_ppl=10"]] == ["3"]
    assert [r.id for r in g["just outside max_ppl=10"]] == ["4"]
    assert [r.id for r in g["lowest score"]] == ["0"] and [r.id for r in g["highest perplexity"]] == ["4"]


def test_coverage_heatmaps(tmp_path):
    _, scores = _data(tmp_path)
    out = coverage(scores.values(), tmp_path / "cov")
    mm = out["MOD_x_MED"]
    assert mm["png"].read_bytes()[:4] == b"\x89PNG" and mm["tagged"] == 11 and mm["untagged"] == 1
    rows = list(csv.reader(open(mm["csv"])))
    header = rows[0]
    body = {r[0]: dict(zip(header[1:], map(int, r[1:]))) for r in rows[1:]}
    # primary tags only: even ids count under Neurology, odd ids under Oncology (not also Neurology); id 7 untagged.
    # CT = ids 0, 3, 6, 9
    assert body["CT"]["Neurology"] == 2 and body["CT"]["Oncology"] == 2
    assert sum(sum(r.values()) for r in body.values()) == 11
    assert set(out) == {"MOD_x_MED", "MOD_x_SBP", "MOD_x_GBP"}
    assert json.loads((tmp_path / "cov" / "coverage_summary.json").read_text())["MOD_x_SBP"]["tagged"] == 11
