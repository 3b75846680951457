"""Download the paper's evaluation sets into the layout `conf/eval/paper.yaml` reads (run on a login node: compute
nodes have no internet). Every file comes from the Hugging Face Hub (`huggingface_hub`; gated sets need
`HF_TOKEN` and accepted terms):

    python -m aloevision.evalsets.fetch --data-dir <paths.data_dir> [--only pathmmu,mmmu] [--dry-run]

Layout under `<data-dir>/eval/` (docs/evaluation.md):
  pathmmu/PathMMU_TEST.tsv                 Pfei111/PathMMU (VLMEvalKit's TSV)
  gmai_mmbench/GMAI-MMBench_VAL.tsv        VLMEval/GMAI-MMBench
  omnimedvqa/omnimedbench_part_<n>.tsv     KKYYKK/OmniMed_VLM part_1..14 (VLMEvalKit's names)
  probmed/                                 rippleripple/ProbMed (test.json + images)
  slake/                                   BoKelvin/SLAKE (test.json + imgs.zip)
  mmmu/<Subject>/validation-*.parquet      MMMU/MMMU, all 30 subjects
  careqa_vision/                           HPAI-BSC/CareQA-Vision
  hf/<owner>/<name>                        lm-eval's datasets for multimedqa and mmlu (cais/mmlu,
                                           openlifescienceai/medmcqa, GBaker/MedQA-USMLE-4-options-hf, and
                                           bigbio/pubmed_qa as its Parquet export), read offline via
                                           eval.hf_datasets_dir
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Source:
    repo: str
    dest: str  # under <data-dir>/eval/
    files: dict[str, str] = field(default_factory=dict)  # repo file -> local name (empty: snapshot)
    allow: list[str] | None = None  # snapshot patterns
    revision: str | None = None


SOURCES: dict[str, list[Source]] = {
    "pathmmu": [Source("Pfei111/PathMMU", "pathmmu", {"PathMMU_TEST.tsv": "PathMMU_TEST.tsv"})],
    "gmai_mmbench": [Source("VLMEval/GMAI-MMBench", "gmai_mmbench",
                            {"GMAI-MMBench_VAL.tsv": "GMAI-MMBench_VAL.tsv"})],
    "omnimedvqa": [Source("KKYYKK/OmniMed_VLM", "omnimedvqa",
                          {f"part_{n}.tsv": f"omnimedbench_part_{n}.tsv" for n in range(1, 15)})],
    "probmed": [Source("rippleripple/ProbMed", "probmed")],
    "slake": [Source("BoKelvin/SLAKE", "slake", {"test.json": "test.json", "imgs.zip": "imgs.zip"})],
    "mmmu": [Source("MMMU/MMMU", "mmmu", allow=["*/validation-*.parquet", "README.md"])],
    "careqa_vision": [Source("HPAI-BSC/CareQA-Vision", "careqa_vision")],
}


def lm_eval_sources(tasks=("multimedqa", "mmlu")) -> list[Source]:
    """lm-eval's datasets for the text groups, read from lm-eval's own task configs."""
    from aloevision.evaluation.lm_eval_task import task_dataset_configs

    out: dict[str, Source] = {}
    for repo, config in task_dataset_configs(list(tasks)):
        if repo == "bigbio/pubmed_qa":  # a loading-script dataset: its Parquet export, one folder per config
            src = out.setdefault(repo, Source(repo, f"hf/{repo}", allow=[], revision="refs/convert/parquet"))
            src.allow.append(f"{config}/*")
        else:
            out.setdefault(repo, Source(repo, f"hf/{repo}"))
    return list(out.values())


def plan(only: list[str] | None = None) -> dict[str, list[Source]]:
    sources = dict(SOURCES)
    sources["text (lm-eval)"] = lm_eval_sources()
    if only:
        unknown = set(only) - set(sources) - {"text"}
        if unknown:
            raise SystemExit(f"unknown set(s) {sorted(unknown)}; choose from {', '.join(sources)}")
        sources = {k: v for k, v in sources.items() if k in only or (k.startswith("text") and "text" in only)}
    return sources


def fetch(data_dir: Path, only: list[str] | None = None, dry_run: bool = False) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download

    root = Path(data_dir).expanduser() / "eval"
    for name, sources in plan(only).items():
        for s in sources:
            dest = root / s.dest
            print(f"{name}: {s.repo} -> {dest}", flush=True)
            if dry_run:
                continue
            dest.mkdir(parents=True, exist_ok=True)
            if s.files:
                for remote, local in s.files.items():
                    target = dest / local
                    if target.exists():
                        continue
                    got = Path(hf_hub_download(s.repo, remote, repo_type="dataset", revision=s.revision,
                                               local_dir=dest))
                    if got != target:  # VLMEvalKit's local names (omnimedbench_part_<n>.tsv)
                        got.replace(target)
            else:
                snapshot_download(s.repo, repo_type="dataset", local_dir=dest, allow_patterns=s.allow,
                                  revision=s.revision)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="paths.data_dir of the runs that will read the sets")
    ap.add_argument("--only", default="", help="comma-separated set keys (pathmmu, ..., text)")
    ap.add_argument("--dry-run", action="store_true", help="print what would be fetched, fetch nothing")
    args = ap.parse_args(argv)
    fetch(Path(args.data_dir), [s for s in args.only.split(",") if s] or None, args.dry_run)


if __name__ == "__main__":
    main(sys.argv[1:])
