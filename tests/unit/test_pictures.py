"""The pictures a user looks at first: token allocation, coverage heatmap, score/perplexity histograms, leakage
gallery. Each was checked by eye; these tests pin what was wrong (empty legend, unreadable cells, overlapping axis
labels, a mostly empty canvas, "1 pairs")."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures saved during the test (inspected after drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    orig = plt.Figure.savefig

    def grab(fig, *a, **k):
        fig.canvas.draw()
        saved.append(fig)
        return orig(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", grab)
    return saved


def _comp(targets=None):
    cats = {"medical_multimodal": 0.7, "medical_text": 0.1, "general_multimodal": 0.1, "general_text": 0.1}
    comp = [{"level": "source", "source": f"s_{c}", "category": c, "loss_tokens": int(1000 * v), "share": v,
             "requested_share": None} for c, v in cats.items()]
    comp += [{"level": "category", "source": "", "category": c, "loss_tokens": int(1000 * v), "share": v,
              "requested_share": (targets or {}).get(c)} for c, v in cats.items()]
    return comp


def test_token_allocation_legends(tmp_path, figures):
    from aloevision.stages.mix import _chart

    _chart(tmp_path / "a.png", _comp())  # the demo: no targets
    a, b = figures[-1].axes
    assert a.get_legend() is None and "no targets" in a.get_title()  # no empty "requested" entry
    assert [t.get_text() for t in b.get_legend().get_texts()] == ["medical_multimodal", "medical_text",
                                                                   "general_multimodal", "general_text"]
    _chart(tmp_path / "b.png", _comp({"medical_multimodal": 0.4, "medical_text": 0.3, "general_multimodal": 0.1,
                                      "general_text": 0.2}))
    a = figures[-1].axes[0]
    assert [t.get_text() for t in a.get_legend().get_texts()] == ["observed", "requested (target)"]
    assert "40.0" in [t.get_text() for t in a.texts]


def test_heatmap_cells_readable(tmp_path, figures):
    from aloevision.scoring.coverage import VOCAB, plot_heatmap

    rows, cols = VOCAB["MOD"], VOCAB["MED"]
    plot_heatmap(Counter({(rows[0], cols[0]): 1, (rows[-1], cols[-1]): 99}), "MOD", "MED", tmp_path / "h.png")
    texts = {t.get_text(): t for t in figures[-1].axes[0].texts}
    assert texts["99"].get_color() == "black" and texts["1"].get_color() == "white"  # never white on yellow
    assert texts["99"].get_fontsize() >= 8


def test_histogram_axis_labels_do_not_overlap(tmp_path, figures):
    from aloevision.scoring.review import plot_histograms
    from aloevision.scoring.thresholds import Thresholds

    ppl = np.random.default_rng(0).normal(800, 30, 90)  # a narrow range: used to get "7.4x10^2" minor labels
    plot_histograms("medgrit", [4] * 90, ppl, 0, Thresholds(min_score=2), tmp_path / "h.png")
    ax = figures[-1].axes[1]
    labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text()
              and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    assert 2 <= len(labels) <= 8 and all("10^" not in t.get_text() for t in labels)
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda bb: bb.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))


def test_leakage_gallery_one_pair_fills_its_canvas(tmp_path):
    from aloevision.leakage.gallery import LeakPair, write_gallery

    img = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)).save(img)
    out = write_gallery([LeakPair(str(img), str(img), "medmax", "demo_open", 0)], tmp_path / "g", title="T")
    w, h = Image.open(out["png"]).size
    assert w <= 2 * 192 + 40 and h <= 192 + 120  # one pair: one cell, not a two-column grid of blanks
    assert "1 image pair shown" in Path(out["html"]).read_text()
