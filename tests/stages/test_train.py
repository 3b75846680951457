"""Real training with TRL on the demo mixture (a few steps), and a second stage starting from the first."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def _record(root: Path, pattern: str) -> tuple[Path, dict]:
    runs = sorted(root.glob(f"outputs/runs/*/{pattern}"))
    assert runs, f"no run folder {pattern} under {root}"
    return runs[-1], json.loads((runs[-1] / "run_record.json").read_text())


def test_few_steps_then_second_stage(run_launch, tmp_path, tiny_path):
    run_launch("stage=train", "train.max_steps=4", "train.save_steps=2")
    run_dir, rec = _record(tmp_path, "*_train")
    assert rec["status"] == "finished"
    m = rec["metrics"]
    assert m["train/global_step"] == 4 and 0 < m["train/last_loss"] < 20
    report = rec["stages"]["train"]
    assert report["global_batch"] == 8 and report["samples"] > 100  # micro 4 x accumulation 2 x 1 process
    final = run_dir / "model"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    trained, base = load_file(final / "model.safetensors"), load_file(Path(tiny_path) / "model.safetensors")
    changed = [k for k in base if k in trained and not torch.equal(base[k], trained[k])]
    assert len(changed) > len(base) // 2, "training did not update the weights"

    # Stage 2 starts from the stage-1 run folder (its final model), as the AR stage does.
    run_launch("stage=train", f"train.init_from={run_dir}", "train.max_steps=2", "group=stage2")
    _, rec2 = _record(tmp_path, "*_train")
    assert rec2["group"] == "stage2" and rec2["stages"]["train"]["init_from"] == str(final)
    assert rec2["metrics"]["train/global_step"] == 2


def test_bad_init_from_fails_with_a_message(run_launch, tmp_path):
    bad = run_launch("stage=train", f"train.init_from={tmp_path}/nope", check=False)
    assert bad.returncode != 0 and "train.init_from" in (bad.stderr + bad.stdout)
