"""The README's cluster recipe, verbatim, on the local SLURM: the data stages as job arrays, the mixture, training
with `upstream=require`, evaluation of that model and the report, each a separately submitted job. Only the cluster
(`slurm_local`), the model (tiny), the filter and eval sets (demo), the shard count and the step count are
substituted, by overrides. The result equals one `stage=all` job of the same config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_slurm_sweep import _records, _sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _ids(rec: dict) -> list[str]:
    import pyarrow as pa

    data = Path(rec["stages"]["mix"]["artifact"]) / "data"
    return [i for f in sorted(data.glob("*.arrow")) for i in pa.ipc.open_stream(pa.memory_map(str(f))).read_all()["id"].to_pylist()]


def test_readme_cluster_recipe_as_separate_slurm_jobs(slurm_cluster, run_launch, tmp_path, session_root):
    substituted = ["model=tiny", "filter=demo", "eval=demo", "train.max_steps=2", "cluster.data_shards=2",
                   f"paths.data_dir={session_root / 'demo_data'}", f"paths.demo_dir={session_root / 'demo_data'}",
                   f"paths.cache_dir={tmp_path / 'cache'}"]
    x = ["+experiment=aloe_vision_7b", *substituted]  # the README's $X with cluster=slurm_local
    jobs: dict[str, Path] = {}

    def submit(name: str, *overrides: str, n: int = 1) -> list[dict]:
        folder = tmp_path / name
        folder.mkdir()
        jobs[name] = _sweep(slurm_cluster, folder, *x, *overrides, timeout=600)
        return _records(jobs[name], n)

    for stage in ("ingest", "hash", "score", "tokens", "images"):  # 2. the data stages as job arrays
        recs = submit(stage, f"stage={stage}", "cluster.data_shard=range(0,2)", n=2)
        assert all(r["config"]["cluster"]["data_shard"] == k for k, r in enumerate(recs))
    mix = submit("mix", "stage=mix")[0]  # 3. the mixture, on one node
    # the arrays did the work: the mixture job decodes no image, calls no scorer and tokenizes nothing
    assert mix["stages"]["hash"]["totals"]["computed"] == 0 and mix["stages"]["score"]["computed"] == 0
    assert mix["stages"]["tokens"]["counted"] == []
    train = submit("train", "stage=train", "upstream=require")[0]  # 4. training: every input must exist already
    assert train["stages"]["upstream"]["mix"]["built"] == 0
    model_dir = Path(train["paths"]["run_dir"])  # the train job's run folder, as the README says
    ev = submit("eval", "stage=eval", f"eval.model={model_dir}")[0]  # 5. evaluation of that model
    assert ev["stages"]["eval"]["model"] == str(model_dir / "model")

    # The same config as one job, on the session's shared store (the SLURM jobs above built everything in their own).
    one = tmp_path / "one"
    run_launch(*[o for o in x if not o.startswith("paths.cache_dir")], "wandb.mode=disabled", f"hydra.run.dir={one}")
    ref = json.loads((one / "run_record.json").read_text())
    assert _ids(mix) == _ids(ref) and len(_ids(ref)) > 50
    assert train["stages"]["train"]["loss_history"] == ref["stages"]["train"]["loss_history"]
    assert {k: v for k, v in ev["metrics"].items() if k.startswith("eval/")} == \
        {k: v for k, v in ref["metrics"].items() if k.startswith("eval/")}
