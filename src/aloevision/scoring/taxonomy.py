"""The tagging + quality-score prompt of the paper's Appendix A.1 and a robust parser for its output line.

The scorer LVLM answers `MOD[...] MED[...] ST[...] SBP[...] GBP[...] SQ[n]`. Real model output drifts: fields come
reordered, some are missing, there is chatter around the line, tags differ in case/spacing or use synonyms
("Computed Tomography" for CT). The parser maps what it can to the Table 5 vocabulary through a documented alias
table, drops and COUNTS the rest, and reports a missing or malformed SQ as a parse failure with a reason. It never
raises on model output and never invents a score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Table 5 of the paper, in the paper's order. Keys are the field codes of the output line.
VOCAB: dict[str, list[str]] = {
    "MOD": [
        "X-ray", "CT", "MRI", "Ultrasound", "PET", "SPECT", "Microscopy", "Dermatoscopy", "Fundus", "OCT",
        "Endoscopy", "Fluoroscopy", "Angiography", "Infrared", "Figures (Graphs/Charts)", "Other",
    ],
    "MED": [
        "Cardiology", "Neurology", "Oncology", "Orthopedics", "Gastroenterology", "Pulmonology", "Dermatology",
        "Ophthalmology", "Pathology", "Dentistry", "Obstetrics & Gyn.", "Endocrinology", "Hematology", "Nephrology",
        "Surgery", "Infectious Diseases", "Other",
    ],
    "ST": [
        "Diagnosis", "Abnormality Detection", "Modality ID", "Anatomy ID", "Comparison", "Procedural Explanation",
        "Visual Attributes", "Severity Est.", "Prognosis", "Treatment Suggestion", "Etiology", "Image Description",
        "Result Analysis", "Other",
    ],
    "SBP": [
        "Cell", "Brain", "Lungs", "Heart", "Stomach", "Intestines", "Liver", "Pancreas", "Spleen", "Kidneys", "Spine",
        "Pelvis", "Bones", "Skin", "Eyes", "Teeth", "Blood Vessels", "Muscles", "Joints", "Breasts", "Ears", "Nose",
        "Throat", "Reproductive Organs", "Non-body part", "Other",
    ],
    "GBP": ["Head", "Neck", "Upper limbs", "Lower limbs", "Abdomen", "Thorax", "Pelvis", "Non-body part", "Other"],
}
TAG_FIELDS: tuple[str, ...] = tuple(VOCAB)
FIELD_NAMES = {
    "MOD": "Modality",
    "MED": "Medical Field",
    "ST": "Sample Type",
    "SBP": "Specific Body Part",
    "GBP": "General Body Part",
    "SQ": "Sample Quality",
}
SCORE_MIN, SCORE_MAX = 1, 5

# Synonyms -> canonical tag, per field. Keys are compared after `_norm` (lower case, punctuation -> space), so
# "x ray", "X-Ray" and "xray" need one entry at most. Extend here, not in the parser.
ALIASES: dict[str, dict[str, str]] = {
    "MOD": {
        "xray": "X-ray", "x ray": "X-ray", "radiograph": "X-ray", "radiography": "X-ray", "plain film": "X-ray",
        "cxr": "X-ray", "chest x ray": "X-ray", "mammography": "X-ray", "mammogram": "X-ray",
        "computed tomography": "CT", "ct scan": "CT", "cat scan": "CT", "cta": "CT",
        "mr": "MRI", "magnetic resonance": "MRI", "magnetic resonance imaging": "MRI", "mri scan": "MRI",
        "us": "Ultrasound", "ultrasonography": "Ultrasound", "sonography": "Ultrasound", "echocardiography": "Ultrasound",
        "echo": "Ultrasound", "doppler": "Ultrasound",
        "positron emission tomography": "PET", "pet ct": "PET", "pet scan": "PET",
        "single photon emission computed tomography": "SPECT",
        "histology": "Microscopy", "histopathology": "Microscopy", "light microscopy": "Microscopy",
        "electron microscopy": "Microscopy", "cytology": "Microscopy",
        "dermoscopy": "Dermatoscopy", "fundus photography": "Fundus", "fundoscopy": "Fundus", "retinal photograph": "Fundus",
        "optical coherence tomography": "OCT", "endoscopic": "Endoscopy", "colonoscopy": "Endoscopy",
        "gastroscopy": "Endoscopy", "laparoscopy": "Endoscopy", "fluoroscopic": "Fluoroscopy",
        "angiogram": "Angiography", "dsa": "Angiography", "digital subtraction angiography": "Angiography",
        "thermography": "Infrared", "figures": "Figures (Graphs/Charts)", "figure": "Figures (Graphs/Charts)",
        "graph": "Figures (Graphs/Charts)", "graphs": "Figures (Graphs/Charts)", "chart": "Figures (Graphs/Charts)",
        "charts": "Figures (Graphs/Charts)", "graphs charts": "Figures (Graphs/Charts)", "diagram": "Figures (Graphs/Charts)",
        "plot": "Figures (Graphs/Charts)",
    },
    "MED": {
        "cardiac": "Cardiology", "neuro": "Neurology", "neuroradiology": "Neurology", "neurosurgery": "Neurology",
        "oncologic": "Oncology", "orthopaedics": "Orthopedics", "orthopedic": "Orthopedics", "orthopaedic": "Orthopedics",
        "gi": "Gastroenterology", "hepatology": "Gastroenterology", "pulmonary": "Pulmonology", "pulmonology": "Pulmonology",
        "respiratory": "Pulmonology", "ophthalmic": "Ophthalmology", "ophtalmology": "Ophthalmology",
        "histopathology": "Pathology", "dental": "Dentistry", "odontology": "Dentistry",
        "obstetrics & gyn": "Obstetrics & Gyn.", "obstetrics & gynecology": "Obstetrics & Gyn.",
        "obstetrics and gynecology": "Obstetrics & Gyn.", "obstetrics and gynaecology": "Obstetrics & Gyn.",
        "obstetrics gynecology": "Obstetrics & Gyn.", "obgyn": "Obstetrics & Gyn.", "ob gyn": "Obstetrics & Gyn.",
        "gynecology": "Obstetrics & Gyn.", "obstetrics": "Obstetrics & Gyn.", "endocrine": "Endocrinology",
        "haematology": "Hematology", "renal": "Nephrology", "urology": "Nephrology", "surgical": "Surgery",
        "infectious disease": "Infectious Diseases", "infectious": "Infectious Diseases", "infectology": "Infectious Diseases",
    },
    "ST": {
        "abnormality": "Abnormality Detection", "abnormality detection": "Abnormality Detection",
        "detection": "Abnormality Detection", "modality identification": "Modality ID",
        "modality recognition": "Modality ID", "anatomy identification": "Anatomy ID",
        "anatomy recognition": "Anatomy ID", "organ identification": "Anatomy ID",
        "procedure explanation": "Procedural Explanation", "procedural": "Procedural Explanation",
        "visual attribute": "Visual Attributes", "attributes": "Visual Attributes",
        "severity": "Severity Est.", "severity estimation": "Severity Est.", "severity est": "Severity Est.",
        "treatment": "Treatment Suggestion", "treatment suggestions": "Treatment Suggestion",
        "cause": "Etiology", "aetiology": "Etiology", "description": "Image Description", "caption": "Image Description",
        "image captioning": "Image Description", "result analysis": "Result Analysis", "results analysis": "Result Analysis",
        "differential diagnosis": "Diagnosis",
    },
    "SBP": {
        "cells": "Cell", "lung": "Lungs", "kidney": "Kidneys", "renal": "Kidneys", "eye": "Eyes", "retina": "Eyes",
        "tooth": "Teeth", "bone": "Bones", "skeleton": "Bones", "joint": "Joints", "muscle": "Muscles",
        "breast": "Breasts", "ear": "Ears", "intestine": "Intestines", "bowel": "Intestines", "colon": "Intestines",
        "vessels": "Blood Vessels", "blood vessel": "Blood Vessels", "artery": "Blood Vessels", "arteries": "Blood Vessels",
        "vasculature": "Blood Vessels", "pharynx": "Throat", "larynx": "Throat", "cardiac": "Heart",
        "hepatic": "Liver", "cerebral": "Brain", "vertebrae": "Spine", "spinal cord": "Spine",
        "genitals": "Reproductive Organs", "uterus": "Reproductive Organs", "ovary": "Reproductive Organs",
        "prostate": "Reproductive Organs", "reproductive organ": "Reproductive Organs",
        "non body": "Non-body part", "no body part": "Non-body part",
    },
    "GBP": {
        "chest": "Thorax", "thoracic": "Thorax", "abdominal": "Abdomen", "upper limb": "Upper limbs",
        "arm": "Upper limbs", "arms": "Upper limbs", "hand": "Upper limbs", "lower limb": "Lower limbs",
        "leg": "Lower limbs", "legs": "Lower limbs", "foot": "Lower limbs", "skull": "Head", "brain": "Head",
        "pelvic": "Pelvis", "cervical": "Neck", "non body": "Non-body part", "no body part": "Non-body part",
    },
}


def _norm(text: str) -> str:
    """Case/spacing/punctuation-insensitive key: 'Obstetrics & Gyn.' -> 'obstetrics & gyn'; 'X-Ray' -> 'x ray'."""
    return " ".join(re.sub(r"[^0-9a-z&]+", " ", text.lower()).split())


def _build_lookup() -> dict[str, dict[str, str]]:
    lookup: dict[str, dict[str, str]] = {}
    for f, tags in VOCAB.items():
        table = {_norm(t): t for t in tags}
        table.update({_norm(t).replace(" ", ""): t for t in tags})  # "xray", "nonbody part" spelled together
        for alias, canon in ALIASES[f].items():
            if canon not in tags:  # a typo in the alias table must fail loudly at import, not at scoring time
                raise ValueError(f"alias {alias!r} -> {canon!r} is not a {f} tag")
            table.setdefault(_norm(alias), canon)
            table.setdefault(_norm(alias).replace(" ", ""), canon)
        lookup[f] = table
    return lookup


_LOOKUP = _build_lookup()


def canonical_tag(field_code: str, tag: str) -> str | None:
    """The vocabulary tag `tag` means in field `field_code`, or None when it is out of vocabulary."""
    key = _norm(tag)
    if not key:
        return None
    table = _LOOKUP[field_code]
    return table.get(key) or table.get(key.replace(" ", ""))


# ---------------------------------------------------------------------------------------------------------- prompt

SYSTEM_PROMPT_HEAD = (
    "You are an expert medical assistant designed to categorize samples in different ways. A sample is composed of "
    "an optional image (or list of images), a question (or list of questions), and an answer (or list of answers).\n\n"
    "Determine for each of the following sections which of the possible tags provided best describe the sample. "
    "For each category, you must only use the tags explicitly listed. If none apply, use the Other tag."
)
SCORE_DEFINITION = (
    "Score (1-5) evaluating coherence and relatedness among image, question, and answer: 1 = the answer is unrelated "
    "to the image or question, or wrong; 2 = mostly incoherent; 3 = partially coherent; 4 = coherent with minor "
    "issues; 5 = fully coherent, correct and grounded in the image."
)
OUTPUT_INSTRUCTIONS = (
    "Taking into account that for each category type, you must provide the tags in priority order (most relevant "
    "first, separated by commas), respond using the following format and nothing else:\n"
    "MOD[Modality] MED[Medical Field] ST[Sample Type] SBP[Specific Body Part] GBP[General Body Part] "
    "SQ[Sample Quality]"
)
# The paper's worked example (Appendix A.1), kept verbatim including its CT/X-ray mismatch in the image label.
EXAMPLES = (
    "Example:\nImage: {CT scan}\nQuestion: Is there evidence of a fracture in the distal radius?\nAnswer: Yes\n"
    "Response: MOD[X-ray] MED[Orthopedics] ST[Abnormality Detection] SBP[Bones] GBP[Upper limbs] SQ[4]",
)


def system_prompt() -> str:
    taxonomy = "\n".join(f"- {FIELD_NAMES[f]} ({f}): {', '.join(VOCAB[f])}" for f in TAG_FIELDS)
    taxonomy += f"\n- {FIELD_NAMES['SQ']} (SQ): {SCORE_DEFINITION}"
    return "\n\n".join([SYSTEM_PROMPT_HEAD, "Taxonomy:\n" + taxonomy, OUTPUT_INSTRUCTIONS, *EXAMPLES])


def _turn_text(turn: dict[str, Any]) -> str:
    return "\n".join(p["text"] for p in turn["content"] if p.get("type") == "text").strip()


def qa_pairs(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(question, answer) per user turn followed by assistant turns; system turns are not part of the sample."""
    pairs: list[tuple[str, str]] = []
    question: list[str] = []
    answer: list[str] = []
    for m in messages:
        if m["role"] == "user":
            if answer:
                pairs.append(("\n".join(question), "\n".join(answer)))
                question, answer = [], []
            question.append(_turn_text(m))
        elif m["role"] == "assistant":
            answer.append(_turn_text(m))
    if question or answer:
        pairs.append(("\n".join(question), "\n".join(answer)))
    return pairs


def build_prompt(sample) -> list[dict[str, Any]]:
    """Chat messages asking the scorer to tag and score `sample`: system = task + taxonomy + format, user = the
    sample's images (as image parts, in order) then its question(s) and answer(s). `sample.images` go with it."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(sample.image_part_count())]
    pairs = qa_pairs(sample.messages)
    lines = []
    for i, (q, a) in enumerate(pairs, 1):
        suffix = f" {i}" if len(pairs) > 1 else ""
        lines.append(f"Question{suffix}: {q}\nAnswer{suffix}: {a}")
    if not content:
        lines.insert(0, "Image: (none)")
    lines.append("Response:")
    content.append({"type": "text", "text": "\n".join(lines)})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt()}]},
        {"role": "user", "content": content},
    ]


# ---------------------------------------------------------------------------------------------------------- parser

@dataclass
class ParsedTags:
    tags: dict[str, list[str]] = field(default_factory=dict)  # field -> canonical tags in priority order
    score: float | None = None  # 1-5; None exactly when `failure` is set
    failure: str | None = None  # why no score: empty_output | missing_sq | malformed_sq | sq_out_of_range
    failure_detail: str = ""
    oov: dict[str, list[str]] = field(default_factory=dict)  # field -> dropped out-of-vocabulary tags
    missing: list[str] = field(default_factory=list)  # tag fields absent from the output
    aliased: int = 0  # tags mapped through the alias table (or case/spacing variants)

    @property
    def n_oov(self) -> int:
        return sum(len(v) for v in self.oov.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "tags": self.tags, "score": self.score, "failure": self.failure, "failure_detail": self.failure_detail,
            "oov": self.oov, "missing": self.missing, "aliased": self.aliased,
        }


# Field names the model may spell out instead of the codes, longest first so "MEDICAL FIELD" wins over "MED".
_FIELD_SYNONYMS = {
    "SAMPLE QUALITY": "SQ", "QUALITY SCORE": "SQ", "QUALITY": "SQ", "SCORE": "SQ", "SQ": "SQ",
    "SPECIFIC BODY PARTS": "SBP", "SPECIFIC BODY PART": "SBP", "SBP": "SBP",
    "GENERAL BODY PARTS": "GBP", "GENERAL BODY PART": "GBP", "GBP": "GBP",
    "MEDICAL FIELDS": "MED", "MEDICAL FIELD": "MED", "SPECIALTY": "MED", "MED": "MED",
    "SAMPLE TYPES": "ST", "SAMPLE TYPE": "ST", "ST": "ST",
    "MODALITY": "MOD", "MOD": "MOD",
}
_NAME_RE = "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in sorted(_FIELD_SYNONYMS, key=len, reverse=True))
# FIELD [ ... ]  (brackets may be separated by ':' or spaces; no nested ']' inside, "Figures (Graphs/Charts)" is fine)
_FIELD_RE = re.compile(rf"(?<![A-Za-z])({_NAME_RE})\s*[:=]?\s*\[([^\]\[]*)\]", re.IGNORECASE)
# Unbracketed score fallback: "SQ: 4", "SQ = 4/5", "Sample quality 3".
_SQ_LOOSE_RE = re.compile(r"(?<![A-Za-z])(?:SQ|sample\s+quality)\s*[:=]?\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)
_SCORE_VALUE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*5(?:\.0)?)?\s*$")


def _field_code(name: str) -> str:
    return _FIELD_SYNONYMS[" ".join(name.upper().split())]


def _parse_score(value: str) -> tuple[float | None, str | None, str]:
    m = _SCORE_VALUE_RE.match(value)
    if not m:
        return None, "malformed_sq", f"SQ[{value.strip()[:40]}] is not a number"
    score = float(m.group(1))
    if not SCORE_MIN <= score <= SCORE_MAX:
        return None, "sq_out_of_range", f"SQ={m.group(1)} outside {SCORE_MIN}-{SCORE_MAX}"
    return score, None, ""


def parse_output(text: str | None) -> ParsedTags:
    """Parse one model answer. When a field occurs more than once (the model echoed the example, or repeated
    itself) the LAST occurrence wins: the answer line comes after any echo."""
    out = ParsedTags()
    if text is None or not text.strip():
        out.failure, out.failure_detail = "empty_output", "the model returned no text"
        out.missing = list(TAG_FIELDS)
        return out
    found: dict[str, str] = {}
    for m in _FIELD_RE.finditer(text):
        found[_field_code(m.group(1))] = m.group(2)
    for f in TAG_FIELDS:
        if f not in found:
            out.missing.append(f)
            continue
        tags: list[str] = []
        for raw in re.split(r"[,;|]", found[f]):
            raw = raw.strip().strip("'\"*` ")
            if not raw:
                continue
            canon = canonical_tag(f, raw)
            if canon is None:
                out.oov.setdefault(f, []).append(raw[:60])
                continue
            if canon != raw:
                out.aliased += 1
            if canon not in tags:
                tags.append(canon)
        out.tags[f] = tags
    if "SQ" in found:
        out.score, out.failure, out.failure_detail = _parse_score(found["SQ"])
    else:
        loose = list(_SQ_LOOSE_RE.finditer(text))
        if loose:
            out.score, out.failure, out.failure_detail = _parse_score(loose[-1].group(1))
        else:
            out.failure = "missing_sq"
            out.failure_detail = "no SQ[n] in output: " + " ".join(text.split())[:80]
    return out
