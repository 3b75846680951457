"""The paper's evaluation protocol, reproduced in the project's own code: the prompts VLMEvalKit builds for Qwen2-VL,
its exact-matching answer extraction (`can_infer`), its MMMU rewrite of open questions, and ProbMed's own scorer.

The paper ran the multimodal benchmarks in VLMEvalKit with the Qwen2-VL entry (`vlmeval/config.py`:
`Qwen2VLChat(min_pixels=1280*28*28, max_pixels=16384*28*28)`, `max_new_tokens=2048`, top_k=1 i.e. greedy) and
`--judge exact_matching`-style scoring. VLMEvalKit is not a dependency (not on PyPI; its install conflicts with
hydra-core), so the pieces that decide a score are re-implemented here, behaviour for behaviour, and checked against
vectors produced by VLMEvalKit's own functions (tests/data/vlmeval_vectors.json; see tests/data/README.md).

Sources (open-compass/VLMEvalKit): `vlmeval/vlm/qwen2_vl/prompt.py` (Qwen2VLPromptMixin: `_build_mcq_prompt`,
`_build_mmmu_prompt`, `_build_yorn_prompt`, `_build_vqa_prompt`), `vlmeval/utils/matching_util.py` (`can_infer`),
`vlmeval/dataset/utils/multiple_choice.py` (`MMMU_preproc`, `extract_answer_from_item`), `vlmeval/smp/misc.py`
(`process_punctuation`), `vlmeval/dataset/utils/yorn.py` (`YOrN_Extraction`); eric-ai-lab/ProbMed
`eval/calculate_score.py` (`get_score_binary`).
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping

# VLMEvalKit's Qwen2-VL entry (vlmeval/config.py "Qwen2-VL-7B-Instruct" / "-72B-Instruct"; Qwen2VLChat defaults)
QWEN2VL_MIN_PIXELS = 1280 * 28 * 28
QWEN2VL_MAX_PIXELS = 16384 * 28 * 28
QWEN2VL_MAX_NEW_TOKENS = 2048

MCQ_EN_PROMPT = "Please select the correct answer from the options above."
MCQ_CN_PROMPT = "请直接回答选项字母。"
YORN_PROMPT = " Please answer yes or no."  # Qwen2-VL's own Y/N prompt: HallusionBench and POPE only
VQA_PROMPT = "\nPlease try to answer the question with short words or phrases if possible."

# Which prompt a benchmark gets: VLMEvalKit's dataset type for the paper's sets (MMMU_DEV_VAL has its own builder).
# `yorn`: a Y/N set other than HallusionBench / POPE (ProbMed, added to VLMEvalKit as a custom Y/N set) is prompted by
# ImageBaseDataset.build_prompt, the question alone; `yorn_qwen` adds Qwen2-VL's " Please answer yes or no.".
PROMPT_STYLES = ("mcq", "mmmu", "yorn", "yorn_qwen", "vqa")


def _cn(s: str) -> bool:
    return re.search("[\u4e00-\u9fff]", s) is not None


def _mcq_text(question: str, options: Mapping[str, Any], hint: Any) -> str:
    """The text both `_build_mcq_prompt` and `_build_mmmu_prompt` build (before their closing instruction)."""
    prompt = ""
    if hint is not None and str(hint) != "":
        prompt += f"Hint: {hint}\n"
    prompt += f"Question: {question}\n"
    return prompt


def build_prompt(style: str, question: str, options: Mapping[str, Any] | None = None, hint: Any = None) -> str:
    """The user text Qwen2VLChat sends (images come first, one `{"type": "image"}` each, then this text).

    `options`: letter -> text in letter order (A, B, ...); empty for open questions (MMMU's open items get the MCQ
    layout without options, exactly as VLMEvalKit prompts them before its two-option rewrite at scoring time).
    """
    options = {k: options[k] for k in string.ascii_uppercase if options and k in options}
    if style in ("mcq", "mmmu"):
        prompt = _mcq_text(question, options, hint)
        if options:
            prompt += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
            if style == "mmmu":
                prompt += MCQ_EN_PROMPT + " \n"  # _build_mmmu_prompt keeps ImageMCQDataset's trailing " \n"
            else:
                prompt += MCQ_CN_PROMPT if _cn(prompt) else MCQ_EN_PROMPT
        return prompt.rstrip()
    if style == "yorn":
        return str(question)
    if style == "yorn_qwen":
        return f"{question}{YORN_PROMPT}"
    if style == "vqa":
        return f"{question}{VQA_PROMPT}"
    raise ValueError(f"unknown prompt style {style!r}; expected one of {', '.join(PROMPT_STYLES)}")


# ------------------------------------------------------------------------------------------------ exact matching
_VERBOSE_ANSWER_RE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_REJECT = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
           "I'm sorry, but without the image provided", "Cannot determine the answer")


def can_infer_option(answer: str, choices: Mapping[str, Any]) -> str | bool:
    """VLMEvalKit's `can_infer_option`: exactly one option letter among the whitespace tokens (after replacing
    `.()[],:;!*#{}` by spaces) and within the last five tokens; 'Z' for refusals; else False."""
    if "Failed to obtain answer via API" in answer:
        return False
    for err in _REJECT:
        if err in answer:
            return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = [x.strip() for x in mod.split()]
    count = sum(c in splits for c in choices)
    if count == 1:
        for ch in choices:
            if ch in splits and splits.index(ch) > len(splits) - 5:
                return ch
    elif count == 0 and sum(c in splits for c in ("Z", "")) == 1:
        return "Z"
    m = _VERBOSE_ANSWER_RE.search(answer or "")
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return False


def can_infer_text(answer: str, choices: Mapping[str, Any]) -> str | bool:
    """VLMEvalKit's `can_infer_text`: exactly one option's text (lower-cased) inside a not-too-long answer."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    return cands[0] if len(cands) == 1 else False


def can_infer(answer: Any, choices: Mapping[str, Any]) -> str | bool:
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def exact_choice(prediction: str, options: Mapping[str, Any]) -> str:
    """The option VLMEvalKit's exact matching scores: `can_infer`, and 'Z' (never correct) when it fails."""
    choices = {k: options[k] for k in string.ascii_uppercase if k in options}
    return can_infer(prediction, choices) or "Z"


def mmmu_open_choices(answer: str) -> dict[str, str]:
    """`MMMU_preproc`: an open question becomes A = its reference answer, B = 'Other Answers'; the truth is A."""
    return {"A": answer, "B": "Other Answers"}


# ----------------------------------------------------------------------------------------------------- yes / no
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?<!\d)\.(?!\d)")


def process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # VLMEvalKit passes re.UNICODE (32) as `count`: at most 32 periods are stripped. Kept for parity.
    return _PERIOD_STRIP.sub("", out, 32)


def yorn_extraction(output: str) -> str:
    """VLMEvalKit's `YOrN_Extraction`: 'Yes' / 'No' when exactly one of the words occurs, else 'Unknown'."""
    words = process_punctuation(output.lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "yes" not in words and "no" in words:
        return "No"
    return "Unknown"


def probmed_score_binary(response: str, ans: str) -> int:
    """ProbMed's `get_score_binary` (eval/calculate_score.py): 'Yes'/'No' as a case-sensitive substring, or the whole
    reply being yes / yes. (no / no.)."""
    response = response.strip()
    if ans == "yes":
        return int("Yes" in response or response.lower() in ("yes", "yes."))
    return int("No" in response or response.lower() in ("no", "no."))
