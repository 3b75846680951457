"""The tagging prompt and the parser of the scorer's `MOD[...] MED[...] ST[...] SBP[...] GBP[...] SQ[n]` line."""

import pytest

from aloevision.schema import Sample, image_part, text_part, turn
from aloevision.scoring.rules import rules_output
from aloevision.scoring.taxonomy import ALIASES, VOCAB, build_prompt, canonical_tag, parse_output, system_prompt


def test_well_formed_paper_example():
    p = parse_output("MOD[X-ray] MED[Orthopedics] ST[Abnormality Detection] SBP[Bones] GBP[Upper limbs] SQ[4]")
    assert p.failure is None and p.score == 4.0
    assert p.tags == {"MOD": ["X-ray"], "MED": ["Orthopedics"], "ST": ["Abnormality Detection"], "SBP": ["Bones"],
                      "GBP": ["Upper limbs"]}
    assert p.n_oov == 0 and p.missing == [] and p.aliased == 0


def test_priority_order_and_vocabulary_with_punctuation():
    p = parse_output("MOD[Figures (Graphs/Charts), CT] MED[Obstetrics & Gyn., Oncology] ST[Severity Est.] "
                     "SBP[Non-body part] GBP[Other] SQ[5]")
    assert p.tags["MOD"] == ["Figures (Graphs/Charts)", "CT"]
    assert p.tags["MED"] == ["Obstetrics & Gyn.", "Oncology"]
    assert p.tags["ST"] == ["Severity Est."] and p.tags["SBP"] == ["Non-body part"] and p.score == 5


def test_reordered_fields_extra_text_case_and_spacing():
    text = ("Sure! Here is the categorization.\n sq [ 3 ]  gbp[thorax] Sbp[ lungs ,heart] st[diagnosis]\n"
            "MED : [pulmonology] mod[ x-ray ]\nLet me know if you need more.")
    p = parse_output(text)
    assert p.failure is None and p.score == 3
    assert p.tags == {"MOD": ["X-ray"], "MED": ["Pulmonology"], "ST": ["Diagnosis"], "SBP": ["Lungs", "Heart"],
                      "GBP": ["Thorax"]}


def test_synonyms_map_to_vocabulary():
    p = parse_output("MOD[Computed Tomography, MR, xray] MED[Obstetrics and Gynecology] ST[Abnormality] "
                     "SBP[Kidney] GBP[Chest] SQ[2]")
    assert p.tags["MOD"] == ["CT", "MRI", "X-ray"]
    assert p.tags["MED"] == ["Obstetrics & Gyn."]
    assert p.tags["ST"] == ["Abnormality Detection"] and p.tags["SBP"] == ["Kidneys"] and p.tags["GBP"] == ["Thorax"]
    assert p.aliased == 7 and p.n_oov == 0


def test_spelled_out_field_names():
    p = parse_output("Modality: [Ultrasound] Medical Field: [Cardiology] Sample Type: [Comparison] "
                     "Specific Body Part: [Heart] General Body Part: [Thorax] Sample Quality: [4]")
    assert p.score == 4 and p.tags["MOD"] == ["Ultrasound"] and p.tags["GBP"] == ["Thorax"] and not p.missing


def test_out_of_vocabulary_tags_dropped_and_counted():
    p = parse_output("MOD[CT, Hologram] MED[Radiology, Neurology] ST[Diagnosis] SBP[Brain, Soul] GBP[Head] SQ[4]")
    assert p.tags["MOD"] == ["CT"] and p.tags["MED"] == ["Neurology"] and p.tags["SBP"] == ["Brain"]
    assert p.oov == {"MOD": ["Hologram"], "MED": ["Radiology"], "SBP": ["Soul"]}
    assert p.n_oov == 3 and p.score == 4


def test_partial_output_keeps_tags_and_reports_missing_fields():
    p = parse_output("MOD[MRI] MED[Neurology]")
    assert p.tags == {"MOD": ["MRI"], "MED": ["Neurology"]}
    assert p.missing == ["ST", "SBP", "GBP"]
    assert p.score is None and p.failure == "missing_sq" and "MOD[MRI]" in p.failure_detail


@pytest.mark.parametrize(
    "text,failure",
    [
        ("", "empty_output"),
        ("   \n\n  ", "empty_output"),
        (None, "empty_output"),
        ("MOD[CT] SQ[excellent]", "malformed_sq"),
        ("MOD[CT] SQ[]", "malformed_sq"),
        ("MOD[CT] SQ[7]", "sq_out_of_range"),
        ("MOD[CT] SQ[0]", "sq_out_of_range"),
        ("the the the ]]] [[[ MOD SQ MED", "missing_sq"),
        ("\x00\x01 random bytes ☃ [[[", "missing_sq"),
    ],
)
def test_garbage_never_crashes_and_never_defaults_a_score(text, failure):
    p = parse_output(text)
    assert p.failure == failure and p.score is None and p.failure_detail


def test_score_variants():
    assert parse_output("SQ[4/5]").score == 4
    assert parse_output("SQ[ 3.0 ]").score == 3
    assert parse_output("blah SQ: 2 blah").score == 2  # unbracketed fallback
    # the model echoes the prompt's example first, then answers: the last occurrence wins
    echo = "MOD[X-ray] SQ[4]\nResponse: MOD[CT] MED[Oncology] ST[Diagnosis] SBP[Liver] GBP[Abdomen] SQ[2]"
    p = parse_output(echo)
    assert p.score == 2 and p.tags["MOD"] == ["CT"]


def test_alias_table_is_consistent():
    for f, table in ALIASES.items():
        for alias, canon in table.items():
            assert canon in VOCAB[f]
            assert canonical_tag(f, alias) == canon
    assert canonical_tag("MOD", "Other") == "Other" and canonical_tag("MOD", "banana") is None


def _sample(n_images=1):
    parts = [image_part() for _ in range(n_images)]
    return Sample(
        id="x/1", source="x", domain="medical", modality="multimodal",
        messages=[turn("system", text_part("You are helpful.")),
                  turn("user", *parts, text_part("What modality is this?")),
                  turn("assistant", text_part("This is a CT image.")),
                  turn("user", text_part("Where is the lesion?")),
                  turn("assistant", text_part("In the upper left region."))],
        images=["a.png"] * n_images,
    )


def test_prompt_structure():
    msgs = build_prompt(_sample(n_images=2))
    sys_text = msgs[0]["content"][0]["text"]
    assert sys_text == system_prompt()
    for tags in VOCAB.values():
        for t in tags:
            assert t in sys_text
    assert "priority order" in sys_text and "Other" in sys_text
    assert "MOD[Modality] MED[Medical Field] ST[Sample Type] SBP[Specific Body Part] GBP[General Body Part]" in sys_text
    user = msgs[1]["content"]
    assert [p["type"] for p in user] == ["image", "image", "text"]
    text = user[-1]["text"]
    assert "Question 1: What modality is this?" in text and "Answer 2: In the upper left region." in text
    assert "You are helpful." not in text  # the sample's own system prompt is not part of the triplet


def test_rules_output_goes_through_the_parser():
    msgs = [turn("user", image_part(), text_part("What imaging modality is this?")),
            turn("assistant", text_part("Photosynthesis is how plants turn sunlight into sugar."))]
    p = parse_output(rules_output(msgs, 1))
    assert p.failure is None and p.score == 1
    good = [turn("user", image_part(), text_part("Describe the image.")),
            turn("assistant", text_part("This CT image of the brain shows a lesion."))]
    p = parse_output(rules_output(good, 1))
    assert p.score == 4 and p.tags["MOD"] == ["CT"] and p.tags["SBP"] == ["Brain"] and p.tags["GBP"] == ["Head"]


def test_rules_keyword_lookup_tags_exactly_as_every_regex():
    """The fast keyword lookup (first word by str.find in the folded text, the regex only there) gives the tags of
    searching every keyword's case-insensitive regex: on texts built from every term and alias in every casing and
    spacing, glued into longer words, among the non-ASCII letters re.IGNORECASE folds onto ASCII."""
    import random
    import re
    import string

    from scoring_reference import keyword_tags_reference

    from aloevision.scoring.rules import _fold, keyword_tags

    # the folding the lookup relies on: one character each, a letter exactly where re.I sees an ASCII letter
    letter = re.compile("[A-Za-z]", re.I)
    for cp in range(0x110000):
        c = chr(cp)
        f = _fold(c)
        assert len(f) == 1 and (f in string.ascii_lowercase) == bool(letter.fullmatch(c)), hex(cp)

    terms = [t for f in VOCAB for t in VOCAB[f]] + [a for f in ALIASES for a in ALIASES[f]]
    styles = (str, str.lower, str.upper, str.title, lambda t: t.replace(" ", "-"), lambda t: t.replace(" ", ""),
              lambda t: t + "s", lambda t: "x" + t, lambda t: t + "al", lambda t: t.replace("s", "\u017f"),
              lambda t: t.replace("i", "\u0131").replace("k", "\u212a"), lambda t: t.replace("I", "\u0130"))
    glue = (" ", "  ", "-", "", ". ", "\n", ", ", "(", ")", "/", "\u00a0")
    rng = random.Random(0)
    texts = [rng.choice(styles)(t) for t in terms]
    for _ in range(1500):
        words = [rng.choice(styles)(rng.choice(terms)) if rng.random() < 0.5 else rng.choice(("the", "lesion", "ray",
                 "scan", "year", "near", "bonehead", "octave", "petal")) for _ in range(rng.randint(1, 12))]
        texts.append("".join(w + rng.choice(glue) for w in words))
    differ = [t for t in texts if keyword_tags(t) != keyword_tags_reference(t)]
    assert not differ, differ[:5]
    assert sum(any(keyword_tags(t).values()) for t in texts) > len(texts) // 2  # the texts do hit keywords
