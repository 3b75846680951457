"""Loaders for the multimodal evaluation sets in their native formats (datasets.md E2-E8).

- `vlmevalkit_tsv`  VLMEvalKit MCQ TSVs (PathMMU, GMAI-MMBench, OmniMedVQA, MMMU_DEV_VAL, the demo MCQ set):
                    `index`, `image` (base64, a stringified list of base64 for multi-image rows, or the `index` of
                    another row whose image it reuses), `question`, option columns `A`..`J`, `answer` (letter; text
                    for MMMU open questions), optional `hint` and grouping columns. `path` may be a file, a glob or a
                    folder of `*.tsv` parts (GMAI-MMBench test ships 11, OmniMedVQA 14).
- `omnimedvqa`      OmniMedVQA's own release: `QA_information/<access>/*.json` with `gt_answer` as option TEXT.
- `probmed`         ProbMed yes/no with paired adversarial questions (pairs by `pair_id`, else by (id, qa_type)).
- `slake`           SLAKE `<split>.json` + `imgs/` folder or `imgs.zip`; English only unless options.lang says.
- `mmmu`            MMMU's HF parquet layout `<Subject>/<split>-*.parquet`: `options` is a stringified list,
                    images in `image_1`..`image_7`; default subjects are the five Health & Medicine ones.
- `careqa_vision`   CareQA-Vision `CareQA-Vis_close.json` (op1..op4, `cop` 1-indexed) and `CareQA-Vis_open.json`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import glob
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from aloevision.evalsets.base import Bench, EvalItem, LoadStats, SkipRow, first, is_blank, iter_file, iter_records
from aloevision.evalsets.registry import drive, index_options, letter_answer, loader, numbered

OPTION_LETTERS = "ABCDEFGHIJ"
# VLMEvalKit grouping columns worth keeping for per-category scores.
TSV_META_COLUMNS = ("category", "l2-category", "subset", "split", "clinical vqa task", "department",
                    "perceptual granularity", "modality", "question_type", "img_type", "subfield", "topic_difficulty")
MMMU_SUBJECTS = [  # all 30 MMMU subjects (MMMU/MMMU configs; VLMEvalKit's MMMU_DEV_VAL covers them all)
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design", "Diagnostics_and_Laboratory_Medicine",
    "Economics", "Electronics", "Energy_and_Power", "Finance", "Geography", "History", "Literature", "Manage",
    "Marketing", "Materials", "Math", "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology",
    "Public_Health", "Sociology"]
MMMU_HEALTH_SUBJECTS = ["Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                        "Pharmacy", "Public_Health"]


def _b64(value: str) -> bytes:
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as e:
        raise SkipRow("bad_image_base64", str(e)) from None
    if len(data) < 16:
        raise SkipRow("bad_image_base64", f"{len(data)} bytes")
    return data


def _resolve(base: Path, rel: Any, what: str = "image") -> str:
    if not isinstance(rel, str) or not rel.strip():
        raise SkipRow("no_image", f"{what} field is {rel!r}")
    p = Path(rel)
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise SkipRow("missing_image", str(p))
    return str(p)


# ------------------------------------------------------------------------------------------------- VLMEvalKit TSV
def _part_key(f: Path) -> tuple:
    """Natural order: part_2 before part_10 (VLMEvalKit concatenates OmniMedVQA's parts 1..14 in numeric order)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name))


def tsv_files(path: str) -> list[Path]:
    """The TSVs of a benchmark: a file, a glob, or a folder of parts in numeric order. VLMEvalKit's `*_local.tsv`
    twins (the same rows with images localised to paths) are skipped when the original part is there too."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = list(p.glob("*.tsv"))
    elif p.is_file():
        files = [p]
    else:
        files = [Path(f) for f in glob.glob(path)]
    names = {f.name for f in files}
    files = sorted((f for f in files if not (f.stem.endswith("_local") and f"{f.stem[:-6]}.tsv" in names)),
                   key=_part_key)
    if not files:
        raise FileNotFoundError(f"no VLMEvalKit TSV at {path!r}")
    return files


def _tsv_rows(files: list[Path]) -> Iterator[tuple[str, Any]]:
    for f in files:
        yield from numbered(iter_file(f), prefix=f"{f.name}:" if len(files) > 1 else "")


def _is_reference(image: str) -> bool:
    return len(image) <= 64 and image.strip().isdigit()  # VLMEvalKit's own test for "this is another row's index"


@loader("vlmevalkit_tsv")
def load_vlmevalkit_tsv(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    files = tsv_files(bench.path)
    image_root = Path(bench.options.get("image_root") or files[0].parent)
    # Pass 1 (cheap: no decoding) finds which rows' images other rows reuse, so only those are kept in memory.
    referenced = {r["image"].strip() for _, r in _tsv_rows(files)
                  if isinstance(r, Mapping) and isinstance(r.get("image"), str) and _is_reference(r["image"])}
    kept: dict[str, list[bytes]] = {}

    def images_of(row: Mapping[str, Any]) -> list[Any]:
        img = row.get("image")
        if is_blank(img):
            if not is_blank(row.get("image_path")):
                paths = row["image_path"]
                paths = ast.literal_eval(paths) if paths.strip().startswith("[") else [paths]
                return [_resolve(image_root, p) for p in paths]
            raise SkipRow("no_image", "empty image and image_path")
        img = img.strip()
        if _is_reference(img):
            if img not in kept:
                raise SkipRow("bad_image_reference", f"image refers to row index {img}, not seen before it")
            return list(kept[img])
        if img.startswith("["):
            try:
                values = ast.literal_eval(img)
            except (ValueError, SyntaxError):
                raise SkipRow("bad_image_base64", "unparsable list of images") from None
            return [_b64(v) for v in values]
        return [_b64(img)]

    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        index = str(first(row, "index", default=row_id)).strip()
        images = images_of(row)
        if index in referenced:
            kept[index] = images
        question = row.get("question")
        if is_blank(question):
            raise SkipRow("no_question")
        # VLMEvalKit reads cells with pandas: option text is kept as is (str of the cell), a hint is prompted as
        # "Hint: ..." (aloevision.evaluation.protocol), so it stays separate from the question here.
        options = {k: str(row[k]) for k in OPTION_LETTERS if k in row and not is_blank(row[k])}
        meta = {k: row[k] for k in TSV_META_COLUMNS if k in row and not is_blank(row[k])}
        hint = row.get("hint")
        if not is_blank(hint):
            meta["hint"] = str(hint)
        if not options:  # MMMU's open questions: no options, the answer is text
            answer = str(row.get("answer") or "").strip()
            if not answer and require_answer:
                raise SkipRow("no_answer")
            if bench.options.get("mmmu_open") == "judge":
                return EvalItem(index, bench.name, "open", str(question), answer, {}, images, meta)
            return _mmmu_open_item(index, bench.name, str(question), answer, images, meta)
        if len(options) < 2:
            raise SkipRow("too_few_options", f"{len(options)} option(s)")
        answer = letter_answer(row.get("answer"), options, require_answer)
        return EvalItem(index, bench.name, bench.kind or "mcq", str(question), answer, options, images, meta)

    yield from drive(_tsv_rows(files), stats, convert)


# ---------------------------------------------------------------------------------------------------- OmniMedVQA
@loader("omnimedvqa")
def load_omnimedvqa(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    root = Path(bench.path).expanduser()
    access = bench.options.get("access", ["Open-access"])
    files = [f for a in access for f in sorted((root / "QA_information" / a).glob("*.json"))]
    if not files:
        raise FileNotFoundError(f"{root}: no QA_information/{{{','.join(access)}}}/*.json")
    image_root = Path(bench.options.get("image_root") or root)

    def rows():
        for f in files:
            try:
                yield from numbered(iter_file(f), prefix=f"{f.stem}:")
            except (ValueError, SkipRow) as e:  # a broken file costs its rows, not the benchmark
                yield f"{f.stem}", SkipRow("bad_file", repr(e)[:200])

    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        options = {k[-1]: str(row[k]).strip() for k in ("option_A", "option_B", "option_C", "option_D", "option_E")
                   if not is_blank(row.get(k))}
        if len(options) < 2:
            raise SkipRow("too_few_options", f"{len(options)} option(s)")
        answer = letter_answer(row.get("gt_answer"), options, require_answer)
        img = _resolve(image_root, row.get("image_path"))
        meta = {"dataset": row.get("dataset"), "question_type": row.get("question_type"),
                "modality": first(row, "modality_type", "modality")}
        qid = str(first(row, "question_id", default=row_id))
        return EvalItem(qid, bench.name, bench.kind or "mcq", str(row["question"]), answer, options, [img], meta)

    yield from drive(rows(), stats, convert)


# ------------------------------------------------------------------------------------------------------- ProbMed
def _probmed_file(path: str, split: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        for name in (f"{split}.json", "test.json", "probmed.json"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p}: no {split}.json")
    return p


@loader("probmed")
def load_probmed(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    f = _probmed_file(bench.path, bench.split)
    image_root = Path(bench.options.get("image_root") or f.parent)
    pair_seen: dict[tuple[str, str], int] = {}

    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        question = first(row, "question", "query", "prompt")
        if is_blank(question):
            raise SkipRow("no_question")
        ans = str(first(row, "gt_ans", "answer", "gt_answer", default="")).strip().lower().rstrip(".")
        if ans not in ("yes", "no"):
            if require_answer or ans:
                raise SkipRow("bad_answer", f"gt_ans {ans!r} is not yes/no")
        img = _resolve(image_root, first(row, "image", "image_path", "img_path", "image_name"))
        qa_type = str(first(row, "qa_type", default=""))
        pair_id = first(row, "pair_id")
        if pair_id is None:  # no explicit pair: consecutive questions of one image and qa_type pair up
            key = (str(row.get("id")), qa_type)
            k = pair_seen.get(key, 0)
            pair_seen[key] = k + 1
            pair_id = f"{key[0]}_{qa_type}_{k // 2}"
        meta = {"pair_id": str(pair_id), "qa_type": qa_type, "image_type": row.get("image_type"),
                "image_id": row.get("id")}
        if "adversarial" in row:
            meta["adversarial"] = bool(row["adversarial"])
        return EvalItem(str(first(row, "question_id", "qid", default=row_id)), bench.name, bench.kind or "probmed",
                        str(question), ans, {}, [img], meta)

    yield from drive(numbered(iter_file(f)), stats, convert)


# --------------------------------------------------------------------------------------------------------- SLAKE
def _slake_images(root: Path, opt: Any) -> tuple[str, Any]:
    """("dir", folder) or ("zip", {img_name: archive ref}) for SLAKE's imgs/ folder or imgs.zip."""
    if opt:
        p = Path(opt).expanduser()
    elif (root / "imgs").is_dir():
        p = root / "imgs"
    elif (root / "imgs.zip").is_file():
        p = root / "imgs.zip"
    else:
        raise FileNotFoundError(f"{root}: neither imgs/ nor imgs.zip")
    if p.is_dir():
        return "dir", p
    from aloevision.images import make_ref

    with zipfile.ZipFile(p) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    index = {}
    for n in names:  # members may or may not carry a leading "imgs/"
        index[re.sub(r"^imgs/", "", n)] = make_ref(p, n)
    return "zip", index


@loader("slake")
def load_slake(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    root = Path(bench.path).expanduser()
    split = {"validation": "validate"}.get(bench.split, bench.split)
    qfile = root / f"{bench.split}.json" if (root / f"{bench.split}.json").is_file() else root / f"{split}.json"
    if root.is_file():
        qfile, root = root, root.parent
    how, where = _slake_images(root, bench.options.get("image_root"))
    lang = bench.options.get("lang", "en")

    def convert(row_id: str, row: Mapping[str, Any]) -> list[EvalItem]:
        if lang != "all" and row.get("q_lang", "en") != lang:
            return []  # the other language of a bilingual set: not an error, not counted as a skip
        name = row.get("img_name")
        if is_blank(name):
            raise SkipRow("no_image", "img_name missing")
        if how == "dir":
            img = _resolve(where, name)
        elif name in where:
            img = where[name]
        else:
            raise SkipRow("missing_image", f"{name} not in imgs.zip")
        question, answer = row.get("question"), row.get("answer")
        if is_blank(question):
            raise SkipRow("no_question")
        if is_blank(answer) and require_answer:
            raise SkipRow("no_answer")
        meta = {k: row.get(k) for k in ("answer_type", "content_type", "modality", "location", "q_lang", "base_type")
                if k in row}
        return [EvalItem(str(first(row, "qid", default=row_id)), bench.name, bench.kind or "open", str(question),
                         str(answer if answer is not None else ""), {}, [img], meta)]

    yield from drive(numbered(iter_file(qfile)), stats, convert)


# ---------------------------------------------------------------------------------------------------------- MMMU
def _image_value(v: Any) -> Any:
    """An HF `Image` cell: {'bytes': b'..', 'path': ..}, raw bytes, or a path string."""
    if isinstance(v, Mapping):
        if v.get("bytes"):
            return bytes(v["bytes"])
        if v.get("path"):
            return str(v["path"])
        return None
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if hasattr(v, "save"):  # a PIL image from datasets.load_dataset
        import io

        buf = io.BytesIO()
        v.save(buf, format="PNG")
        return buf.getvalue()
    return v if isinstance(v, str) and v else None


def _mmmu_open_item(qid: str, name: str, question: str, answer: str, images: list, meta: dict) -> EvalItem:
    """VLMEvalKit's `MMMU_preproc`: an open question is prompted without options and scored as a two-option
    question, A = the reference answer, B = 'Other Answers' (truth A). `options.mmmu_open: judge` sends it to the
    LLM judges instead (not the paper's protocol)."""
    from aloevision.evaluation.protocol import mmmu_open_choices

    return EvalItem(qid, name, "mcq", question, "A", mmmu_open_choices(answer),
                    images, {**meta, "open_question": True, "reference": answer, "prompt_style": "mmmu"})


@loader("mmmu")
def load_mmmu(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    subjects = list(bench.options.get("subjects") or MMMU_SUBJECTS)

    def rows():
        if Path(bench.path).expanduser().is_file():  # one file of several subjects: ids are <split>_<Subject>_<n>
            for n, row in enumerate(iter_records(bench.path, bench.split)):
                if isinstance(row, Mapping):
                    # "validation_Art_Theory_3" is Art_Theory, not Art: the subject is everything between the
                    # split and the number.
                    m = re.match(r"^[a-z]+_(.+)_\d+$", str(row.get("id", "")))
                    subj = m.group(1) if m and m.group(1) in subjects else None
                    if subj is None:
                        continue
                    row = {**row, "_subject": subj}
                yield f"{n}", row
            return
        root = Path(bench.path).expanduser()
        for subj in subjects:
            if root.is_dir() and not (root / subj).is_dir():
                raise FileNotFoundError(f"MMMU subject {subj}: no folder {root / subj} (MMMU/MMMU's layout is "
                                        f"<Subject>/{bench.split}-*.parquet)")
            for n, row in enumerate(iter_records(bench.path, bench.split, hf_config=subj)):
                if isinstance(row, Mapping):
                    row = {**row, "_subject": subj}
                yield f"{subj}:{n}", row

    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        question = row.get("question")
        if is_blank(question):
            raise SkipRow("no_question")
        images = [x for x in (_image_value(row.get(f"image_{k}")) for k in range(1, 8)) if x is not None]
        if not images:
            raise SkipRow("no_image", "image_1..image_7 all empty")
        meta = {"subject": row["_subject"], "question_type": row.get("question_type"), "img_type": row.get("img_type"),
                "prompt_style": "mmmu"}
        qid = str(first(row, "id", default=row_id))
        if row.get("question_type") == "open":
            answer = str(row.get("answer") or "")
            if not answer and require_answer:
                raise SkipRow("no_answer")
            if bench.options.get("mmmu_open") == "judge":
                return EvalItem(qid, bench.name, "open", str(question), answer, {}, images, meta)
            return _mmmu_open_item(qid, bench.name, str(question), answer, images, meta)
        raw = row.get("options")
        try:
            values = ast.literal_eval(raw) if isinstance(raw, str) else list(raw)
        except (ValueError, SyntaxError, TypeError):
            raise SkipRow("bad_options", f"options {str(raw)[:60]!r} is not a list") from None
        options = index_options(values)
        answer = letter_answer(row.get("answer"), options, require_answer)
        return EvalItem(qid, bench.name, bench.kind or "mcq", str(question), answer, options, images, meta)

    yield from drive(rows(), stats, convert)


# ---------------------------------------------------------------------------------------------------- CareQA-Vision
CAREQA_V_FILES = {"close": "CareQA-Vis_close.json", "open": "CareQA-Vis_open.json"}
_CAREQA_IMAGE_KEYS = ("image", "image_path", "image_name", "img", "image_file", "file_name")


def _careqa_image(base: Path, row: Mapping[str, Any]) -> Any:
    v = first(row, *_CAREQA_IMAGE_KEYS)
    if v is None:
        raise SkipRow("no_image", f"none of {', '.join(_CAREQA_IMAGE_KEYS)}")
    if not isinstance(v, str):
        img = _image_value(v)
        if img is None:
            raise SkipRow("no_image", "empty image cell")
        return img
    if len(v) > 512 and not Path(v).suffix:  # an embedded base64 image, not a path
        return _b64(v)
    return _resolve(base, v)


@loader("careqa_vision")
def load_careqa_vision(bench: Bench, stats: LoadStats, require_answer: bool) -> Iterator[EvalItem]:
    """options.subset: close | open | both (default both). Items carry meta category (nursing/medicine) and format."""
    root = Path(bench.path).expanduser()
    subset = bench.options.get("subset", "both")
    parts = ["close", "open"] if subset == "both" else [subset]
    image_root = Path(bench.options.get("image_root") or (root if root.is_dir() else root.parent))

    def rows():
        for part in parts:
            f = root / CAREQA_V_FILES[part] if root.is_dir() else root
            for row_id, row in numbered(iter_file(f), prefix=f"{part}:"):
                yield row_id, (row if not isinstance(row, Mapping) else {**row, "_part": part})

    def convert(row_id: str, row: Mapping[str, Any]) -> EvalItem:
        question = row.get("question")
        if is_blank(question):
            raise SkipRow("no_question")
        img = _careqa_image(image_root, row)
        meta = {"category": row.get("category"), "year": row.get("year"), "exam_id": row.get("exam_id"),
                "format": "mcq" if row["_part"] == "close" else "open"}
        qid = str(first(row, "unique_id", "id", default=row_id))
        if row["_part"] == "open":
            answer = str(first(row, "answer", "open_answer", default=""))
            if not answer and require_answer:
                raise SkipRow("no_answer")
            return EvalItem(qid, bench.name, "open", str(question), answer, {}, [img], meta)
        values = [row[k] for k in ("op1", "op2", "op3", "op4", "op5") if not is_blank(row.get(k))]
        options = index_options(values)
        cop = row.get("cop")
        if is_blank(cop):
            if require_answer:
                raise SkipRow("no_answer")
            answer = ""
        else:
            k = int(cop) - 1  # CareQA's `cop` is 1-indexed
            if not 0 <= k < len(options):
                raise SkipRow("bad_answer", f"cop={cop} with {len(options)} options")
            answer = chr(65 + k)
        return EvalItem(qid, bench.name, "mcq", str(question), answer, options, [img], meta)

    yield from drive(rows(), stats, convert)
