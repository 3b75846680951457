"""Loaders for the text multiple-choice sets (datasets.md E1, E9): CareQA, MedMCQA, MedQA, PubMedQA, MMLU.

Each reads the Hugging Face schema of the set (a local file or folder with the split's files, or the Hub id on a
cluster). In the paper these run through lm-evaluation-harness; the loaders serve the built-in evaluator (the demo)
and hashing. Answers are normalised to option letters; each set's own indexing is handled here:
MedMCQA `cop` 0-indexed, CareQA `cop` 1-indexed, MedQA `label` 0-indexed (or `answer_idx` letter), MMLU `answer`
0-indexed, PubMedQA `final_decision` yes/no/maybe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from aloevision.evalsets.base import Bench, EvalItem, LoadStats, SkipRow, first, is_blank, iter_records
from aloevision.evalsets.registry import drive, index_options, letter_answer, loader, numbered


def _index_answer(value: Any, n: int, base: int, require: bool) -> str:
    if is_blank(value):
        if require:
            raise SkipRow("no_answer")
        return ""
    try:
        k = int(value) - base
    except (TypeError, ValueError):
        raise SkipRow("bad_answer", f"answer index {value!r} is not an integer") from None
    if not 0 <= k < n:
        raise SkipRow("bad_answer", f"answer index {value!r} out of range for {n} options")
    return chr(65 + k)


def _question(row: Mapping[str, Any], *keys: str) -> str:
    q = first(row, *keys)
    if q is None or not str(q).strip():
        raise SkipRow("no_question")
    return str(q)


def _rows(bench: Bench) -> Iterator[tuple[str, Any]]:
    return numbered(iter_records(bench.path, bench.split, hf_config=bench.options.get("hf_config")))


@loader("careqa")
def load_careqa(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        options = index_options([row[k] for k in ("op1", "op2", "op3", "op4") if not is_blank(row.get(k))])
        answer = _index_answer(row.get("cop"), len(options), 1, require_answer)
        meta = {"category": row.get("category"), "year": row.get("year"), "exam_id": row.get("exam_id")}
        return EvalItem(str(first(row, "unique_id", default=row_id)), bench.name, bench.kind or "text_mcq",
                        _question(row, "question"), answer, options, [], meta)

    yield from drive(_rows(bench), stats, convert)


@loader("medmcqa")
def load_medmcqa(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        values = [row.get(k) for k in ("opa", "opb", "opc", "opd")]
        if any(is_blank(v) for v in values):
            raise SkipRow("too_few_options", "an option among opa..opd is empty")
        options = index_options(values)
        answer = _index_answer(row.get("cop"), 4, 0, require_answer)
        meta = {"subject": row.get("subject_name"), "topic": row.get("topic_name")}
        return EvalItem(str(first(row, "id", default=row_id)), bench.name, bench.kind or "text_mcq",
                        _question(row, "question"), answer, options, [], meta)

    yield from drive(_rows(bench), stats, convert)


@loader("medqa")
def load_medqa(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    """`GBaker/MedQA-USMLE-4-options-hf` (sent1, ending0..3, label) or the jsonl form (question, options dict,
    answer_idx)."""

    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        if isinstance(row.get("options"), Mapping):
            options = {str(k).upper(): str(v) for k, v in sorted(row["options"].items())}
            if len(options) < 2:
                raise SkipRow("too_few_options")
            answer = letter_answer(first(row, "answer_idx", "answer"), options, require_answer)
            question = _question(row, "question")
        else:
            options = index_options([row[f"ending{k}"] for k in range(5) if not is_blank(row.get(f"ending{k}"))])
            answer = _index_answer(row.get("label"), len(options), 0, require_answer)
            question = _question(row, "sent1", "question")
        return EvalItem(str(first(row, "id", default=row_id)), bench.name, bench.kind or "text_mcq", question,
                        answer, options, [], {})

    yield from drive(_rows(bench), stats, convert)


PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


@loader("pubmedqa")
def load_pubmedqa(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        ctx = first(row, "CONTEXTS", "contexts", "context")
        if isinstance(ctx, Mapping):  # pqa_labeled: {"contexts": [...], "labels": [...], ...}
            ctx = ctx.get("contexts")
        context = "\n".join(map(str, ctx)) if isinstance(ctx, (list, tuple)) else str(ctx or "")
        question = _question(row, "QUESTION", "question")
        decision = str(first(row, "final_decision", "answer", default="")).strip().lower()
        answer = letter_answer(decision, PUBMEDQA_OPTIONS, require_answer) if decision or require_answer else ""
        text = f"Abstract: {context}\nQuestion: {question}" if context else question
        return EvalItem(str(first(row, "pubid", "PMID", "id", default=row_id)), bench.name,
                        bench.kind or "text_mcq", text, answer, dict(PUBMEDQA_OPTIONS), [], {})

    yield from drive(_rows(bench), stats, convert)


# lm-eval's MultiMedQA MMLU subtasks.
MMLU_MEDICAL = ["anatomy", "clinical_knowledge", "college_medicine", "medical_genetics", "professional_medicine",
                "college_biology"]


@loader("mmlu")
def load_mmlu(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    """`cais/mmlu`: one config (folder) per subject; options.subjects (default: the MultiMedQA medical ones)."""
    subjects = list(bench.options.get("subjects") or MMLU_MEDICAL)

    def rows():
        if Path(bench.path).expanduser().is_file():  # one file of every subject: keep the configured ones
            for n, row in enumerate(iter_records(bench.path, bench.split)):
                subj = row.get("subject") if isinstance(row, Mapping) else None
                if subj is None or subj in subjects:
                    yield f"{subj}:{n}", ({**row, "_subject": subj} if isinstance(row, Mapping) else row)
            return
        for subj in subjects:
            for n, row in enumerate(iter_records(bench.path, bench.split, hf_config=subj)):
                yield f"{subj}:{n}", ({**row, "_subject": subj} if isinstance(row, Mapping) else row)

    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        choices = row.get("choices")
        if isinstance(choices, str) or not hasattr(choices, "__len__"):
            raise SkipRow("bad_options", f"choices is {type(choices).__name__}")
        options = index_options(list(choices))
        ans = row.get("answer")
        if isinstance(ans, str) and ans.strip().upper() in options:
            answer = ans.strip().upper()
        else:
            answer = _index_answer(ans, len(options), 0, require_answer)
        return EvalItem(row_id, bench.name, bench.kind or "text_mcq", _question(row, "question"), answer, options,
                        [], {"subject": row["_subject"]})

    yield from drive(rows(), stats, convert)
