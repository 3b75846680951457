"""Pre-flight through launch.py: a run whose weights, datasets or GPUs are missing fails in seconds, before any
stage, naming every missing thing and the setting to change; the demo and plan-from-stats runs pass it."""

from __future__ import annotations

import os
import time

import pytest

from aloevision.config import ConfigError
from aloevision.model.loading import Devices
from aloevision.preflight import PreflightError, check
from conftest import compose

H100x4 = Devices("cuda", ["NVIDIA H100"] * 4, [64.0] * 4, [(9, 0)] * 4)
V100 = Devices("cuda", ["Tesla V100-SXM2-32GB"], [32.0], [(7, 0)])


def test_7b_without_weights_fails_in_seconds_naming_model_checkpoint(run_launch, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # no cached weights
    start = time.monotonic()
    proc = run_launch("model=qwen2vl_7b", "stage=train", "wandb.mode=disabled", check=False)
    took = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and took < 10, (took, out[-2000:])
    assert "model.checkpoint=Qwen/Qwen2-VL-7B-Instruct" in out and "huggingface-cli download" in out
    assert not list(tmp_path.glob("outputs/cache/ingest/*")), "a stage ran before the pre-flight failed"


def test_every_missing_source_and_the_gpu_are_listed_at_once(run_launch, tmp_path):
    start = time.monotonic()
    proc = run_launch("mixture=final", "cluster=marenostrum5", "filter=paper", f"paths.data_dir={tmp_path}/nodata",
                      "stage=score", "wandb.mode=disabled", check=False)
    took = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and took < 10, (took, out[-2000:])
    for src in ("pubmedvision", "medmax", "mecovqa", "medgrit", "medtrinity", "cambrian", "aloe_text", "magpie"):
        assert f"mixture.sources.{src}: {tmp_path}/nodata/{src} does not exist" in out
    assert "~mixture.sources.magpie" in out  # how to drop one
    assert "cluster=marenostrum5 declares 4 GPUs per node but this process sees no CUDA device" in out
    assert "filter.scorer.backend=vllm needs CUDA GPUs" in out
    assert "filter.scorer.tag_model=Qwen/Qwen2.5-VL-72B-Instruct" in out


def test_runs_that_need_nothing_missing_pass(tmp_path, tiny_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check(compose([], root=tmp_path))  # the demo: tiny model built on demand, demo data generated on demand
    check(compose(["stage=plan", "model=qwen2vl_72b", "mixture=final", "plan.stats=x.csv"], root=tmp_path))
    tokens = compose(["stage=tokens", "model=qwen2vl_7b"], root=tmp_path)
    check(tokens)  # the processor of a Qwen2-VL id is rebuilt offline: no weights needed
    local = compose(["stage=eval", f"model.checkpoint={tiny_path}"], root=tmp_path)
    check(local)


def test_gpu_settings_the_node_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(["stage=train", "model=qwen2vl_7b", "cluster=leonardo", f"model.checkpoint={tmp_path}"],
                  root=tmp_path)
    with pytest.raises(PreflightError) as e:
        check(cfg, devices=V100)
    msg = str(e.value)
    assert "model.dtype=bfloat16 needs an Ampere" in msg and f"model.checkpoint={tmp_path}: no model there" in msg
    assert isinstance(e.value, ConfigError)
    bnb = compose(["stage=train", "model=qwen2vl_72b", "cluster=leonardo"], root=tmp_path)
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(PreflightError, match="adamw_bnb_8bit needs bitsandbytes"):
            check(bnb, devices=H100x4)


def test_the_resolved_graph_decides_what_is_needed(tmp_path, monkeypatch):
    """stage=train resolves ingest/tokens/mix (built in the job when missing): their datasets are needed; with
    upstream=require they must already exist as artifacts, so only the train stage's own needs are checked."""
    from aloevision.pipeline import resolve, targets_of

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(["stage=train", "mixture=final", f"paths.data_dir={tmp_path}/nodata", "filter=none",
                   "leakage=off"], root=tmp_path)
    with pytest.raises(PreflightError, match="mixture.sources.magpie"):
        check(cfg, resolve(cfg), targets_of(cfg))
    cfg = compose(["stage=train", "mixture=final", f"paths.data_dir={tmp_path}/nodata", "filter=none",
                   "leakage=off", "upstream=require"], root=tmp_path)
    check(cfg, resolve(cfg), targets_of(cfg))
