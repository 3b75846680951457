"""Judges: verdict parsing, majority vote (ties, three-way splits, parse failures), Krippendorff's alpha against the
`krippendorff` package's documented values, human-label files, and the transformers backend on the tiny model."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from aloevision.evalsets import EvalItem
from aloevision.evaluation.judges import (
    JudgeBackend,
    TransformersJudge,
    agreement,
    judge_items,
    krippendorff_alpha,
    load_human_labels,
    majority_vote,
    make_judge,
    parse_judge_output,
    rubric_prompt,
    score_open,
)

PARSE_CASES = [
    ("Score: 1.0", 1.0),
    ("Score: 0.5", 0.5),
    ("score: 0", 0.0),
    ("**Score:** 1", 1.0),
    ("Score = .5", 0.5),
    ("Score: [[0.5]]", 0.5),
    ("1.0", 1.0),
    ("0.5.", 0.5),
    ("The model identifies the liver but misses the lesion. Score: 0.5", 0.5),
    ("Initial score: 1.0. On reflection the laterality is wrong. Final score: 0.0", 0.0),
    ("<think>Score: 1.0? no</think>Score: 0.5", 0.5),
    ("Partially correct.", 0.5),
    ("Incorrect", 0.0),
    ("The answer is not correct.", 0.0),
    ("Correct.", 1.0),
    # parse failures: never a silent score
    ("Score: 0.7", None),
    ("Score: 8/10", None),
    ("Score: 10", None),
    ("I would rate this answer highly.", None),
    ("correct ... actually incorrect", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize("reply,expected", PARSE_CASES)
def test_parse_judge_output(reply, expected):
    assert parse_judge_output(reply) == expected


@pytest.mark.parametrize(
    "votes,expected",
    [
        ([1.0, 1.0, 0.0], 1.0),  # plain majority
        ([0.5, 0.0, 0.5], 0.5),
        ([0.0, 0.5, 1.0], 0.5),  # three-way split -> median
        ([1.0, 0.0, 0.5], 0.5),  # order does not matter
        ([1.0, None, 0.0], 0.0),  # one parse failure, 1-1 tie -> lower median
        ([1.0, None, 1.0], 1.0),
        ([None, None, 0.5], 0.5),
        ([None, None, None], None),  # nobody scored: unscored, not zero
        ([0.0, 0.0, 1.0, 1.0], 0.0),  # even tie -> lower median
        ([0.5, 0.5, 1.0, 1.0, 0.0], 0.5),  # tie between 0.5 and 1.0 -> lower median of all votes
        ([float("nan"), 1.0], 1.0),
    ],
)
def test_majority_vote(votes, expected):
    assert majority_vote(votes) == expected


def test_alpha_matches_krippendorff_documentation_examples():
    # Examples from the docstring of krippendorff.alpha (Krippendorff 2011 data).
    nan = np.nan
    data = [
        [nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
        [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
        [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4],
    ]
    assert krippendorff_alpha(data, level="nominal", value_domain=None) == pytest.approx(0.691358, abs=1e-6)
    assert krippendorff_alpha(data, level="interval", value_domain=None) == pytest.approx(0.810845, abs=1e-6)
    data2 = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    assert round(krippendorff_alpha(data2, level="ordinal", value_domain=None), 3) == 0.815
    assert round(krippendorff_alpha(data2, level="ordinal", value_domain=[1, 2, 3, 4, 5]), 3) == 0.815
    # None marks a missing rating like NaN does.
    as_none = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in data2]
    assert round(krippendorff_alpha(as_none, level="ordinal", value_domain=None), 3) == 0.815


def test_alpha_edge_cases():
    assert krippendorff_alpha([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[1.0, 1.0]]) is None  # one rater
    assert krippendorff_alpha([[1.0, 1.0], [1.0, 1.0]]) is None  # no variation: undefined
    assert krippendorff_alpha([[1.0, None], [None, 0.0]]) is None  # no item rated twice


class ScriptedJudge:
    """A JudgeBackend replying from a fixed script (a real backend for judges whose replies are known)."""

    def __init__(self, name, replies):
        self.name, self.replies, self.prompts = name, replies, []

    def generate(self, prompts):
        self.prompts.extend(prompts)
        return list(self.replies)


def _items(n):
    return [EvalItem(id=f"s{i}", benchmark="slake", kind="open", question=f"Which organ {i}?", answer="liver")
            for i in range(n)]


def test_judge_items_majority_failures_and_agreement(tmp_path):
    items = _items(4)
    preds = ["liver", "the liver and spleen", "kidney", "lung"]
    judges = [
        ScriptedJudge("j1", ["Score: 1.0", "Score: 0.5", "Score: 0.0", "Score: 1.0"]),
        ScriptedJudge("j2", ["Score: 1.0", "Score: 1.0", "garbage", "Score: 0.5"]),
        ScriptedJudge("j3", ["Correct", "Score: 0.5", "Score: 0.0", "Score: 0.0"]),
    ]
    assert all(isinstance(j, JudgeBackend) for j in judges)
    run = judge_items(items, preds, judges)
    assert run.majority == [1.0, 0.5, 0.0, 0.5]  # last item: three-way split -> median
    assert run.parse_failures == {"j1": 0, "j2": 1, "j3": 0}
    assert "Reference answer: liver" in judges[0].prompts[1] and "the liver and spleen" in judges[0].prompts[1]
    rep = run.report()
    assert rep["unscored"] == 0 and rep["mean_score"] == pytest.approx(50.0)
    assert rep["alpha_judges"] == pytest.approx(krippendorff_alpha(run.votes))

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "item_id,score,annotator\n"
        "s0,1,a\ns1,partially correct,a\ns2,0,a\ns3,0.5,a\n"
        "s0,correct,b\ns1,0.5,b\ns2,0.0,b\ns3,0,b\n"
        "s9,0.7,b\n"  # off the grid: dropped with a reason
        "s0,1,b\n"  # duplicate
    )
    human = load_human_labels(labels)
    assert len(human.dropped) == 2 and "off the rubric grid" in human.dropped[0] and "duplicate" in human.dropped[1]
    ag = agreement(run, human)
    assert ag["items_with_human_labels"] == 4 and ag["human_raters"] == 2
    # Hand check: humans a and b disagree only on s3 (0.5 vs 0.0).
    assert ag["alpha_humans"] == pytest.approx(krippendorff_alpha([[1, 0.5, 0, 0.5], [1, 0.5, 0, 0]]))
    assert ag["alpha_humans_plus_majority"] == pytest.approx(
        krippendorff_alpha([[1, 0.5, 0, 0.5], [1, 0.5, 0, 0], [1.0, 0.5, 0.0, 0.5]])
    )
    # consensus of a/b per item uses the same lower-median rule: [1, .5, 0, 0] vs majority [1, .5, 0, .5]
    assert ag["alpha_majority_vs_human"] == pytest.approx(krippendorff_alpha([[1, 0.5, 0, 0], [1, 0.5, 0, 0.5]]))


def test_human_labels_file_without_required_columns_is_an_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\ns0,1\n")
    with pytest.raises(ValueError, match="item_id,score"):
        load_human_labels(bad)


def test_judge_items_validates_inputs():
    with pytest.raises(ValueError, match="predictions"):
        judge_items(_items(2), ["x"], [ScriptedJudge("j", ["Score: 1"])])
    with pytest.raises(ValueError, match="no judges"):
        judge_items(_items(1), ["x"], [])


def test_vllm_backend_is_a_clear_error_when_missing():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="vllm is not installed"):
            make_judge("some/model", backend="vllm")
    else:
        pytest.skip("vllm is installed here")
    with pytest.raises(ValueError, match="not known"):
        make_judge("some/model", backend="sglang")


def test_rubric_prompt_has_the_three_fields_and_grid():
    p = rubric_prompt(" What organ? ", "liver", "the liver")
    assert "Question: What organ?" in p and "Reference answer: liver" in p and "Model answer: the liver" in p
    assert "0.0" in p and "0.5" in p and "1.0" in p


def test_transformers_judge_on_the_tiny_model(tmp_path):
    from aloevision.config import TinySpec
    from aloevision.model.tiny import ensure_tiny

    path = ensure_tiny(tmp_path / "cache", dataclasses.asdict(TinySpec()))
    judge = TransformersJudge.from_pretrained(str(path), dtype="float32", max_new_tokens=6, batch_size=2)
    items, preds = _items(3), ["liver", "spleen", "the liver"]
    run = judge_items(items, preds, [judge])
    assert len(run.raw[0]) == 3 and all(isinstance(r, str) for r in run.raw[0])
    # Random weights reply with noise: whatever did not parse is counted, never silently scored.
    parsed = [parse_judge_output(r) for r in run.raw[0]]
    assert run.parse_failures[judge.name] == sum(p is None for p in parsed)
    assert run.majority == parsed
    # Greedy decoding is deterministic.
    assert judge.generate([rubric_prompt("Q?", "liver", "liver")]) == judge.generate(
        [rubric_prompt("Q?", "liver", "liver")]
    )


def test_score_open_with_self_judge_and_scripted_judges(tmp_path):
    import json

    from aloevision.config import TinySpec
    from aloevision.model.processor import load_processor
    from aloevision.model.tiny import ensure_tiny
    from transformers import Qwen2VLForConditionalGeneration

    path = ensure_tiny(tmp_path / "cache", dataclasses.asdict(TinySpec()))
    model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()
    processor = load_processor(str(path))
    items, preds = _items(2), ["liver", "kidney"]
    labels = tmp_path / "labels.csv"
    labels.write_text("item_id,score\ns0,1\ns1,0\n")
    results, report = score_open(
        items, preds,
        ["self", ScriptedJudge("j2", ["Score: 1.0", "Score: 0.0"]), ScriptedJudge("j3", ["Score: 1.0", "Score: 0.0"])],
        self_model=(model, processor), out_dir=tmp_path / "eval", labels_file=labels,
    )
    # Two scripted judges agree, so the majority is theirs whatever the random tiny judge says.
    assert [r.score for r in results] == [1.0, 0.0] and [r.prediction for r in results] == preds
    assert report["judges"] == ["self", "j2", "j3"] and report["agreement"]["alpha_majority_vs_human"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "eval" / "judges.jsonl").read_text().splitlines()]
    assert rows[0]["votes"]["j2"] == 1.0 and "self" in rows[0]["raw"] and rows[1]["majority"] == 0.0
    with pytest.raises(ValueError, match="self_model"):
        score_open(items, preds, ["self"])


def test_rules_judge_grades_word_recall_through_the_rubric_prompt(tmp_path):
    from aloevision.evalsets.base import EvalItem
    from aloevision.evaluation.judges import score_open

    items = [EvalItem(str(i), "slake", "open", "Which organ?", "left lung") for i in range(3)]
    preds = ["The left lung.", "lung", "liver"]
    results, report = score_open(items, preds, ["rules"], out_dir=tmp_path, name="j")
    assert [r.score for r in results] == [1.0, 0.5, 0.0]
    assert report["judges"] == ["rules"] and (tmp_path / "j.jsonl").is_file()


def test_paper_judges_are_existing_instruct_models():
    from omegaconf import OmegaConf

    from aloevision.evaluation.judges import DEFAULT_JUDGES

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/eval/paper.yaml")
    assert list(conf.judges) == list(DEFAULT_JUDGES)
    # Olmo 3 has no 32B Instruct; the 32B instruction model is Olmo 3.1's (docs/evaluation.md)
    assert "allenai/Olmo-3.1-32B-Instruct" in DEFAULT_JUDGES and "allenai/Olmo-3-32B-Instruct" not in DEFAULT_JUDGES
