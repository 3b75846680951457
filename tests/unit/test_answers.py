"""Answer extraction on real-looking model outputs, ProbMed pair scoring, CareQA-Vision splits, aggregation."""

import pytest

from aloevision.evalsets import EvalItem
from aloevision.evaluation.answers import (
    ItemResult,
    counts,
    extract_choice,
    extract_yesno,
    score_item,
    score_result,
    summarise,
)

OPTIONS = {"A": "Pneumothorax", "B": "Pneumonia", "C": "Pleural effusion", "D": "Cardiomegaly"}

# (model output, expected letter or None)
MCQ_CASES = [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("B. Pneumonia", "B"),
    ("(C) Pleural effusion", "C"),
    ("D) Cardiomegaly is the most likely finding.", "D"),
    ("The answer is (B).", "B"),
    ("The answer is B", "B"),
    ("the answer is b.", "B"),
    ("Answer: C", "C"),
    ("**Answer:** D", "D"),
    ("The correct option is (A) Pneumothorax", "A"),
    ("Pneumonia", "B"),
    ("The image shows a consolidation consistent with pneumonia.", "B"),
    ("pleural effusion", "C"),
    # reasoning first, answer last: the final statement wins
    ("Let's think. Option A would show a visible pleural line, which is absent. Option D requires an enlarged "
     "heart. The opacity is lobar. Therefore, the answer is B.", "B"),
    ("Option A is incorrect because there is no pleural line. The correct answer is C.", "C"),
    ("<think>Could be A or C... the meniscus sign suggests fluid.</think>\nThe answer is (C).", "C"),
    ("<think>A? B?</think> C", "C"),
    ("I think the answer is (D) Cardiomegaly.", "D"),
    ("Final answer: A", "A"),
    ("A pleural effusion is seen at the left base.", "C"),  # the article "A" is not option A
    ("The answer is a pleural effusion.", "C"),
    # multiple letters without an explicit statement: no answer (documented rule)
    ("A or C", None),
    ("It could be (A) or (C).", None),
    ("Both pneumothorax and pneumonia are possible.", None),
    ("I cannot determine this from the image.", None),
    ("", None),
    ("E", None),  # not an option letter
]


@pytest.mark.parametrize("output,expected", MCQ_CASES)
def test_extract_choice_table(output, expected):
    assert extract_choice(output, OPTIONS).answer == expected


def test_longest_option_text_wins_when_it_contains_the_others():
    opts = {"A": "lung", "B": "left lung", "C": "liver"}
    assert extract_choice("The lesion is in the left lung.", opts).answer == "B"
    assert extract_choice("The lesion is in the lung.", opts).answer == "A"


def test_extract_choice_requires_options():
    with pytest.raises(ValueError, match="options"):
        extract_choice("B", {})


YESNO_CASES = [
    ("Yes", "yes"),
    ("yes.", "yes"),
    ("No, there is no fracture.", "no"),
    ("The answer is no.", "no"),
    ("Looking at the image, there is a mass in the right lung, so yes.", "yes"),
    ("<think>no? yes.</think> No", "no"),
    ("Answer: Yes", "yes"),
    ("yes or no", None),
    ("The image is a CT scan.", None),
]


@pytest.mark.parametrize("output,expected", YESNO_CASES)
def test_extract_yesno_table(output, expected):
    assert extract_yesno(output).answer == expected


def _mcq(i, answer="B", bench="pathmmu"):
    return EvalItem(id=f"{bench}-{i}", benchmark=bench, kind="mcq", question="Q?", answer=answer, options=OPTIONS)


def test_score_item_mcq_and_yesno():
    assert score_item(_mcq(0), "The answer is (B).") == 1.0
    assert score_item(_mcq(0), "The answer is (C).") == 0.0
    assert score_item(_mcq(0, answer="b"), "B") == 1.0  # reference letter case does not matter
    yn = EvalItem(id="y", benchmark="vqa", kind="yesno", question="Q?", answer="Yes")
    assert score_item(yn, "yes, it is") == 1.0
    assert score_item(yn, "no") == 0.0
    assert score_item(yn, "maybe") == 0.0


def test_open_items_need_judges_and_unknown_kinds_fail():
    open_item = EvalItem(id="o", benchmark="slake", kind="open", question="Q?", answer="liver")
    with pytest.raises(ValueError, match="judges"):
        score_item(open_item, "liver")
    bad = EvalItem(id="x", benchmark="slake", kind="free", question="Q?", answer="liver")
    with pytest.raises(ValueError, match="unknown kind"):
        score_item(bad, "liver")


def _pm(pair, i, answer, pred, qa_type="modality"):
    item = EvalItem(
        id=f"pm-{pair}-{i}", benchmark="probmed", kind="probmed", question="Q?", answer=answer,
        meta={"pair_id": pair, "qa_type": qa_type},
    )
    return score_result(item, pred)


def test_probmed_counts_a_pair_only_when_both_are_right():
    results = [
        _pm("p1", 0, "yes", "yes"), _pm("p1", 1, "no", "no"),  # pair right
        _pm("p2", 0, "yes", "yes"), _pm("p2", 1, "no", "yes"),  # one wrong -> pair wrong
        _pm("p3", 0, "yes", "no", "body_part"), _pm("p3", 1, "no", "no", "body_part"),  # pair wrong
        _pm("p4", 0, "yes", "yes", "body_part"), _pm("p4", 1, "no", "no", "body_part"),  # pair right
        _pm("p5", 0, "yes", "yes"),  # partner missing: reported, not scored as a pair
    ]
    s = summarise(results, probmed_metric="pair")  # explicit pair ids (the demo's layout), no image ids
    assert s["probmed"] == pytest.approx(50.0) == s["probmed/pair"]  # 2 of 4 complete pairs
    assert s["probmed/question"] == pytest.approx(100 * 7 / 9)
    c = counts(results)
    assert c["probmed/n_pairs"] == 4 and c["probmed/n_unpaired"] == 1


def test_probmed_without_pair_id_is_a_clear_error():
    item = EvalItem(id="pm", benchmark="probmed", kind="probmed", question="Q?", answer="yes")
    with pytest.raises(ValueError, match="image_id and qa_type"):
        summarise([score_result(item, "yes")])  # the official score needs them


def test_careqa_vision_table10_split():
    def r(i, kind, field, score):
        return ItemResult(id=f"c{i}", benchmark="careqa_vision", kind=kind, score=score, meta={"category": field})

    results = [
        r(0, "mcq", "Nursing", 1.0), r(1, "mcq", "Nursing", 0.0),
        r(2, "mcq", "Medicine", 1.0), r(3, "mcq", "MIR", 1.0),
        r(4, "open", "EIR", 0.5), r(5, "open", "medicine", 1.0), r(6, "open", "medicine", 0.0),
        r(7, "open", "medicine", None),  # no judge could score it: left out, counted
    ]
    s = summarise(results)
    assert s["careqa_vision/nursing_mcq"] == pytest.approx(50.0)
    assert s["careqa_vision/medicine_mcq"] == pytest.approx(100.0)
    assert s["careqa_vision/mcq"] == pytest.approx(75.0)
    assert s["careqa_vision/nursing_open"] == pytest.approx(50.0)
    assert s["careqa_vision/medicine_open"] == pytest.approx(50.0)
    assert s["careqa_vision/open"] == pytest.approx(50.0)
    assert s["careqa_vision"] == pytest.approx(100 * 4.5 / 7)
    assert counts(results)["careqa_vision/n_unscored"] == 1


def test_summarise_plain_benchmarks_from_dicts_and_results():
    results = [score_result(_mcq(i), p) for i, p in enumerate(["B", "The answer is (B)", "C", "A or C"])]
    results.append({"id": "m1", "benchmark": "mmmu", "kind": "mcq", "score": 1.0})
    s = summarise(results)
    assert s == {"pathmmu": pytest.approx(50.0), "mmmu": pytest.approx(100.0)}
    assert counts(results)["pathmmu/n_no_answer"] == 1


def test_careqa_vision_split_over_two_benchmark_keys():
    results = [
        ItemResult(id="m0", benchmark="careqa_vision_mcq", kind="mcq", score=1.0, meta={"category": "nursing"}),
        ItemResult(id="m1", benchmark="careqa_vision_mcq", kind="mcq", score=0.0, meta={"category": "medicine"}),
        ItemResult(id="o0", benchmark="careqa_vision_open", kind="open", score=0.5, meta={"category": "medicine"}),
    ]
    s = summarise(results)
    assert s["careqa_vision_mcq"] == pytest.approx(50.0) and s["careqa_vision_open"] == pytest.approx(50.0)
    assert s["careqa_vision/mcq"] == pytest.approx(50.0) and s["careqa_vision/open"] == pytest.approx(50.0)
    assert s["careqa_vision/nursing_mcq"] == 100.0 and s["careqa_vision/medicine_open"] == pytest.approx(50.0)
    assert s["careqa_vision"] == pytest.approx(50.0)


def _pmo(image_id, qa_type, gt, pred, image_type="ct_chest"):
    item = EvalItem(id=f"{image_id}-{qa_type}", benchmark="probmed", kind="probmed", question="Q?", answer=gt,
                    meta={"image_id": image_id, "qa_type": qa_type, "image_type": image_type})
    return score_result(item, pred)


def test_probmed_official_pairing():
    """ProbMed's own scorer: modality / body_part pairs per image, abnormality alone, entity_gt_k with entity_hallu_k
    (all pairs of an image right), per category weighted by num; `official_gt` = the ground-truth questions alone."""
    rows = [
        # image 0: modality pair right, body_part pair wrong (hallucinated one answered yes), abnormality right,
        # entity pairs 0 right and 1 wrong -> the image's entity group wrong
        _pmo(0, "modality", "yes", "Yes"), _pmo(0, "modality", "no", "No"),
        _pmo(0, "body_part", "yes", "Yes"), _pmo(0, "body_part", "no", "Yes"),
        _pmo(0, "abnormality", "yes", "Yes"),
        _pmo(0, "entity_gt_0", "yes", "Yes"), _pmo(0, "entity_hallu_0", "no", "No"),
        _pmo(0, "entity_gt_1", "yes", "Yes"), _pmo(0, "entity_hallu_1", "no", "Yes"),
        # image 1: modality gt wrong, abnormality wrong, entity_hallu alone right, grounding pair right
        _pmo(1, "modality", "yes", "No"), _pmo(1, "modality", "no", "No"),
        _pmo(1, "abnormality", "no", "Yes"), _pmo(1, "entity_hallu", "no", "No"),
        _pmo(1, "grounding_gt_0", "yes", "Yes"), _pmo(1, "grounding_hallu_0", "no", "No"),
    ]
    s = summarise(rows)
    # modality 1/2, body_part 0/1 (image 1 has none: empty, not counted), abnormality 1/2,
    # entity 1/2 (image 0's group wrong, image 1's single right), grounding 1/1 with num 2 (image 0 counts)
    assert s["probmed/modality"] == pytest.approx(50.0) and s["probmed/body_part"] == pytest.approx(0.0)
    assert s["probmed/abnormality"] == pytest.approx(50.0) and s["probmed/entity"] == pytest.approx(50.0)
    assert s["probmed/grounding"] == pytest.approx(100.0)
    nums = {"modality": 2, "body_part": 1, "abnormality": 2, "entity": 2, "grounding": 2}
    accs = {"modality": 50.0, "body_part": 0.0, "abnormality": 50.0, "entity": 50.0, "grounding": 100.0}
    expect = sum(accs[c] * nums[c] for c in nums) / sum(nums.values())
    assert s["probmed"] == pytest.approx(expect) == s["probmed/official"]
    # ground truth alone: modality 1/2, body_part 1/1, entity 2/2, grounding 1/1 (abnormality has no pair)
    gt = (50.0 * 2 + 100.0 * 1 + 100.0 * 2 + 100.0 * 2) / 7
    assert s["probmed/official_gt"] == pytest.approx(gt)
    assert s["probmed/question"] == pytest.approx(100 * 11 / 15)
