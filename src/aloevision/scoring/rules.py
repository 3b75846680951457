"""A cheap, model-free stand-in for the LVLM tagger: keyword tags + an answer-type consistency score, emitted in the
exact `MOD[...] ... SQ[n]` line so it goes through the same parser as a model's answer.

What it is for: the CPU demo, whose tiny random model cannot judge anything (its tagging output is noise and every
sample would be a parse failure), and a baseline to compare an LVLM's tags against. What it is NOT: a coherence
judge. The score only catches answers whose TYPE does not fit the question:

- empty answer                                           -> SQ 1
- a modality question answered without any modality       -> SQ 1
- a "where" question answered without any location word   -> SQ 2
- a yes/no question answered with neither yes nor no      -> SQ 3 (answers like "There is a mass..." are legitimate)
- anything else                                           -> SQ 4 (rules can never certify a 5)

A lettered multiple-choice answer ("C", "(C)", "C. MRI") is read as the text of the option it picks, so the checks
above judge the choice, not the letter; a letter that is not one of the question's options scores 1.

The sample's score is its worst question/answer pair. Tags are vocabulary terms and aliases found in the question
and answer text, in order of first mention; a field with no match gets `Other`.
"""

from __future__ import annotations

import re

from aloevision.scoring.taxonomy import ALIASES, TAG_FIELDS, VOCAB, qa_pairs

# Aliases too ambiguous to match in free text ("us" the pronoun, "echo", "mr" the title, "none").
_UNSAFE = {"us", "mr", "echo", "gi", "n a", "figure", "plot", "chart", "description", "cause", "detection",
           "attributes", "treatment", "severity", "procedural", "caption", "head"}
_MODALITY_Q = re.compile(r"\b(imaging\s+)?modality\b|what\s+(kind|type)\s+of\s+(image|scan|imaging)", re.I)
_WHERE_Q = re.compile(r"^\s*(where|in which (part|region|side|quadrant))\b", re.I)
_YESNO_Q = re.compile(r"^\s*(is|are|does|do|did|can|could|was|were|has|have|will|should)\b", re.I)
_YESNO_A = re.compile(r"\b(yes|no|not|none|absent|present)\b", re.I)
_LOCATION_A = re.compile(
    r"\b(left|right|upper|lower|superior|inferior|anterior|posterior|medial|lateral|central|centre|center|middle|"
    r"top|bottom|region|lobe|quadrant|side|apex|base|proximal|distal)\b|<\|box_start\|>", re.I)
_OPTION = re.compile(r"^\s*\(?([A-J])[.)]\s+(.+?)\s*$", re.M)  # "A. CT" / "(B) MRI" lines of an MCQ question
_LETTER_A = re.compile(r"^\s*\(?([A-J])\)?(?:[.):]\s*.*)?\s*$", re.S)  # "C", "(C)", "C.", "C. MRI"
_DESCRIBE_Q = re.compile(r"\b(describe|description|caption|what (does|do) .* show)\b", re.I)
# A specific body part implies its general body part and a likely field (first match wins).
_SBP_TO_GBP = {"Brain": "Head", "Eyes": "Head", "Ears": "Head", "Nose": "Head", "Teeth": "Head", "Throat": "Neck",
               "Lungs": "Thorax", "Heart": "Thorax", "Breasts": "Thorax", "Stomach": "Abdomen", "Intestines": "Abdomen",
               "Liver": "Abdomen", "Pancreas": "Abdomen", "Spleen": "Abdomen", "Kidneys": "Abdomen",
               "Pelvis": "Pelvis", "Reproductive Organs": "Pelvis", "Spine": "Thorax"}
_SBP_TO_MED = {"Brain": "Neurology", "Eyes": "Ophthalmology", "Teeth": "Dentistry", "Lungs": "Pulmonology",
               "Heart": "Cardiology", "Skin": "Dermatology", "Bones": "Orthopedics", "Spine": "Orthopedics",
               "Joints": "Orthopedics", "Stomach": "Gastroenterology", "Intestines": "Gastroenterology",
               "Liver": "Gastroenterology", "Pancreas": "Gastroenterology", "Kidneys": "Nephrology",
               "Blood Vessels": "Cardiology", "Cell": "Pathology", "Breasts": "Oncology",
               "Reproductive Organs": "Obstetrics & Gyn."}


# The four non-ASCII characters Python's re.IGNORECASE matches to ASCII letters (its docs): folded onto those
# letters, then lower-cased, a text matches a lower-case pattern case-SENSITIVELY exactly where the original matches it
# with re.I, at the same positions (every character folds to one; checked over all code points in
# tests/unit/test_taxonomy.py).
_RE_I_ASCII = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _fold(text: str) -> str:
    return text.translate(_RE_I_ASCII).lower()


def keyword_regex(term: str, *, folded: bool = False) -> re.Pattern | None:
    """A keyword's pattern: its words in order, separated by spaces/hyphens or nothing, an optional plural `s`, not
    inside a longer word. `folded=True`: for `_fold`ed text, without the leading not-a-letter check (the caller
    makes it at each candidate position)."""
    words = [w for w in re.split(r"[\s\-]+", term.strip(" .")) if w]
    if not words:
        return None
    body = r"[\s\-]*".join(re.escape(_fold(w) if folded else w) for w in words) + r"s?(?![A-Za-z])"
    return re.compile(body) if folded else re.compile(r"(?<![A-Za-z])" + body, re.I)


def _patterns() -> dict[str, list[tuple[re.Pattern, str, str]]]:
    """Per field: (pattern on `_fold`ed text, canonical tag, the keyword's first word, folded)."""
    out: dict[str, list[tuple[re.Pattern, str, str]]] = {}
    for f in TAG_FIELDS:
        terms = {t: t for t in VOCAB[f] if t != "Other"}
        terms.update({a: c for a, c in ALIASES[f].items() if a not in _UNSAFE})
        out[f] = [(pat, canon, _fold(re.split(r"[\s\-]+", term.strip(" ."))[0])) for term, canon in terms.items()
                  if (pat := keyword_regex(term, folded=True)) is not None]
    return out


_PATTERNS = _patterns()


def _first_match(pat: re.Pattern, first: str, folded: str) -> int:
    """Start of the first match of a keyword in `folded`, or -1: tried only where its first word occurs (str.find),
    at a word start, so the regex never scans the text."""
    i = folded.find(first)
    while i >= 0:
        if (i == 0 or folded[i - 1] not in _ASCII_LETTERS) and pat.match(folded, i):
            return i
        i = folded.find(first, i + 1)
    return -1


def keyword_tags(text: str) -> dict[str, list[str]]:
    """Vocabulary tags mentioned in `text`, per field, in order of first mention (no `Other`).

    The same tags as searching every keyword's case-insensitive regex (`keyword_regex`) in the text, computed by
    looking each keyword's first word up with str.find in the folded text and matching the regex only there: most of
    the ~300 keywords are absent from any one text (benchmarks/rules_bench.py: tags identical, several times faster)."""
    folded = _fold(text)
    tags: dict[str, list[str]] = {}
    for f, pats in _PATTERNS.items():
        hits: dict[str, int] = {}
        for pat, canon, first in pats:
            start = _first_match(pat, first, folded)
            if start >= 0 and (canon not in hits or start < hits[canon]):
                hits[canon] = start
        tags[f] = sorted(hits, key=hits.get)
    return tags


def resolve_choice(question: str, answer: str) -> tuple[str, bool]:
    """(the answer as option text, whether it is valid): a lettered answer to a question with lettered options
    becomes the chosen option's text; anything else is returned unchanged."""
    options = dict(_OPTION.findall(question))
    m = _LETTER_A.match(answer)
    if len(options) < 2 or not m:
        return answer, True
    letter = m.group(1)
    if letter not in options:
        return answer, False
    return f"{options[letter]} {answer}", True


def pair_score(question: str, answer: str) -> tuple[int, str]:
    """Score one question/answer pair and say which rule decided it."""
    if not answer.strip():
        return 1, "empty answer"
    answer, valid = resolve_choice(question, answer)
    if not valid:
        return 1, "option letter not among the question's options"
    if _MODALITY_Q.search(question) and not keyword_tags(answer)["MOD"]:
        return 1, "modality question, no modality in answer"
    if _WHERE_Q.search(question) and not _LOCATION_A.search(answer):
        return 2, "location question, no location in answer"
    if _YESNO_Q.search(question) and " or " not in question.lower() and not _YESNO_A.search(answer):
        return 3, "yes/no question, neither in answer"
    return 4, "no rule fired"


def sample_type(question: str) -> str:
    if _MODALITY_Q.search(question):
        return "Modality ID"
    if _DESCRIBE_Q.search(question):
        return "Image Description"
    if _WHERE_Q.search(question) or _YESNO_Q.search(question):
        return "Abnormality Detection"
    return "Other"


def rules_output(messages: list[dict], n_images: int) -> str:
    """The tagging line for a conversation, as an LVLM following Appendix A.1 would write it."""
    pairs = qa_pairs(messages) or [("", "")]
    # Tags from the question stem and the CHOSEN option: the unchosen options of an MCQ say nothing about the image.
    text = "\n".join(f"{_OPTION.sub('', q)}\n{resolve_choice(q, a)[0]}" for q, a in pairs)
    tags = keyword_tags(text)
    sbp = tags["SBP"]
    if not tags["GBP"]:
        tags["GBP"] = list(dict.fromkeys(_SBP_TO_GBP[s] for s in sbp if s in _SBP_TO_GBP))
    if not tags["MED"]:
        tags["MED"] = list(dict.fromkeys(_SBP_TO_MED[s] for s in sbp if s in _SBP_TO_MED))
    if n_images == 0 and not tags["MOD"]:
        tags["MOD"] = ["Other"]
    tags["ST"] = list(dict.fromkeys(sample_type(q) for q, _ in pairs))
    score = min(pair_score(q, a)[0] for q, a in pairs)
    fields = " ".join(f"{f}[{', '.join(tags[f] or ['Other'])}]" for f in TAG_FIELDS)
    return f"{fields} SQ[{score}]"
