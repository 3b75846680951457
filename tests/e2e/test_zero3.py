"""ZeRO-3 on CPU with two processes (torchrun, gloo, DeepSpeed's CPU accelerator) and the masked dummy image.

- The dummy image added to an image-free batch changes neither the loss nor any real token's logits (one process).
- `launch.py stage=train model.recipe.zero_stage=3` under torchrun: both ranks share the run folder, the parameters
  are partitioned (each rank holds half), rank 0 writes the record, and the gathered final model loads.
- One rank sees only text rows, the other only image rows: with the dummy image the vision tower's ZeRO-3 gathers run
  on both ranks and training completes (without it this is the classic hang; the timeout turns a hang into a fail).

The first ZeRO-3 run on a machine JIT-builds DeepSpeed's CPU shared-memory comm op (~2 min on 2 cores, cached in
~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR): CI should keep that folder between runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
# the workers import this module: its folder and the tests' root (conftest, fixtures) go on their PYTHONPATH
HERE = f"{Path(__file__).resolve().parent}:{REPO / 'tests'}"
TORCHRUN_TIMEOUT = 420  # generous: the first run on a machine compiles DeepSpeed's shm comm op


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(n_images: int):
    from PIL import Image

    def row(i: int, with_image: bool) -> dict:
        user = [{"type": "text", "text": f"question {i}: what does the scan show in region {i}?"}]
        if with_image:
            user = [{"type": "image"}] + user
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": [{"type": "text", "text": f"finding {i} is normal"}]}],
                "images": [Image.new("RGB", (64, 64), (40 * i % 255, 90, 30))] if with_image else []}

    return row


# -- one process: the dummy is invisible to the loss ------------------------------------------------------------------
def test_dummy_image_leaves_loss_and_logits_unchanged(tiny_path):
    from transformers import AutoModelForImageTextToText

    from aloevision.model.masking import build_collator
    from aloevision.model.processor import load_processor
    from aloevision.training.collator import DummyImageCollator

    processor = load_processor(tiny_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_path, dtype=torch.float32).eval()
    row = _rows(0)
    texts = [row(1, False), row(22, False)]  # different lengths: right padding inside the batch
    base = build_collator(processor, 512)
    wrapped = DummyImageCollator(base, processor)
    plain = base([dict(r) for r in texts])
    dummy = wrapped([dict(r) for r in texts])

    k = wrapped.dummy.num_tokens
    assert wrapped.dummy.side == 56 and k == 4  # min_pixels 3136 = 56x56 -> 4x4 patches -> 4 merged tokens
    assert plain.get("pixel_values") is None and dummy["pixel_values"].shape[0] == 16
    assert dummy["input_ids"].shape[1] == plain["input_ids"].shape[1] + k
    assert (dummy["labels"][:, -k:] == -100).all() and (dummy["attention_mask"][:, -k:] == 0).all()
    assert (dummy["input_ids"][0, -k:] == processor.image_token_id).all()
    assert wrapped.dummy_batches == 1

    out_plain = model(**plain)
    out_dummy = model(**dummy)
    L = plain["input_ids"].shape[1]
    real = plain["attention_mask"].bool()
    # Causal attention: columns appended after every row's end are invisible to every real token.
    assert torch.equal(out_plain.logits[real], out_dummy.logits[:, :L][real])
    # Same loss terms, same count; only the float summation order over the longer tensor may differ.
    torch.testing.assert_close(out_dummy.loss, out_plain.loss, rtol=1e-6, atol=1e-6)

    # The vision tower is in the graph (so ZeRO-3 gathers its shards in backward too), with zero gradient.
    out_dummy.loss.backward()
    vision = [p for n, p in model.named_parameters() if ".visual." in f".{n}" or n.startswith("visual")]
    assert vision and all(p.grad is not None for p in vision)
    assert all(torch.count_nonzero(p.grad) == 0 for p in vision)

    # A batch with an image is passed through untouched.
    with_image = [row(3, True), row(4, False)]
    assert torch.equal(wrapped([dict(r) for r in with_image])["input_ids"], base([dict(r) for r in with_image])["input_ids"])
    assert wrapped.dummy_batches == 1


# -- two processes ----------------------------------------------------------------------------------------------------
def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "ALOEVISION_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO / "src")}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    return env


def _torchrun(args: list[str], tmp_path: Path, timeout: int = TORCHRUN_TIMEOUT,
              pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = _env(tmp_path)
    if pythonpath:
        env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{pythonpath}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    try:
        proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:  # a ZeRO-3 hang: fail, with the tail of what it printed
        out = (e.stdout or b"")[-3000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-3000:]
        pytest.fail(f"2-rank run did not finish in {timeout}s (hang?):\n{out}")
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.mark.slow
def test_zero3_two_processes_through_launch(run_launch, tmp_path, session_root, tiny_path):
    from transformers import AutoModelForImageTextToText

    shared = [f"paths.cache_dir={session_root / 'cache' / 'shared'}", f"paths.demo_dir={session_root / 'demo_data'}"]
    run_launch("stage=mix", f"hydra.run.dir={tmp_path / 'mix'}")  # the artifacts exist before two ranks ask for them
    run_dir = tmp_path / "zero3"
    # One fixed run folder for both ranks: Hydra's ${now:...} could differ by a second between them. On SLURM the
    # launcher fixes hydra.sweep.dir at submission, so every task (and a requeued job) shares it too.
    # recipe: micro 2 x accumulation 2 x 2 ranks = the tiny recipe's global batch 8.
    _torchrun([str(REPO / "launch.py"), "stage=train", "model.recipe.zero_stage=3", "model.recipe.gpus=2",
               "model.recipe.micro_batch_size=2", "train.max_steps=2", "train.save_steps=2",
               f"hydra.run.dir={run_dir}", *shared], tmp_path)

    rec = json.loads((run_dir / "run_record.json").read_text())
    assert rec["status"] == "finished"
    report = rec["stages"]["train"]
    dist = report["distributed"]
    assert dist["world_size"] == 2 and dist["source"] == "torchrun" and dist["zero_stage"] == 3
    assert len(dist["per_rank"]) == 2 and dist["sharded"]
    full = dist["per_rank"][0]["full_numel"]
    assert all(r["full_numel"] == full and r["local_numel"] <= full // 2 + 1024 for r in dist["per_rank"])
    assert report["global_batch"] == 8 and rec["metrics"]["train/global_step"] == 2
    assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir()

    # The consolidated final model (gathered from both ranks' shards) loads without DeepSpeed, every weight found,
    # and was trained. (Under ZeRO-3 the file's text-model keys read model.model.* instead of model.*; transformers'
    # key conversion maps both, so compare in the loaded model's own names.)
    final = run_dir / "model"
    model, info = AutoModelForImageTextToText.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert sum(p.numel() for p in model.parameters()) == full
    trained = model.state_dict()
    base = AutoModelForImageTextToText.from_pretrained(tiny_path).state_dict()
    assert trained.keys() == base.keys()
    assert sum(not torch.equal(base[k], trained[k]) for k in base) > len(base) // 2, "training did not update weights"


WORKER = textwrap.dedent('''
    """One rank of a ZeRO-3 run where rank 0 only ever gets text rows and rank 1 only image rows."""
    import json, sys
    from pathlib import Path

    from aloevision import distributed

    env = distributed.setup(init_process_group=True)
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from aloevision.model.processor import load_processor
    from aloevision.training.collator import build_training_collator
    from aloevision.training.deepspeed_config import build
    from test_zero3 import _rows

    tiny, out, use_dummy = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
    row = _rows(0)
    # Sequential sampling, micro batch 1: accelerate hands batch i to rank i % 2 -> even rows (text) to rank 0.
    ds = Dataset.from_list([row(i, with_image=i % 2 == 1) for i in range(8)])
    recipe = {"zero_stage": 3, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "bf16": False}
    args = SFTConfig(output_dir=str(out / "ckpt"), per_device_train_batch_size=1, gradient_accumulation_steps=1,
                     max_steps=3, learning_rate=1e-3, use_cpu=True, bf16=False, deepspeed=build(recipe), report_to=[],
                     save_strategy="no", assistant_only_loss=True, max_length=512, remove_unused_columns=False,
                     logging_steps=1, train_sampling_strategy="sequential", seed=0, disable_tqdm=True)
    processor = load_processor(tiny)
    model = AutoModelForImageTextToText.from_pretrained(tiny)
    collator = build_training_collator(processor, 512, dummy_image=use_dummy)
    seen = []
    def record(rows, _c=collator):
        batch = _c(rows)
        seen.append(int(sum(len(r["images"]) for r in rows)))
        return batch
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor, data_collator=record)
    trainer.train()
    (out / f"rank{env.rank}.json").write_text(json.dumps({
        "real_images_per_batch": seen, "dummy_batches": getattr(collator, "dummy_batches", None),
        "steps": trainer.state.global_step}))
''')


@pytest.mark.slow
def test_zero3_text_only_rank_and_image_rank_do_not_hang(tmp_path, tiny_path):
    worker = tmp_path / "zero3_worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    # tests/ on the path: the worker reuses _rows from this file. A hang fails at the timeout instead of blocking CI.
    _torchrun([str(worker), tiny_path, str(out), "1"], tmp_path, pythonpath=HERE)
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["steps"] == r1["steps"] == 3
    assert r0["real_images_per_batch"][:3] == [0, 0, 0] and r0["dummy_batches"] >= 3  # text only: dummy each step
    assert all(n == 1 for n in r1["real_images_per_batch"][:3]) and r1["dummy_batches"] == 0


@pytest.mark.slow
def test_without_the_dummy_the_same_run_breaks(tmp_path, tiny_path):
    """The control: the same two ranks without the dummy image do not train. On gloo the vision tower's all-gather on
    rank 1 meets rank 0's next text-model gather (a size mismatch: gloo aborts); on NCCL it is the hang."""
    worker = tmp_path / "zero3_worker.py"
    worker.write_text(WORKER)
    (tmp_path / "out").mkdir()
    env = _env(tmp_path)
    env["PYTHONPATH"] += f":{HERE}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), tiny_path, str(tmp_path / "out"), "0"]
    try:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:  # the hang: stop the whole process group and count it as the expected break
        os.killpg(proc.pid, 9)
        proc.communicate()
        return
    assert proc.returncode != 0, "ZeRO-3 with a text-only rank trained WITHOUT the dummy image: the test is vacuous"
    assert not (tmp_path / "out" / "rank0.json").exists()
    assert "mismatch" in out or "Connection" in out or "closed" in out, out[-3000:]
