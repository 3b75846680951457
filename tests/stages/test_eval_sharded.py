"""Evaluation across ranks: items dealt round-robin to 2 CPU processes (torch.distributed, gloo) and gathered give
the same predictions and scores as one process."""

import json
import os
from pathlib import Path

import pytest

import eval_fixtures


def _engine_run(tiny_path: str, data: str, out_dir: str) -> dict:
    from aloevision.evaluation.runner import Engine
    from aloevision.model.processor import load_processor
    from aloevision.model.loading import load_model
    from conftest import compose

    model_cfg = compose(["model=tiny"], root=Path(out_dir)).model
    processor = load_processor(tiny_path, min_pixels=int(model_cfg.min_pixels), max_pixels=int(model_cfg.max_pixels))
    model = load_model(model_cfg, tiny_path).eval()
    ev = Path(data) / "eval"
    benchmarks = {
        "gmai_mmbench": {"name": "GMAI-MMBench_VAL", "kind": "mcq", "harness": "builtin", "loader": "vlmevalkit_tsv",
                         "path": str(ev / "gmai_mmbench" / "GMAI-MMBench_VAL.tsv"), "split": "validation",
                         "options": {}},
        "probmed": {"name": "ProbMed", "kind": "probmed", "harness": "builtin", "loader": "probmed",
                    "path": str(ev / "probmed" / "test.json"), "split": "test", "options": {}},
    }
    settings = {"max_new_tokens": 6, "batch_size": 4, "matching": "exact", "probmed_metric": "official"}
    return Engine(benchmarks, settings, model=model, processor=processor, out_dir=out_dir).run()


def _worker(rank: int, world: int, port: int, tiny_path: str, data: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _engine_run(tiny_path, data, out_dir)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, tiny_path):
    import socket

    import torch.multiprocessing as mp

    data = eval_fixtures.build(tmp_path / "data")
    one = _engine_run(tiny_path, str(data), str(tmp_path / "one"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, tiny_path, str(data), str(tmp_path / "two")), nprocs=2, join=True)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["metrics"] and one["metrics"] == two["metrics"]
    assert one["scored"] == ["gmai_mmbench", "probmed"]
    for key in ("gmai_mmbench", "probmed"):
        a = (tmp_path / "one" / f"{key}.jsonl").read_text().splitlines()
        b = (tmp_path / "two" / f"{key}.jsonl").read_text().splitlines()
        assert [json.loads(x)["prediction"] for x in a] == [json.loads(x)["prediction"] for x in b]
        assert [json.loads(x)["id"] for x in a] == [json.loads(x)["id"] for x in b]
