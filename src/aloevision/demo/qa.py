"""Question/answer templates about a synthetic scene: every answer is readable off the synthetic image (finding
position, presence, modality) or is a fixed fact shared by the text training data and the text evaluation set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aloevision.demo.images import Scan, make_scan
from aloevision.demo.vocabulary import FINDINGS, MODALITIES, ORGANS, POSITIONS

# PubMedVision-style long modality names.
MODALITY_LONG = {
    "CT": "Computed Tomography", "MRI": "Magnetic Resonance Imaging", "X-ray": "X-Ray", "Ultrasound": "Ultrasound",
}
# Med-GRIT / SA-Med2D file-stem prefixes.
MODALITY_STEM = {"CT": "ct", "MRI": "mr", "X-ray": "x", "Ultrasound": "ultrasound"}

# (question, correct answer, distractors, one-sentence explanation): the medical text facts the Aloe text demo
# teaches and the MedMCQA-like demo set asks.
TEXT_FACTS: list[tuple[str, str, list[str], str]] = [
    (
        "Which imaging modality uses sound waves?", "Ultrasound", ["CT", "MRI", "X-ray"],
        "Ultrasound sends sound waves into the body.",
    ),
    (
        "Which imaging modality uses a strong magnetic field?", "MRI", ["CT", "Ultrasound", "X-ray"],
        "MRI uses a magnet and radio waves.",
    ),
    (
        "Which imaging modality builds cross sections from many X-ray projections?", "CT",
        ["MRI", "Ultrasound", "X-ray"],
        "CT combines many projections into slices.",
    ),
    (
        "Which imaging modality is a single projection radiograph?", "X-ray", ["CT", "MRI", "Ultrasound"],
        "A radiograph is one X-ray projection.",
    ),
    (
        "Which organ pumps blood through the body?", "heart", ["liver", "kidney", "lungs"],
        "The heart is a muscular pump.",
    ),
    (
        "Which organ filters the blood to make urine?", "kidney", ["heart", "liver", "brain"],
        "The kidney filters blood.",
    ),
    (
        "Which organ is the main site of gas exchange?", "lungs", ["liver", "heart", "spine"],
        "Gas exchange happens in the lungs.",
    ),
    (
        "Which organ makes bile?", "liver", ["kidney", "lungs", "brain"],
        "Bile is made in the liver.",
    ),
    (
        "Which organ is protected by the skull?", "brain", ["heart", "liver", "kidney"],
        "The skull protects the brain.",
    ),
    (
        "Which structure protects the spinal cord?", "spine", ["lungs", "heart", "kidney"],
        "The spine surrounds the spinal cord.",
    ),
    (
        "What is a fluid filled sac called?", "cyst", ["nodule", "mass", "lesion"],
        "A cyst is a sac filled with fluid.",
    ),
    (
        "What is a small round growth in the lung called?", "nodule", ["cyst", "mass", "lesion"],
        "A small round growth is a nodule.",
    ),
]


def article(word: str) -> str:
    """'a CT', 'an MRI', 'an X-ray', 'an Ultrasound' (by sound: the modality acronyms start with a vowel sound)."""
    return ("an " if word[0] in "AEIOUMXaeiou" else "a ") + word


@dataclass
class Scene:
    scan: Scan
    organ: str
    finding: str

    @property
    def modality(self) -> str:
        return self.scan.modality

    @property
    def position(self) -> str | None:
        return self.scan.position


def random_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 128),
    p_normal: float = 0.2,
    modality: str | None = None,
    position: str | None | bool = True,
) -> Scene:
    """A scene with random modality/organ/finding; `position=True` picks one, None makes a normal study."""
    m = modality or MODALITIES[int(rng.integers(len(MODALITIES)))]
    organ = ORGANS[int(rng.integers(len(ORGANS)))]
    finding = FINDINGS[int(rng.integers(len(FINDINGS)))]
    if position is True:
        position = None if rng.random() < p_normal else POSITIONS[int(rng.integers(len(POSITIONS)))]
    return Scene(make_scan(rng, m, size, position), organ, finding)


def caption(s: Scene) -> str:
    if s.position is None:
        return f"This {s.modality} image of the {s.organ} is a normal study with no acute findings."
    return f"This {s.modality} image of the {s.organ} shows a {s.finding} in the {s.position} region."


def long_caption(s: Scene) -> str:
    """MedTrinity-style multigranular description: modality, organ, ROI location and size in prose (no box)."""
    base = f"The image is {article(s.modality)} scan of the {s.organ}."
    if s.position is None:
        return base + " No region of interest is seen; this is a normal study with no acute findings."
    w, h = s.scan.image.size
    x1, y1, x2, y2 = s.scan.box
    area = 100.0 * (x2 - x1) * (y2 - y1) / (w * h)
    return (
        base + f" A bright {s.finding} is the region of interest, located in the {s.position} region of the image,"
        f" and occupies approximately {area:.1f}% of the image area. The rest of the {s.organ} looks normal."
    )


def qa_pairs(s: Scene) -> list[tuple[str, str]]:
    """All answerable (question, answer) pairs about a scene."""
    out = [
        ("What imaging modality is this?", f"This is {article(s.modality)} image."),
        (f"Is there a {s.finding} in this image?", "Yes." if s.position else "No."),
        ("Describe the image.", caption(s)),
    ]
    if s.position:
        out.insert(0, ("Where is the finding located?", f"The {s.finding} is in the {s.position} region."))
    return out


# ------------------------------------------------------------------------------------------------ closed questions
# Real VQA training sets (PubMedVision, MedMax's PMC-VQA/SLAKE rows, Cambrian's PathVQA, LLaVA-1.5 data) carry short
# and closed questions too. The demo's are the questions its image-dependent benchmarks ask, worded exactly as the
# evaluation prompts them (VLMEvalKit's Qwen2-VL prompts, aloevision.evaluation.protocol): the tiny random-init model
# does not generalise across wordings in two minutes. All are about the modality, readable off the scan's texture:
# - open (SLAKE-like, `vqa` prompt): the modality word            -> one hop, image -> word
# - MCQ (DemoMCQ-like, `mcq` prompt) with the options in the FIXED order of MODALITY_OPTIONS -> one hop, image -> letter
# - yes/no (ProbMed-like, the question alone), half adversarial    -> compares the image with the question's word
# The finding's quadrant is NOT asked here: the tiny model did not learn to locate it (docs/benchmarks.md "Demo run").
OPEN_MODALITY_QUESTION = "Which modality is used to take this image?"
MCQ_MODALITY_QUESTION = "What imaging modality is this?"
MODALITY_OPTIONS = {"ABCD"[k]: m for k, m in enumerate(MODALITIES)}
LETTERS = "ABCD"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def yesno_modality_question(modality: str) -> str:
    return f"Is this {article(modality)} image?"


def modality_questions(s: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """The three modality questions about a scene (prompt as the evaluation sends it, short answer), in random order.
    The yes/no one names the true modality or (half the time) another one."""
    from aloevision.evaluation.protocol import build_prompt

    wrong = _pick(rng, [m for m in MODALITIES if m != s.modality])
    asked = s.modality if rng.random() < 0.5 else wrong
    out = [
        (build_prompt("vqa", OPEN_MODALITY_QUESTION), s.modality),
        (build_prompt("mcq", MCQ_MODALITY_QUESTION, MODALITY_OPTIONS), LETTERS[MODALITIES.index(s.modality)]),
        (build_prompt("yorn", yesno_modality_question(asked)), "yes" if asked == s.modality else "no"),
    ]
    return [out[k] for k in rng.permutation(len(out))]

