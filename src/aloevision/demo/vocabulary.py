"""Words and templates shared by the demo data and the tiny tokenizer's training corpus (so the tiny BPE has merges
for the words the demo actually uses)."""

from __future__ import annotations

import itertools

MODALITIES = ["CT", "MRI", "X-ray", "Ultrasound"]
ORGANS = ["brain", "lungs", "liver", "kidney", "heart", "spine"]
FINDINGS = ["nodule", "lesion", "mass", "cyst"]
# Position of the bright finding in the synthetic scan: the answer a model must learn to read off the image.
POSITIONS = ["upper left", "upper right", "lower left", "lower right"]
YES_NO = ["yes", "no"]

GENERAL_TOPICS = ["photosynthesis", "gravity", "the water cycle", "prime numbers", "volcanoes", "the moon"]
# General-domain pictures (Cambrian-like rows): one coloured shape on a light background.
COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
BODY_PARTS = ["Head", "Chest", "Abdomen", "Pelvis"]  # PubMedVision-style body_part labels

FILLER = (
    "The image shows a scan of the patient. There is a bright finding in the picture. Describe the image. "
    "Where is the finding located? Is there an abnormality? Answer with the letter of the correct option. "
    "What imaging modality is this? The answer is A. The answer is B. The answer is C. The answer is D. "
    "Please explain step by step. The patient presented with pain and fever. Treatment includes rest and fluids. "
    "Question: Answer: Options: Yes. No. This is a normal study with no acute findings. "
    "A chest radiograph of an adult with clear lung fields. Region of interest. Bounding box. "
    # the closed-question instructions of the demo data and the evaluation prompts
    "Answer with the option's letter from the given choices directly. Answer yes or no. Answer the question briefly. "
)


def corpus_sentences() -> list[str]:
    out = [FILLER] * 4
    for m, o, f, p in itertools.product(MODALITIES, ORGANS, FINDINGS, POSITIONS):
        out.append(f"This {m} image of the {o} shows a {f} in the {p} region.")
        out.append(f"Is there a {f} in the {p} of this {m} scan of the {o}? The answer is yes.")
    for m in MODALITIES:
        out.append(f"Is this an {m} image? Which modality is used to take this image?\nA. {m}\nB. {m}")
    for p in POSITIONS:
        out.append(f"Where is the finding located in the image?\nC. {p}\nD. {p}")
    for c, s in itertools.product(COLORS, SHAPES):
        out.append(f"What color is the shape? The shape is a {c} {s}. What shape is in the picture? A {s}.")
    out.append("Is there a fracture in this X-ray? The bone shows a fracture. No fracture is seen. " * 2)
    for t in GENERAL_TOPICS:
        out.append(f"Explain {t} in simple words. {t.capitalize()} is a topic of science that people study.")
    out.append("".join(chr(c) for c in range(32, 127)))
    out.append("0123456789 (12,345),(678,901) [0.5, 0.25] {} <> / \\ | _ - + = * & ^ % $ # @ ! ~")
    return out
