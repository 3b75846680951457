"""LLM-as-judge for open-ended answers (SLAKE, CareQA-Vision open): rubric prompt, robust parsing of the verdict,
majority vote across judges, and Krippendorff's alpha between judges and against human labels.

Scores are on the paper's rubric grid {0.0, 0.5, 1.0} (incorrect / partially correct / correct).

Majority rule (documented, deterministic): the per-item score is the value most judges gave (the mode of the votes
that parsed). When no single value is most frequent — a three-way split (0.0 / 0.5 / 1.0) or an even split
(0.0 / 1.0) — it is the LOWER MEDIAN of the votes (`statistics.median_low`): for three judges that is the median
(0.5 for a three-way split); for two it is the lower vote, so a score is never higher than half the judges support.
A judge whose output cannot be parsed does not vote; its failure is counted (`JudgeRun.parse_failures`). An item
no judge scored gets `None` (reported as unscored, never as 0).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

log = logging.getLogger(__name__)

GRID = (0.0, 0.5, 1.0)
DEFAULT_JUDGES = (  # the paper's three judges (section 4)
    "Qwen/Qwen2.5-VL-72B-Instruct",
    "meta-llama/Llama-3.3-70B-Instruct",
    # "Olmo-3-32B" in the paper: Olmo 3 (Nov 2025) shipped the 32B only as Think and base models (there is no
    # allenai/Olmo-3-32B-Instruct); the 32B instruction model is Olmo 3.1's. A judge must answer "Score: x" in a few
    # tokens, which a Think model (long reasoning first) does not, hence the Instruct model.
    "allenai/Olmo-3.1-32B-Instruct",
)

RUBRIC_PROMPT = """You are an expert medical evaluator. Compare a model's answer to the reference answer of a \
medical question and grade it.

Rubric:
- 1.0 (correct): the model answer matches the reference answer in meaning, even if the wording or level of detail \
differs.
- 0.5 (partially correct): the model answer captures only part of the required information, or is correct but \
also contains a clinically relevant error.
- 0.0 (incorrect): the model answer does not match the reference answer, contradicts it, or does not answer.

Question: {question}
Reference answer: {reference}
Model answer: {answer}

Reply with one line in exactly this format: Score: <0.0, 0.5 or 1.0>"""


def rubric_prompt(question: str, reference: str, answer: str) -> str:
    return RUBRIC_PROMPT.format(question=question.strip(), reference=str(reference).strip(), answer=answer.strip())


# ----------------------------------------------------------------------------------------------------------------
# parsing

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_NUM = r"(1(?:\.0+)?|0?\.5|0(?:\.50*|\.0+)?)"
# "Score: 1.0" (also **Score:** / [[...]]); the number must end there: not "0.75", "10" or "1/2".
_SCORE = re.compile(
    r"(?i:score|grade|rating|verdict)\s*\**\s*[:=]?\s*\**\s*\[*\s*" + _NUM + r"(?![\d.]*\d)(?!\s*/\s*[02-9])"
)
_ONLY_NUM = re.compile(r"^\[*\(?\s*" + _NUM + r"\s*\)?\]*\.?$")
_WORDS = (
    (re.compile(r"\bpartial(?:ly)?\s+correct\b", re.I), 0.5),
    (re.compile(r"\b(?:incorrect|not\s+correct)\b", re.I), 0.0),
    (re.compile(r"(?<!partially )(?<!partial )(?<!not )\bcorrect\b", re.I), 1.0),
)


def parse_judge_output(text: str) -> float | None:
    """The rubric score in a judge's reply, or None when it cannot be read unambiguously.

    Accepted: "Score: 1.0" (the last one wins, so a judge may reason first), "score = .5", "[[0.5]]", a reply that
    is only a number on the grid, or a single verdict word (correct / partially correct / incorrect).
    Numbers off the grid ("Score: 0.7", "8/10") and contradictory verdicts are parse failures.
    """
    if text is None:
        return None
    body = _THINK.sub(" ", text)
    if "</think>" in body.lower():
        body = re.split(r"</think>", body, flags=re.I)[-1]
    body = body.strip()
    scores = _SCORE.findall(body)
    if scores:
        return float(scores[-1])
    m = _ONLY_NUM.match(body)
    if m:
        return float(m.group(1))
    verdicts = {v for rx, v in _WORDS if rx.search(body)}
    if len(verdicts) == 1:
        return verdicts.pop()
    return None


# ----------------------------------------------------------------------------------------------------------------
# majority vote


def majority_vote(votes: Sequence[float | None]) -> float | None:
    """Mode of the parsed votes; no unique mode → lower median (see module docstring); no votes → None."""
    valid = [float(v) for v in votes if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not valid:
        return None
    ranked = Counter(valid).most_common()
    if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
        return ranked[0][0]
    return statistics.median_low(valid)


# ----------------------------------------------------------------------------------------------------------------
# backends


@runtime_checkable
class JudgeBackend(Protocol):
    """Anything that turns prompts into replies, greedily. `name` labels the judge in reports."""

    name: str

    def generate(self, prompts: list[str]) -> list[str]: ...


class TransformersJudge:
    """Greedy generation with a transformers model (causal LM or VLM used text-only) and its tokenizer/processor."""

    def __init__(self, model, tokenizer_or_processor, *, name: str = "judge", max_new_tokens: int = 16,
                 batch_size: int = 8):
        self.model = model
        self.tokenizer = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str | None = None,
                        **kwargs) -> "TransformersJudge":
        """Load a judge by Hub id or local path: a causal LM, else an image-text-to-text model (e.g. Qwen2.5-VL)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        config = AutoConfig.from_pretrained(path)
        cls_ = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
        # A 70B judge does not fit one GPU: spread it over the node's GPUs unless a device is given.
        extra = {"device_map": "auto"} if device is None and torch.cuda.is_available() else {}
        model = cls_.from_pretrained(path, dtype=torch_dtype, **extra)
        if device:
            model = model.to(device)
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(path), name=str(path), **kwargs)

    def _render(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def generate(self, prompts: list[str]) -> list[str]:
        import torch

        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # decoder-only batches pad on the left so new tokens follow the prompt
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        out: list[str] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                texts = [self._render(p) for p in prompts[start : start + self.batch_size]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
                with torch.no_grad():
                    gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                              pad_token_id=tok.pad_token_id)
                out.extend(tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        finally:
            tok.padding_side = side
        return out


class VllmJudge:
    """Greedy generation with vLLM (imported only when this backend is chosen)."""

    def __init__(self, model: str, *, name: str | None = None, max_new_tokens: int = 16, **llm_kwargs):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise RuntimeError(
                "judge backend 'vllm' was chosen but vllm is not installed (pip install 'aloevision[vllm]' on a GPU "
                "machine), or set eval.judge_backend=transformers"
            ) from e
        self.name = name or model
        self.llm = LLM(model=model, **llm_kwargs)
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)

    def generate(self, prompts: list[str]) -> list[str]:
        messages = [[{"role": "user", "content": p}] for p in prompts]
        return [o.outputs[0].text for o in self.llm.chat(messages, self.params, use_tqdm=False)]


class RulesJudge:
    """A deterministic judge without a model (`rules` in eval.judges): NOT the paper's protocol, for offline smoke
    runs and tests. It reads the reference and the model answer back from the rubric prompt and grades word recall:
    every reference word in the answer -> 1.0, at least half -> 0.5, else 0.0."""

    name = "rules"
    _REF = re.compile(r"Reference answer: (.*?)\nModel answer: (.*?)\n\nReply with one line", re.S)

    def generate(self, prompts: list[str]) -> list[str]:
        out = []
        for p in prompts:
            m = self._REF.search(p)
            if not m:
                out.append("")
                continue
            ref = set(re.findall(r"\w+", m.group(1).lower()))
            ans = set(re.findall(r"\w+", m.group(2).lower()))
            recall = len(ref & ans) / len(ref) if ref else 0.0
            out.append(f"Score: {1.0 if recall == 1.0 else 0.5 if recall >= 0.5 else 0.0}")
        return out


def make_judge(spec: str, backend: str = "transformers", **kwargs) -> JudgeBackend:
    """A judge from a model id/path and a backend name (transformers | vllm)."""
    if backend == "transformers":
        return TransformersJudge.from_pretrained(spec, **kwargs)
    if backend == "vllm":
        return VllmJudge(spec, **kwargs)
    raise ValueError(f"judge backend {backend!r} is not known; use 'transformers' or 'vllm'")


# ----------------------------------------------------------------------------------------------------------------
# judging a set of answers


@dataclass
class JudgeRun:
    item_ids: list[str]
    judges: list[str]
    votes: list[list[float | None]]  # [judge][item]
    raw: list[list[str]]  # [judge][item] the judges' replies, for audit
    majority: list[float | None]
    parse_failures: dict[str, int] = field(default_factory=dict)

    def scores(self) -> dict[str, float | None]:
        return dict(zip(self.item_ids, self.majority))

    def report(self) -> dict[str, Any]:
        scored = [m for m in self.majority if m is not None]
        return {
            "judges": self.judges,
            "items": len(self.item_ids),
            "unscored": len(self.majority) - len(scored),
            "parse_failures": dict(self.parse_failures),
            "mean_score": 100.0 * statistics.fmean(scored) if scored else None,
            "alpha_judges": krippendorff_alpha(self.votes) if len(self.judges) >= 2 else None,
        }


def judge_items(items: Sequence[Any], predictions: Sequence[str], judges: Sequence[JudgeBackend]) -> JudgeRun:
    """Every judge grades every (item, prediction); the majority rule combines them."""
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    if not judges:
        raise ValueError("no judges configured (eval.judges is empty)")
    prompts = [rubric_prompt(it.question, it.answer, p) for it, p in zip(items, predictions)]
    votes, raw, failures = [], [], {}
    for judge in judges:
        replies = judge.generate(prompts)
        parsed = [parse_judge_output(r) for r in replies]
        failures[judge.name] = sum(v is None for v in parsed)
        if failures[judge.name]:
            log.warning("judge %s: %d/%d replies could not be parsed", judge.name, failures[judge.name], len(parsed))
        votes.append(parsed)
        raw.append(list(replies))
    majority = [majority_vote([v[i] for v in votes]) for i in range(len(items))]
    return JudgeRun([it.id for it in items], [j.name for j in judges], votes, raw, majority, failures)


# ----------------------------------------------------------------------------------------------------------------
# agreement


def krippendorff_alpha(reliability_data: Sequence[Sequence[float | None]], *, level: str = "ordinal",
                       value_domain: Sequence[float] | None = GRID) -> float | None:
    """Krippendorff's alpha over a raters x items matrix (None/NaN = missing), via the `krippendorff` package.

    Returns None when alpha is undefined (fewer than two raters, no item with two ratings, or a single value
    observed: no disagreement is possible to measure).
    """
    import krippendorff
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in reliability_data], dtype=float)
    if data.ndim != 2 or data.shape[0] < 2:
        return None
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    if not pairable.any() or len(np.unique(data[:, pairable][~np.isnan(data[:, pairable])])) < 2:
        return None
    domain = None
    if value_domain is not None:
        observed = set(np.unique(data[~np.isnan(data)]).tolist())
        domain = sorted(set(value_domain) | observed)
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=domain))


_LABEL_WORDS = {"correct": 1.0, "partially correct": 0.5, "partial": 0.5, "partially_correct": 0.5, "incorrect": 0.0}


@dataclass
class HumanLabels:
    by_annotator: dict[str, dict[str, float]]  # annotator -> item_id -> score
    dropped: list[str]  # "line N: reason"


def load_human_labels(path: str | Path) -> HumanLabels:
    """CSV with columns item_id, score (0/0.5/1 or correct/partially correct/incorrect) and optionally annotator.

    Without an annotator column every row is one rater ("human"). Rows that cannot be read are dropped and listed
    with the reason; a file without the required columns is an error.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "item_id" not in cols or "score" not in cols:
            raise ValueError(f"{path}: human labels need columns item_id,score[,annotator]; found {reader.fieldnames}")
        labels: dict[str, dict[str, float]] = {}
        dropped: list[str] = []
        for n, row in enumerate(reader, start=2):
            item = (row[cols["item_id"]] or "").strip()
            raw = (row[cols["score"]] or "").strip().lower()
            who = (row[cols["annotator"]] or "").strip() if "annotator" in cols else "human"
            try:
                score = _LABEL_WORDS[raw] if raw in _LABEL_WORDS else float(raw)
            except ValueError:
                dropped.append(f"line {n}: score {raw!r} is not 0/0.5/1 or a verdict word")
                continue
            if not item:
                dropped.append(f"line {n}: empty item_id")
            elif score not in GRID:
                dropped.append(f"line {n}: score {score} is off the rubric grid {GRID}")
            elif item in labels.setdefault(who or "human", {}):
                dropped.append(f"line {n}: duplicate label for item {item!r} by {who or 'human'!r}")
            else:
                labels[who or "human"][item] = score
    return HumanLabels(labels, dropped)


def agreement(run: JudgeRun, human: HumanLabels | None = None) -> dict[str, Any]:
    """alpha among judges; with human labels also among humans, majority vs humans, and humans + majority (the
    paper's two figures: experts alone 0.796, experts with the judges' majority 0.812)."""
    out: dict[str, Any] = {"alpha_judges": krippendorff_alpha(run.votes) if len(run.votes) >= 2 else None}
    if human is None:
        return out
    ids = [i for i in run.item_ids if any(i in lab for lab in human.by_annotator.values())]
    majority = run.scores()
    humans = [[lab.get(i) for i in ids] for lab in human.by_annotator.values()]
    maj = [majority[i] for i in ids]
    out.update(
        items_with_human_labels=len(ids),
        human_raters=len(humans),
        alpha_humans=krippendorff_alpha(humans) if len(humans) >= 2 else None,
        alpha_humans_plus_majority=krippendorff_alpha(humans + [maj]),
        labels_dropped=len(human.dropped),
    )
    # One consensus human label per item (lower median of the raters, the same rule as the judges) vs the majority.
    consensus = [majority_vote(col) for col in zip(*humans)] if humans else []
    out["alpha_majority_vs_human"] = krippendorff_alpha([consensus, maj]) if consensus else None
    return out


def score_open_results(items: Iterable[Any], run: JudgeRun):
    """ItemResults for open items from a judge run (score None where no judge could score)."""
    from aloevision.evaluation.answers import ItemResult

    scores = run.scores()
    return [
        ItemResult(id=it.id, benchmark=it.benchmark, kind=it.kind, score=scores.get(it.id), rule="judges",
                   meta=dict(it.meta))
        for it in items
    ]


def judge_backends(specs: Sequence[str], backend: str = "transformers", *, self_model: tuple | None = None,
                   max_new_tokens: int = 16, batch_size: int = 8) -> list[JudgeBackend]:
    """Judges from config strings: a model id/path, or "self" = the evaluated model (`self_model`=(model, processor));
    the demo uses "self" so the tiny model judges offline."""
    judges: list[JudgeBackend] = []
    for spec in specs:
        if spec == "rules":
            judges.append(RulesJudge())
        elif spec == "self":
            if self_model is None:
                raise ValueError("judge 'self' needs the evaluated model (self_model=(model, processor))")
            judges.append(TransformersJudge(*self_model, name="self", max_new_tokens=max_new_tokens,
                                            batch_size=batch_size))
        elif backend == "transformers":
            judges.append(TransformersJudge.from_pretrained(spec, max_new_tokens=max_new_tokens, batch_size=batch_size))
        else:
            judges.append(make_judge(spec, backend, max_new_tokens=max_new_tokens))
    return judges


def _release_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def score_open(items: Sequence[Any], predictions: Sequence[str], judges: Sequence[str | JudgeBackend], *,
               backend: str = "transformers", self_model: tuple | None = None, out_dir: str | Path | None = None,
               labels_file: str | Path | None = None, name: str = "judges") -> tuple[list, dict[str, Any]]:
    """The eval stage's entry for open-ended items: (ItemResults scored by majority vote, judge report).

    Writes `<out_dir>/<name>.jsonl` (per item: prediction, each judge's raw reply and vote, the majority) and
    `<out_dir>/<name>.json` (the report incl. parse failures and Krippendorff's alpha, and against human labels
    when `labels_file` is given).
    """
    import json

    # One judge in memory at a time (the paper's three are 72B + 70B + 32B): load, grade everything, release.
    parts: list[JudgeRun] = []
    for j in judges:
        jb = judge_backends([j], backend, self_model=self_model)[0] if isinstance(j, str) else j
        parts.append(judge_items(items, predictions, [jb]))
        if isinstance(j, str) and j not in ("self", "rules"):
            del jb
            _release_memory()
    if not parts:
        raise ValueError("no judges configured (eval.judges is empty)")
    votes = [p.votes[0] for p in parts]
    run = JudgeRun(parts[0].item_ids, [p.judges[0] for p in parts], votes, [p.raw[0] for p in parts],
                   [majority_vote([v[i] for v in votes]) for i in range(len(items))],
                   {k: v for p in parts for k, v in p.parse_failures.items()})
    results = score_open_results(items, run)
    for r, p in zip(results, predictions):
        r.prediction = p
    report = run.report()
    if labels_file:
        human = load_human_labels(labels_file)
        report["agreement"] = agreement(run, human)
        report["labels_dropped"] = human.dropped
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"{name}.jsonl", "w") as f:
            for i, (it, p) in enumerate(zip(items, predictions)):
                f.write(json.dumps({"id": it.id, "prediction": p, "reference": it.answer,
                                    "votes": {j: run.votes[k][i] for k, j in enumerate(run.judges)},
                                    "raw": {j: run.raw[k][i] for k, j in enumerate(run.judges)},
                                    "majority": run.majority[i]}) + "\n")
        (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
    return results, report
