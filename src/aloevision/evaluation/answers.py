"""Answer extraction and scoring for the built-in evaluator (MCQ, yes/no, ProbMed pairs, CareQA-Vision splits).

Extraction is deterministic and rule-based (no LLM matcher), so a score can always be traced to the rule that
produced it (`Extraction.rule`). The rules, in the order they are tried, for multiple choice:

1. Reasoning blocks (`<think>...</think>`) and markdown emphasis are removed; only the final answer text is read.
2. An explicit answer statement ("The answer is (B)", "Answer: B", "correct option: b)", "Final answer - C"):
   the LAST such statement wins, because models that reason first state the answer at the end.
3. The whole response is a single letter ("B", "(b)", "B.").
4. The response starts with a letter marker ("B. Pneumonia", "(B) ...", "B) ...", "B: ...").
5. The text of exactly one option appears in the response ("Pneumonia"); when several options' texts appear, the
   longest one wins only if every other match is contained in it ("left lung" over "lung"), else no answer.
6. Bare letter mentions ("(B)", " B "): exactly one distinct option letter → that letter.
   MULTIPLE DISTINCT LETTERS WITH NO EXPLICIT STATEMENT → NO ANSWER (scored 0), as VLMEvalKit's exact matcher does:
   a response that lists "A or C" must not be credited by whichever the grader happens to pick.

Yes/no: the last explicit statement ("the answer is no"), else a leading yes/no, else exactly one of the words
yes / no in the response; both present → no answer.

Lowercase letters are accepted only where they cannot be an English article or pronoun: alone, in parentheses, or
followed by punctuation ("the answer is a pleural effusion" is NOT option A).
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

MCQ_KINDS = ("mcq", "text_mcq")
YESNO_KINDS = ("yesno", "probmed")
OPEN_KINDS = ("open",)
KINDS = MCQ_KINDS + YESNO_KINDS + OPEN_KINDS


@dataclass(frozen=True)
class Extraction:
    answer: str | None  # option letter (upper case), "yes"/"no", or None when nothing could be extracted
    rule: str  # which rule produced it (see the module docstring), or why nothing was extracted


@dataclass
class ItemResult:
    """One scored prediction: what the eval stage keeps per item and what `summarise` aggregates."""

    id: str
    benchmark: str
    kind: str
    score: float | None  # 0..1; None = not scored (e.g. an open answer no judge could score)
    prediction: str = ""
    extracted: str | None = None
    rule: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# text clean-up

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_EMPHASIS = re.compile(r"[*_`]+")


def clean_prediction(text: str) -> str:
    """Drop reasoning blocks and markdown emphasis; an unclosed <think> keeps only what follows it."""
    text = _THINK.sub(" ", text or "")
    if "</think>" in text.lower():  # a closing tag without an opening one (template put <think> in the prompt)
        text = re.split(r"</think>", text, flags=re.I)[-1]
    return _EMPHASIS.sub("", text).strip()


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# ----------------------------------------------------------------------------------------------------------------
# multiple choice

_KEYWORDS = (
    r"(?:final\s+answer|correct\s+answer|best\s+answer|correct\s+option|correct\s+choice|right\s+answer|answer"
    r"|option|choice|respuesta)"
)
# The letter: an upper-case letter not followed by a letter, or a lower-case one in parentheses / before punctuation
# / at the end (so the article "a" never counts).
_LETTER = r"(?:\(\s*(?P<p>[A-Za-z])\s*\)|(?P<u>[A-Z])(?![A-Za-z])|(?P<l>[a-z])(?=\s*(?:[.,;:)!]|$)))"
_STATEMENT = re.compile(
    r"(?i:" + _KEYWORDS + r")(?:\s+(?i:is|would\s+be|will\s+be|should\s+be))?\s*(?:[:=\-–—]\s*)?"
    r"(?i:(?:option|choice|letter)\s+)?" + _LETTER
)
_NEGATED = re.compile(r"[\s).:]*(?:is|are|would\s+be|seems)\s+(?:not|incorrect|wrong|false|unlikely)\b", re.I)
_ONLY_LETTER = re.compile(r"^\(?\s*([A-Za-z])\s*\)?[.:)]?$")
_LEADING = re.compile(r"^(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])\s*[.:)])(?:\s|$)")
# A bare "A"/"I" before a lower-case word is the article / pronoun ("A mass is seen", "I think"), not a letter.
_NOT_ARTICLE = r"(?:or|and|nor|vs|versus|is|are|was|seems|would|could|should|because|since)\b"
_BARE = re.compile(
    r"\(\s*([A-Z])\s*\)|(?<![A-Za-z'])(?![AI]\s+(?!" + _NOT_ARTICLE + r")[a-z])([A-Z])(?![A-Za-z'])"
)


def _letter(m: re.Match) -> str:
    return next(g for g in (m.group("p"), m.group("u"), m.group("l")) if g).upper()


def extract_choice(prediction: str, options: Mapping[str, str]) -> Extraction:
    """The option letter a free-text answer chose, by the rules in the module docstring."""
    if not options:
        raise ValueError("extract_choice needs the item's options (letter -> text); got none")
    letters = {k.strip().upper() for k in options}
    text = clean_prediction(prediction)
    if not text:
        return Extraction(None, "empty")

    # "Option A is incorrect" names a letter to reject it: not a statement of the answer.
    statements = [_letter(m) for m in _STATEMENT.finditer(text) if not _NEGATED.match(text, m.end())]
    statements = [s for s in statements if s in letters]
    if statements:
        return Extraction(statements[-1], "statement")

    m = _ONLY_LETTER.match(text)
    if m and m.group(1).upper() in letters:
        return Extraction(m.group(1).upper(), "letter_only")

    m = _LEADING.match(text)
    if m:
        letter = (m.group(1) or m.group(2)).upper()
        # A leading lower-case "a." could be prose; accept it only when it is an option letter.
        if letter in letters and (m.group(1) or m.group(2).isupper() or text[1:2] in ".:)"):
            return Extraction(letter, "leading_letter")

    norm_text = f" {_norm(text)} "
    hits = {}
    for key, opt in options.items():
        n = _norm(str(opt))
        if n and f" {n} " in norm_text:
            hits[key.strip().upper()] = n
    if len(hits) == 1:
        return Extraction(next(iter(hits)), "option_text")
    if len(hits) > 1:
        longest = max(hits.items(), key=lambda kv: len(kv[1]))
        others = [v for k, v in hits.items() if k != longest[0]]
        unique_longest = sum(len(v) == len(longest[1]) for v in hits.values()) == 1
        if unique_longest and all(f" {o} " in f" {longest[1]} " for o in others):
            return Extraction(longest[0], "option_text_longest")

    bare = {(m.group(1) or m.group(2)) for m in _BARE.finditer(text)} & letters
    if len(bare) == 1:
        return Extraction(bare.pop(), "bare_letter")
    if len(bare) > 1 or len(hits) > 1:
        return Extraction(None, "ambiguous")
    return Extraction(None, "no_match")


# ----------------------------------------------------------------------------------------------------------------
# yes / no

_YN_STATEMENT = re.compile(r"(?i:answer|final\s+answer)\s*(?:is|would\s+be|:|-)?\s*:?\s*\(?\s*(?P<a>yes|no)\b", re.I)
_YN_LEADING = re.compile(r"^(yes|no)\b(?!\s*(?:or|/)\s*(?:yes|no)\b)", re.I)  # "yes or no" is not an answer
_YN_WORD = re.compile(r"\b(yes|no)\b", re.I)


def extract_yesno(prediction: str) -> Extraction:
    text = clean_prediction(prediction)
    if not text:
        return Extraction(None, "empty")
    statements = [m.group("a").lower() for m in _YN_STATEMENT.finditer(text)]
    if statements:
        return Extraction(statements[-1], "statement")
    m = _YN_LEADING.match(text)
    if m:
        return Extraction(m.group(1).lower(), "leading_word")
    words = {w.lower() for w in _YN_WORD.findall(text)}
    if len(words) == 1:
        return Extraction(words.pop(), "word")
    return Extraction(None, "ambiguous" if words else "no_match")


# ----------------------------------------------------------------------------------------------------------------
# scoring


MATCHINGS = ("exact", "lenient")


def extract(item, prediction: str) -> Extraction:
    """The lenient extraction (the rules of the module docstring)."""
    kind = item.kind
    if kind in MCQ_KINDS:
        return extract_choice(prediction, item.options)
    if kind in YESNO_KINDS:
        return extract_yesno(prediction)
    if kind in OPEN_KINDS:
        raise ValueError(
            f"item {item.id!r} is open-ended: score it with the judges (aloevision.evaluation.judges.judge_items)"
        )
    raise ValueError(f"item {item.id!r} has unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def extract_exact(item, prediction: str) -> Extraction:
    """The paper's protocol (aloevision.evaluation.protocol): VLMEvalKit's `can_infer` for multiple choice ('Z', i.e.
    no answer, when it fails), ProbMed's own `get_score_binary` for ProbMed, VLMEvalKit's `YOrN_Extraction` for
    other yes/no sets."""
    from aloevision.evaluation import protocol

    kind = item.kind
    if kind in MCQ_KINDS:
        if not item.options:
            raise ValueError(f"item {item.id!r}: exact matching needs the item's options")
        got = protocol.exact_choice(prediction or "", item.options)
        return Extraction(None if got == "Z" else got, "can_infer" if got != "Z" else "can_infer_failed")
    if kind == "probmed":
        yes, no = (protocol.probmed_score_binary(prediction or "", a) for a in ("yes", "no"))
        got = "yes" if yes and not no else "no" if no and not yes else "both" if yes else None
        return Extraction(got, "probmed_binary")
    if kind in YESNO_KINDS:
        got = protocol.yorn_extraction(prediction or "")
        return Extraction(None if got == "Unknown" else got.lower(), "yorn_extraction")
    return extract(item, prediction)  # open items: the same clear error


def _gold(item) -> str:
    gold = str(item.answer).strip()
    return gold.upper() if item.kind in MCQ_KINDS else gold.lower()


def _check_matching(matching: str) -> None:
    if matching not in MATCHINGS:
        raise ValueError(f"unknown answer matching {matching!r}; expected one of {', '.join(MATCHINGS)}")


def score_item(item, prediction: str, matching: str = "exact") -> float:
    """1.0 when the extracted answer equals the reference, else 0.0 (no answer counts as wrong).

    matching `exact` (default; the paper's protocol, see `extract_exact`) or `lenient` (`extract`). ProbMed under
    `exact` is scored as its authors do: 'Yes'/'No' anywhere in the reply (so a reply with both can be right).
    """
    _check_matching(matching)
    if matching == "exact" and item.kind == "probmed":
        from aloevision.evaluation.protocol import probmed_score_binary

        return float(probmed_score_binary(prediction or "", _gold(item)))
    ex = extract_exact(item, prediction) if matching == "exact" else extract(item, prediction)
    return float(ex.answer is not None and ex.answer == _gold(item))


def score_result(item, prediction: str, matching: str = "exact") -> ItemResult:
    """`score_item` plus what the eval stage logs per item: the answer both matchers extract (the scoring one in
    `extracted`, the other in meta `extracted_<name>`) and the rule that found it."""
    _check_matching(matching)
    exact, lenient = extract_exact(item, prediction), extract(item, prediction)
    ex = exact if matching == "exact" else lenient
    other_name, other = ("lenient", lenient) if matching == "exact" else ("exact", exact)
    meta = dict(item.meta)
    meta[f"extracted_{other_name}"] = other.answer
    meta[f"score_{other_name}"] = score_item(item, prediction, other_name)
    return ItemResult(
        id=item.id,
        benchmark=item.benchmark,
        kind=item.kind,
        score=score_item(item, prediction, matching),
        prediction=prediction,
        extracted=ex.answer,
        rule=ex.rule,
        meta=meta,
    )


# ----------------------------------------------------------------------------------------------------------------
# CareQA-Vision split (Table 10: Nursing / Medicine x MCQ / open-ended "VQA")

CAREQA_PREFIX = "careqa_vision"
_NURSING = {"nursing", "enfermeria", "enfermería", "eir", "nurse"}
_MEDICINE = {"medicine", "medicina", "mir", "medical", "doctor"}


def careqa_field(meta: Mapping[str, Any]) -> str | None:
    """'nursing' | 'medicine' from the item's meta (keys tried: field, category, exam, specialty, exam_id)."""
    for key in ("field", "category", "exam", "specialty", "exam_id"):
        v = meta.get(key)
        if v is None:
            continue
        words = set(re.split(r"[^a-záéíóúñ]+", str(v).lower()))
        if words & _NURSING:
            return "nursing"
        if words & _MEDICINE:
            return "medicine"
    return None


def careqa_format(kind: str) -> str:
    return "open" if kind in OPEN_KINDS else "mcq"


# ----------------------------------------------------------------------------------------------------------------
# aggregation


def _as_result(r: ItemResult | Mapping[str, Any]) -> ItemResult:
    if isinstance(r, ItemResult):
        return r
    return ItemResult(**{k: r[k] for k in ("id", "benchmark", "kind", "score") if k in r}, meta=dict(r.get("meta", {})))


def probmed_pair_accuracy(results: Iterable[ItemResult]) -> tuple[float | None, int, int]:
    """(accuracy in %, pairs, unpaired items): a pair counts as correct only when every question in it is.

    Items whose partner is missing (one-member groups) are NOT scored as pairs; they are returned as a count so the
    caller can report them instead of silently inflating the score.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for r in results:
        pid = r.meta.get("pair_id")
        if pid is None:
            raise ValueError(f"ProbMed item {r.id!r} has no meta['pair_id']; pair scoring needs it")
        groups[str(pid)].append(r.score or 0.0)
    pairs = [v for v in groups.values() if len(v) >= 2]
    unpaired = sum(len(v) for v in groups.values() if len(v) < 2)
    if not pairs:
        return None, 0, unpaired
    return 100.0 * sum(all(s == 1.0 for s in v) for v in pairs) / len(pairs), len(pairs), unpaired


PROBMED_METRICS = ("official", "pair", "question")
_PROBMED_CATEGORIES = ("modality", "body_part", "abnormality", "entity", "grounding")


def _probmed_score_dict(rows: list[tuple[str, str, float]]) -> dict[str, list]:
    """ProbMed's `get_score_dict` (eval/calculate_score.py) over (image id, qa_type, 0/1) rows of one image type, in
    file order: modality / body_part keep an image's ground-truth + hallucinated pair (dropped unless both are
    there); entity_gt_<k> / grounding_gt_<k> pair with the following *_hallu_<k> of the same k; `entity_hallu` alone
    (no abnormality) is a one-question entity; abnormality has no pair."""
    score: dict[str, list] = defaultdict(list)
    cur = rows[0][0]
    modality, body, entity, grounding = [], [], [], []
    entity_id = grounding_id = None
    entity_tuple: list = []
    grounding_tuple: list = []
    for image_id, qa_type, sc in rows:
        if image_id != cur:
            cur = image_id
            score["modality"].append(modality if len(modality) == 2 else [])
            score["body_part"].append(body if len(body) == 2 else [])
            score["entity"].append(entity)
            score["grounding"].append(grounding)
            modality, body, entity, grounding = [], [], [], []
            entity_id = grounding_id = None
        if "modality" in qa_type:
            modality.append(sc)
        elif "body_part" in qa_type:
            body.append(sc)
        elif qa_type == "abnormality":
            score["abnormality"].append(sc)
        elif "entity" in qa_type:
            if qa_type == "entity_hallu":
                entity = [sc]
            elif "gt" in qa_type:
                entity_id, entity_tuple = qa_type.split("_")[-1], [sc]
            elif qa_type.split("_")[-1] == entity_id:  # else: its ground-truth question was not answered
                entity.append(entity_tuple + [sc])
        elif "gt" in qa_type:
            grounding_id, grounding_tuple = qa_type.split("_")[-1], [sc]
        elif qa_type.split("_")[-1] == grounding_id:
            grounding.append(grounding_tuple + [sc])
    # the last image: appended as is (the official scorer checks the pair length only when moving to a new image)
    score["modality"].append(modality)
    score["body_part"].append(body)
    score["entity"].append(entity)
    score["grounding"].append(grounding)
    return score


def _probmed_float(score: dict[str, list]) -> dict[str, dict[str, float]]:
    """ProbMed's `get_score_float`: per category accuracy with adversarial pairs (`acc`: every question of the
    image's group right), the ground-truth question alone (`acc_gt`), and the weight `num`. A category without any
    scorable group is left out (the official script divides by zero there)."""
    out: dict[str, dict[str, float]] = {}
    abn = score.get("abnormality", [])
    if abn:
        out["abnormality"] = {"acc": 100.0 * sum(abn) / len(abn), "num": len(abn)}
    for cat in ("modality", "body_part"):
        groups = [t for t in score.get(cat, []) if t]
        if groups:
            out[cat] = {"acc": 100.0 * sum(all(x == 1 for x in t) for t in groups) / len(groups),
                        "acc_gt": 100.0 * sum(t[0] == 1 for t in groups) / len(groups), "num": len(groups)}
    for cat in ("entity", "grounding"):
        groups = [g for g in score.get(cat, []) if g]
        if not groups:
            continue
        nested = [g if isinstance(g[0], list) else [g] for g in groups]
        out[cat] = {"acc": 100.0 * sum(all(all(y == 1 for y in x) for x in g) for g in nested) / len(nested),
                    "acc_gt": 100.0 * sum(all(x[0] == 1 for x in g) for g in nested) / len(nested),
                    "num": len(score[cat])}  # the official weight counts images without such questions too
    return out


def probmed_official(results: Iterable[ItemResult]) -> dict[str, float]:
    """ProbMed scored as its authors do (eval/calculate_score.py `get_scores_probmed`): per image type and question
    category, aggregated over image types and then categories weighted by `num`. Returns `acc` (with adversarial
    pairs: the headline of the ProbMed paper), `acc_gt` (the ground-truth questions alone: "w.o. adv. pair") and
    `<category>` accuracies. Rows must be in the release's order (they are grouped by consecutive image id)."""
    by_type: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for r in results:
        by_type[str(r.meta.get("image_type"))].append((str(r.meta.get("image_id")), str(r.meta.get("qa_type", "")),
                                                       float(r.score or 0.0)))
    agg: dict[str, dict[str, float]] = {}
    for rows in by_type.values():
        for cat, m in _probmed_float(_probmed_score_dict(rows)).items():
            a = agg.setdefault(cat, {"acc": 0.0, "acc_gt": 0.0, "num": 0, "num_gt": 0})
            a["acc"] += m["acc"] * m["num"]
            a["num"] += m["num"]
            if "acc_gt" in m:
                a["acc_gt"] += m["acc_gt"] * m["num"]
                a["num_gt"] += m["num"]
    out: dict[str, float] = {}
    tot = {"acc": 0.0, "num": 0, "acc_gt": 0.0, "num_gt": 0}
    for cat, a in agg.items():
        if a["num"]:
            out[cat] = a["acc"] / a["num"]
            tot["acc"] += a["acc"]
            tot["num"] += a["num"]
        if a["num_gt"]:
            tot["acc_gt"] += a["acc_gt"]
            tot["num_gt"] += a["num_gt"]
    if tot["num"]:
        out["acc"] = tot["acc"] / tot["num"]
    if tot["num_gt"]:
        out["acc_gt"] = tot["acc_gt"] / tot["num_gt"]
    return out


def _mean_pct(scores: list[float]) -> float | None:
    return 100.0 * statistics.fmean(scores) if scores else None


def summarise(results: Iterable[ItemResult | Mapping[str, Any]], probmed_metric: str = "official") -> dict[str, float]:
    """{benchmark: %, benchmark/sub: %}. Unscored items (score None) are left out and counted by `counts`.

    - ProbMed (kind probmed): the headline `probmed` is `probmed_metric`: `official` (ProbMed's own scorer,
      `probmed_official`, with adversarial pairs; needs meta image_type / image_id / qa_type), `pair` (consecutive
      pair_id groups all right) or `question` (per question). All three are reported: `probmed/official`,
      `probmed/official_gt` (ground-truth questions alone), `probmed/<category>`, `probmed/pair`,
      `probmed/question`.
    - CareQA-Vision (every benchmark whose key starts with `careqa_vision`, e.g. `careqa_vision_mcq` and
      `careqa_vision_open`, pooled): `careqa_vision/mcq`, `/open` (Table 3's CareQA-V MCQ / VQA) and
      `/nursing_mcq`, `/medicine_mcq`, `/nursing_open`, `/medicine_open` (Table 10); `careqa_vision` is the mean
      over all its items (each key also keeps its own mean).
    - Everything else: mean item score.
    """
    by_bench: dict[str, list[ItemResult]] = defaultdict(list)
    for r in map(_as_result, results):
        if r.score is not None:
            by_bench[r.benchmark].append(r)
    out: dict[str, float] = {}
    for bench, rs in sorted(by_bench.items()):
        if any(r.kind == "probmed" for r in rs):
            if probmed_metric not in PROBMED_METRICS:
                raise ValueError(f"probmed_metric {probmed_metric!r}: expected one of {', '.join(PROBMED_METRICS)}")
            cells: dict[str, float | None] = {"question": _mean_pct([r.score for r in rs])}
            if all(r.meta.get("pair_id") is not None for r in rs):
                cells["pair"] = probmed_pair_accuracy(rs)[0]
            if all(r.meta.get("qa_type") and r.meta.get("image_id") is not None for r in rs):
                off = probmed_official(rs)
                cells["official"], cells["official_gt"] = off.get("acc"), off.get("acc_gt")
                cells.update({c: off[c] for c in _PROBMED_CATEGORIES if c in off})
            elif probmed_metric == "official":
                raise ValueError(f"{bench}: ProbMed's official score needs meta image_id and qa_type on every item; "
                                 "use probmed_metric=pair for a set without them")
            if cells.get(probmed_metric) is not None:
                out[bench] = cells[probmed_metric]
            out.update({f"{bench}/{k}": v for k, v in cells.items() if v is not None})
            continue
        out[bench] = _mean_pct([r.score for r in rs])
    # CareQA-Vision may come as one benchmark or as several keys (careqa_vision_mcq, careqa_vision_open): the
    # Table 10 cells are computed over all of them, under one `careqa_vision/` prefix.
    careqa = [r for bench, rs in by_bench.items() if bench.startswith(CAREQA_PREFIX) for r in rs]
    if careqa:
        cells: dict[str, list[float]] = defaultdict(list)
        for r in careqa:
            fmt = careqa_format(r.kind)
            cells[fmt].append(r.score)
            fld = careqa_field(r.meta)
            if fld:
                cells[f"{fld}_{fmt}"].append(r.score)
        out.setdefault(CAREQA_PREFIX, _mean_pct([r.score for r in careqa]))
        for key, scores in sorted(cells.items()):
            out[f"{CAREQA_PREFIX}/{key}"] = _mean_pct(scores)
    return out


def counts(results: Iterable[ItemResult | Mapping[str, Any]]) -> dict[str, int]:
    """Item counts beside the scores: scored, unscored, no-answer extractions, unpaired ProbMed items."""
    out: dict[str, int] = defaultdict(int)
    probmed: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        rich = isinstance(r, ItemResult)
        r = _as_result(r)
        out[f"{r.benchmark}/n"] += 1
        if r.score is None:
            out[f"{r.benchmark}/n_unscored"] += 1
        elif rich and r.kind != "open" and r.extracted is None:
            out[f"{r.benchmark}/n_no_answer"] += 1
        if r.kind == "probmed" and r.score is not None:
            probmed[r.benchmark].append(r)
    for bench, rs in probmed.items():
        _, pairs, unpaired = probmed_pair_accuracy(rs)
        out[f"{bench}/n_pairs"] = pairs
        out[f"{bench}/n_unpaired"] = unpaired
    if not out:
        return {}
    return dict(out)
