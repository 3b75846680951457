"""The stage graph: what each `stage=X` resolves to under the paper's ablation switches, and the promise that
separate jobs (one stage each, as on a cluster) build exactly what one `stage=all` job builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose


def test_resolution_follows_the_config(tmp_path):
    from aloevision.pipeline import GRAPH, resolve

    def resolved(*overrides: str) -> list[str]:
        cfg = compose(list(overrides), root=tmp_path)
        order = resolve(cfg)
        for i, name in enumerate(order):  # every stage after everything it needs
            assert set(GRAPH[name].needs(cfg)) <= set(order[:i]), (name, order)
        return order

    full = {"ingest", "hash", "leakage", "score", "filter", "tokens", "images", "mix"}
    assert set(resolved("stage=mix")) == full and resolved("stage=mix")[-1] == "mix"
    assert set(resolved("stage=train")) == full | {"train"}
    # the ablations remove edges: no leakage / filter decisions are needed (or built)
    assert set(resolved("stage=mix", "leakage=off")) == {"ingest", "score", "filter", "tokens", "images", "mix"}
    assert resolved("stage=mix", "leakage=off", "filter=none") == ["ingest", "tokens", "images", "mix"]
    assert resolved("stage=export", "leakage=off", "filter=none") == ["ingest", "tokens", "images", "mix", "export"]
    assert set(resolved("stage=filter")) == {"ingest", "score", "hash", "leakage", "filter"}
    assert resolved("stage=plan", "plan.stats=x.csv") == ["plan"]
    assert resolved("stage=eval") == ["eval"]
    # the AR set is a training-sample producer like ingest: hashed, scored and counted with it
    ar = resolved("+experiment=demo_ar", "stage=mix", "train.init_from=x")
    assert ar.index("adversarial") < ar.index("tokens")  # (the AR experiment also needs it before hash / score when on)
    everything = resolved()
    assert everything[-3:] == ["train", "eval", "report"] and full <= set(everything)


def test_graph_table_is_in_the_docs():
    from aloevision.pipeline import graph_markdown

    docs = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    assert graph_markdown() in docs, "regenerate the table: python -m aloevision.pipeline (docs/architecture.md)"


def test_require_names_the_command_that_builds_a_missing_upstream(run_launch, tmp_path, session_root):
    proc = run_launch("stage=train", "upstream=require", "wandb.mode=disabled",
                      f"paths.demo_dir={session_root / 'demo_data'}", check=False, cache=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "stage ingest (needed by stage=train) has no ingest artifact" in out, out[-3000:]
    assert "python launch.py stage=ingest" in out and not list(tmp_path.glob("outputs/cache/ingest/*/_SUCCESS"))


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_record.json").read_text())


def _mixture_ids(rec: dict) -> list[str]:
    import pyarrow as pa

    data = Path(rec["stages"]["mix"]["artifact"]) / "data"
    return [i for f in sorted(data.glob("*.arrow")) for i in pa.ipc.open_stream(pa.memory_map(str(f))).read_all()["id"].to_pylist()]


@pytest.mark.slow
def test_separate_jobs_equal_one_job(run_launch, tmp_path, session_root):
    """The demo as one `stage=all` job, then stage by stage as separate launch.py jobs on a fresh artifact store (the
    later ones with upstream=require: they must find everything the earlier jobs built), then `stage=mix` and
    `stage=train` alone on fresh stores: the same mixture (ids, order), the same training (losses, step by step) and
    the same evaluation."""
    short = ["train.max_steps=3", "wandb.mode=disabled"]
    demo = f"paths.demo_dir={session_root / 'demo_data'}"
    one = tmp_path / "one"
    run_launch(*short, f"hydra.run.dir={one}")
    ref = _record(one)
    assert ref["stages"]["mix"]["samples"] == 2154  # the 241 leaked samples and the 2 low-score ones are excluded

    store = f"paths.cache_dir={tmp_path / 'separate_cache'}"
    jobs = {}
    for stage in ("ingest", "hash", "leakage", "score", "filter", "tokens", "images", "mix", "train"):
        jobs[stage] = tmp_path / "separate" / stage
        later = ["upstream=require"] if stage in ("leakage", "filter", "mix", "train") else []
        run_launch(f"stage={stage}", *short, *later, demo, store, f"hydra.run.dir={jobs[stage]}", cache=False)
    jobs["eval"] = tmp_path / "separate" / "eval"
    run_launch("stage=eval", f"eval.model={jobs['train']}", *short, demo, store, f"hydra.run.dir={jobs['eval']}",
               cache=False)
    up = _record(jobs["mix"])["stages"]["upstream"]
    assert up["filter"]["built"] == 0 and up["leakage"]["built"] == 0 and up["tokens"]["built"] == 0  # all reused
    assert up["images"]["built"] == 0

    # stage=train alone on a fresh store resolves (and so is) stage=mix alone on a fresh store, then trains
    alone = {"train": tmp_path / "alone" / "train"}
    run_launch("stage=train", *short, demo, f"paths.cache_dir={tmp_path / 'fresh'}", f"hydra.run.dir={alone['train']}",
               cache=False)

    ids = _mixture_ids(ref)
    assert len(ids) == 2154
    for rec in (_record(jobs["mix"]), _record(alone["train"])):
        assert _mixture_ids(rec) == ids
    losses = ref["stages"]["train"]["loss_history"]
    assert losses and _record(jobs["train"])["stages"]["train"]["loss_history"] == losses
    assert _record(alone["train"])["stages"]["train"]["loss_history"] == losses
    evals = {k: v for k, v in ref["metrics"].items() if k.startswith("eval/")}
    assert evals and {k: v for k, v in _record(jobs["eval"])["metrics"].items() if k.startswith("eval/")} == evals
