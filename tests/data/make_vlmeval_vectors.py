"""Make tests/data/vlmeval_vectors.json by running VLMEvalKit's OWN functions (and ProbMed's scorer) on test rows and
model replies. Run it OUTSIDE the project, in a throwaway environment (see tests/data/README.md):

    python3 -m venv /tmp/vlmk-venv && /tmp/vlmk-venv/bin/pip install pandas numpy
    git clone https://github.com/open-compass/VLMEvalKit /tmp/VLMEvalKit      # or any checkout
    curl -o /tmp/probmed_calculate_score.py \
        https://raw.githubusercontent.com/eric-ai-lab/ProbMed/main/eval/calculate_score.py
    /tmp/vlmk-venv/bin/python tests/data/make_vlmeval_vectors.py /tmp/VLMEvalKit /tmp/probmed_calculate_score.py \
        > tests/data/vlmeval_vectors.json

Nothing of VLMEvalKit is copied into this repository: the functions are taken from the checkout at run time. Only
the module-level imports VLMEvalKit's heavy package `__init__` would pull in are replaced by the handful of names the
functions use (`get_logger`, `toliststr`, `cn_string`, `build_option_str`, `istype`, `DATASET_TYPE`), each also
taken from the checkout's source where it is a plain function, and `DATASET_TYPE` answering the dataset types
VLMEvalKit registers for these names (PathMMU/GMAI-MMBench/OmniMedVQA: MCQ, MMMU_DEV_VAL: MCQ, ProbMed as a custom
Y/N set, SLAKE as a custom VQA set).
"""

from __future__ import annotations

import ast
import json
import logging
import sys
import types
from pathlib import Path

import pandas as pd

VLMK = Path(sys.argv[1])
PROBMED_SCORER = Path(sys.argv[2])


def functions(path: Path, names: list[str], env: dict) -> dict:
    """Exec only the named top-level functions / classes of a source file in `env`."""
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    missing = set(names) - {n.name for n in keep}
    assert not missing, missing
    exec(compile(ast.Module(keep, []), str(path), "exec"), env)
    return env


def method_source(path: Path, cls: str, meth: str, env: dict):
    tree = ast.parse(path.read_text())
    c = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    m = next(n for n in c.body if isinstance(n, ast.FunctionDef) and n.name == meth)
    exec(compile(ast.Module([m], []), str(path), "exec"), env)
    return env[meth]


# --- a minimal `vlmeval` package: the real matching_util.py and qwen2_vl/prompt.py, stub package __init__s
misc = functions(VLMK / "vlmeval/smp/misc.py", ["toliststr", "cn_string", "istype", "process_punctuation"], {})
vlm = functions(VLMK / "vlmeval/smp/vlm.py", ["build_option_str"], {"pd": pd})
pkg = types.ModuleType("vlmeval")
pkg.__path__ = []
smp = types.ModuleType("vlmeval.smp")
smp.__path__ = []
log_mod = types.ModuleType("vlmeval.smp.log")
log_mod.get_logger = lambda name=None: logging.getLogger(name or "vlmeval")
smp.get_logger = log_mod.get_logger
smp.log = log_mod
dataset_mod = types.ModuleType("vlmeval.dataset")
TYPES = {"PathMMU_TEST": "MCQ", "GMAI-MMBench_VAL": "MCQ", "OmniMedVQA": "MCQ", "MMMU_DEV_VAL": "MCQ",
         "ProbMed": "Y/N", "SLAKE": "VQA", "CareQA-Vision-MCQ": "MCQ", "CareQA-Vision-Open": "VQA"}
dataset_mod.DATASET_TYPE = lambda name, default=None: TYPES.get(name, default)
sys.modules.update({"vlmeval": pkg, "vlmeval.smp": smp, "vlmeval.smp.log": log_mod, "vlmeval.dataset": dataset_mod})

mu_env: dict = {"__name__": "vlmeval.utils.matching_util"}
exec(compile((VLMK / "vlmeval/utils/matching_util.py").read_text(), "matching_util.py", "exec"), mu_env)
can_infer = mu_env["can_infer"]

pr_env: dict = {"__name__": "vlmeval.vlm.qwen2_vl.prompt"}
exec(compile((VLMK / "vlmeval/vlm/qwen2_vl/prompt.py").read_text(), "prompt.py", "exec"), pr_env)
Mixin = pr_env["Qwen2VLPromptMixin"]

mc_env = {"pd": pd, "string": __import__("string"), "rd": __import__("random"), "can_infer": can_infer,
          "cn_string": misc["cn_string"], "build_option_str": vlm["build_option_str"],
          "logger": logging.getLogger("vlmeval"), "re": __import__("re")}
functions(VLMK / "vlmeval/dataset/utils/multiple_choice.py",
          ["MMMU_preproc", "build_choices", "build_prompt", "build_prompt_cn", "build_prompt_blink",
           "build_prompt_wemath", "build_prompt_LEGO", "extract_answer_from_item", "eval_vanilla"], mc_env)
yorn_env = {"process_punctuation": misc["process_punctuation"]}
functions(VLMK / "vlmeval/dataset/utils/yorn.py", ["YOrN_Extraction"], yorn_env)
base_build_prompt = method_source(VLMK / "vlmeval/dataset/image_base.py", "ImageBaseDataset", "build_prompt",
                                  {"toliststr": misc["toliststr"]})
pm_env: dict = {}
functions(PROBMED_SCORER, ["get_score_binary"], pm_env)


class Model(Mixin):  # Qwen2VLChat's prompt side; images are "dumped" as placeholder names
    def __init__(self):
        super().__init__(use_custom_prompt=True)
        self.set_dump_image(lambda line: [f"img{k}" for k in range(int(line.get("n_images", 1)))])


class BaseDataset:  # ImageBaseDataset.build_prompt for sets the Qwen2-VL entry does not prompt itself
    meta_only = False

    def dump_image(self, line):
        return [f"img{k}" for k in range(int(line.get("n_images", 1)))]


BaseDataset.build_prompt = base_build_prompt
model = Model()


def prompt_of(dataset: str, row: dict) -> dict:
    line = pd.Series(row)
    if model.use_custom_prompt(dataset):
        msgs = model.build_prompt(line, dataset=dataset)
        how = "Qwen2VLPromptMixin"
    else:
        msgs = BaseDataset().build_prompt(line)
        how = "ImageBaseDataset"
    return {"text": "".join(m["value"] for m in msgs if m["type"] == "text"),
            "images": sum(m["type"] == "image" for m in msgs),
            "order": [m["type"] for m in msgs], "builder": how}


NaN = float("nan")
MCQ_ROWS = {
    "PathMMU_TEST": [
        {"index": 1, "question": "Which tissue is shown?", "hint": NaN, "A": "Epithelium", "B": "Muscle",
         "C": "Nerve", "D": "Connective tissue", "answer": "D"},
        {"index": 2, "question": "What is the most likely diagnosis?", "hint": "H&E stain, 40x.",
         "A": "Adenocarcinoma", "B": "Squamous cell carcinoma", "C": "Lymphoma", "D": "Normal tissue",
         "E": "Sarcoma", "answer": "A"},
    ],
    "GMAI-MMBench_VAL": [
        {"index": 10, "question": "What modality is used?", "hint": NaN, "A": "CT", "B": "MRI", "C": "X-ray",
         "D": "Ultrasound", "answer": "B"},
        {"index": 11, "question": "图中显示的是哪个器官？", "hint": NaN,
         "A": "肝", "B": "肺", "C": "心", "D": "肾", "answer": "B"},
    ],
    "OmniMedVQA": [
        {"index": 20, "question": "Is this image normal or abnormal?", "hint": NaN, "A": "normal",
         "B": "abnormal", "answer": "B"},
    ],
    "CareQA-Vision-MCQ": [
        {"index": 30, "question": "¿Qué prueba de imagen se muestra?", "hint": NaN, "A": "TC", "B": "RM",
         "C": "Radiografía", "D": "Ecografía", "answer": "C"},
    ],
}
MMMU_ROWS = [
    {"index": 40, "question": "<image 1> What does the image show?", "hint": NaN, "A": "a cell", "B": "a tissue",
     "C": "an organ", "D": "a system", "answer": "B", "n_images": 1},
    {"index": 41, "question": "Compare <image 1> and <image 2>: which is larger?", "hint": NaN,
     "A": "<image 1>", "B": "<image 2>", "answer": "A", "n_images": 2},
    {"index": 42, "question": "What is the heart rate shown in <image 1> (beats per minute)?", "hint": NaN,
     "A": NaN, "B": NaN, "answer": "75", "n_images": 1},
]
YN_ROWS = {"ProbMed": [{"index": 50, "question": "Is this a CT scan?", "answer": "yes"}]}
VQA_ROWS = {"SLAKE": [{"index": 60, "question": "Which organ is abnormal?", "answer": "Lung"}],
            "CareQA-Vision-Open": [{"index": 61, "question": "Describe the finding.", "answer": "A nodule"}]}

MCQ_REPLIES = [
    "A", "B", "C.", "(D)", "D. Connective tissue", "The answer is B.", "The correct answer is **C**.",
    "Answer: A", "Option B", "B) Muscle", "Epithelium", "muscle", "Nerve tissue is shown in the image.",
    "It could be A or B.", "A and C are both plausible.", "I think the answer is (C) Nerve.", "",
    "Cannot determine the answer", "The image shows connective tissue, so the answer is D.",
    "A quantity of cells is visible; the answer is B", "Based on the image, C", "**A**", "A: Epithelium",
    "The tissue shown is muscle tissue.", "Adenocarcinoma", "Squamous cell carcinoma", "肺", "B. 肺",
    "E", "Z", "None of the above", "The answer is E. Sarcoma",
]
MMMU_OPEN_REPLIES = ["75", "The heart rate is 75 beats per minute.", "80", "A", "B", "Other Answers",
                     "It is about 75.", "seventy-five", ""]
YN_REPLIES = ["Yes", "No", "yes.", "no", "Yes, it is a CT scan.", "No, this is an MRI.", "YES", "NO.",
              "It is not possible to say.", "Yes or no: yes", "no, yes", "The scan is a CT. Yes.", "",
              "Not a CT; No.", "yes/no", "I cannot tell, no idea"]


def score_mcq(row: dict, replies: list[str], dataset: str) -> list[dict]:
    out = []
    for reply in replies:
        item = pd.Series({**row, "prediction": reply, "GT": row["answer"]})
        res = mc_env["extract_answer_from_item"](None, item, dataset_name=dataset)
        hit = mc_env["eval_vanilla"](None, item, dataset_name=dataset)["hit"]
        out.append({"reply": reply, "opt": res["opt"], "hit": hit})
    return out


vectors: dict = {"source": "open-compass/VLMEvalKit (functions run from a checkout) + eric-ai-lab/ProbMed "
                           "eval/calculate_score.py", "mcq": [], "mmmu": [], "yorn": [], "vqa": []}
for ds, rows in MCQ_ROWS.items():
    for row in rows:
        vectors["mcq"].append({"dataset": ds, "row": {k: (None if v != v else v) for k, v in row.items()},
                               "prompt": prompt_of(ds, row), "scores": score_mcq(row, MCQ_REPLIES, ds)})
for row in MMMU_ROWS:
    df = pd.DataFrame([{**row, "prediction": ""}])
    pre = mc_env["MMMU_preproc"](df.copy()).iloc[0].to_dict()  # the open-question rewrite, as evaluation does
    gt = row["answer"] if row["answer"] in "ABCDEFGHIJ" else "A"
    pre["answer"] = gt
    replies = MMMU_OPEN_REPLIES if row["A"] != row["A"] else MCQ_REPLIES
    vectors["mmmu"].append({"dataset": "MMMU_DEV_VAL", "row": {k: (None if v != v else v) for k, v in row.items()},
                            "prompt": prompt_of("MMMU_DEV_VAL", row),
                            "rewritten": {k: pre.get(k) for k in ("A", "B") if pre.get(k) == pre.get(k)},
                            "scores": score_mcq({k: v for k, v in pre.items() if k != "prediction"}, replies,
                                                "MMMU_DEV_VAL")})
for ds, rows in YN_ROWS.items():
    for row in rows:
        vectors["yorn"].append({"dataset": ds, "row": row, "prompt": prompt_of(ds, row), "scores": [
            {"reply": r, "yorn_extraction": yorn_env["YOrN_Extraction"](r),
             "probmed_yes": pm_env["get_score_binary"](r, "yes"), "probmed_no": pm_env["get_score_binary"](r, "no")}
            for r in YN_REPLIES]})
for ds, rows in VQA_ROWS.items():
    for row in rows:
        vectors["vqa"].append({"dataset": ds, "row": row, "prompt": prompt_of(ds, row)})
json.dump(vectors, sys.stdout, indent=1, ensure_ascii=False)
