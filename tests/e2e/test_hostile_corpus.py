"""The hostile-input corpus (tests/hostile_corpus.py: every source in its release tree, good rows among hostile
ones) through ingest -> tokens -> mix -> a 2-step train, by a plain `paths.data_dir=<corpus>` run: no crash, no
hang, every drop with a reason that names its file and row, every kept sample trainable."""

from __future__ import annotations

import json
from pathlib import Path

import hostile_corpus

TOO_LONG = {"cambrian/huge"}  # kept by ingest (a 2 MB answer is valid data), dropped by the token stage


def _record(root: Path, pattern: str) -> tuple[Path, dict]:
    runs = sorted(root.glob(f"outputs/runs/*/{pattern}"))
    assert runs, f"no run folder {pattern} under {root}"
    return runs[-1], json.loads((runs[-1] / "run_record.json").read_text())


def test_hostile_corpus_through_ingest_tokens_mix_and_train(run_launch, tmp_path, tiny_path):
    root = tmp_path / "hostile"
    expected = hostile_corpus.build(root)
    proc = run_launch("stage=train", "train.max_steps=2", "filter=none", "leakage=off", f"paths.data_dir={root}",
                      timeout=600)
    run_dir, rec = _record(tmp_path, "*_train")
    assert rec["status"] == "finished", proc.stdout[-3000:]
    log = proc.stdout + proc.stderr
    assert "expected data files missing" not in log  # every source found its release tree with no override

    # Ingest: every source kept exactly its good rows; every drop has a reason and says where it came from.
    folders = {}
    for f in map(Path, rec["stages"]["upstream"]["ingest"]["artifacts"]):
        first = (open(f / "samples.jsonl").readline() or open(f / "drops.jsonl").readline())
        folders[json.loads(first)["source"]] = f
    assert set(folders) == set(expected)
    kept_ids: set[str] = set()
    for name, n in expected.items():
        folder = folders[name]
        samples = [json.loads(line) for line in open(folder / "samples.jsonl")]
        drops = [json.loads(line) for line in open(folder / "drops.jsonl")]
        report = json.loads((folder / "report.json").read_text())
        assert len(samples) == n, (name, [s["id"] for s in samples])
        assert len({s["id"] for s in samples}) == n  # duplicates resolved at ingest
        assert report["rows_in"] == len(samples) + len(drops) and sum(report["drops"].values()) == len(drops)
        assert drops, name  # every source holds hostile rows
        for d in drops:
            assert d["reason"] and d["detail"], d
            if d["reason"] not in ("duplicate_id",):
                assert any(ext in d["detail"] for ext in (".json", ".jsonl", ".parquet", ".csv", "::", "/")), d
        kept_ids |= {s["id"] for s in samples}
    reasons = {r for name in expected for r in json.loads((folders[name] / "report.json").read_text())["drops"]}
    assert {"duplicate_id", "bad_box", "bad_mask", "empty_mask", "path_escape", "invalid_path", "unreadable_image",
            "decompression_bomb", "corrupt_image", "truncated_image", "malformed_record", "missing_image",
            "image_too_small"} <= reasons

    # Mix and train: every sample ingest kept (but the over-long one) is in the mixture, and training ran.
    mix = rec["stages"]["mix"]
    assert mix["samples"] == len(kept_ids) - len(TOO_LONG)
    assert rec["stages"]["train"]["train/global_step"] == 2

    # Every kept sample is trainable: the training collator (the shared decode + TRL's collator) takes each row.
    from omegaconf import OmegaConf

    from aloevision.mixture import image_store_of, load_mixture

    from aloevision.model.loading import load_processor_for
    from aloevision.training.collator import build_training_collator

    ds = load_mixture(mix["artifact"])
    model_cfg = OmegaConf.create(rec["config"]["model"])
    processor = load_processor_for(model_cfg, tiny_path)
    collate = build_training_collator(processor, int(model_cfg.max_length), image_store=image_store_of(mix["artifact"]))
    assert {r["id"] for r in ds} == kept_ids - TOO_LONG
    for row in ds:
        batch = collate([row])
        assert batch["input_ids"].shape[0] == 1 and (batch["labels"] != -100).any(), row["id"]
