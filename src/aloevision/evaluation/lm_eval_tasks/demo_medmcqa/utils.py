"""Data and prompt for the local `demo_medmcqa` lm-eval task (medmcqa's fields and prompt)."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_DATA = Path(__file__).with_name("demo_medmcqa.jsonl")
FIELDS = ("question", "opa", "opb", "opc", "opd", "cop")


def load_dataset(data_file: str | None = None, **_metadata):
    """DatasetDict(validation=...) from a medmcqa-format JSONL; a bad row is an error naming its line."""
    import datasets

    path = Path(data_file) if data_file else DEFAULT_DATA
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing medmcqa fields {missing}")
        if int(row["cop"]) not in range(4):
            raise ValueError(f"{path}:{n}: cop={row['cop']!r} must be a 0-indexed option (0-3)")
        rows.append({f: (int(row[f]) if f == "cop" else str(row[f])) for f in FIELDS})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def doc_to_text(doc) -> str:
    """Identical to lm-eval's medmcqa prompt: question, lettered choices, 'Answer:'."""
    prompt = "Question: " + doc["question"] + "\nChoices:\n"
    for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd")):
        prompt += f"{letter}. {doc[key]}\n"
    return prompt + "Answer:"
