"""The planner on the paper's Table 1 (final mixture and the ablations), its errors, and the streaming selection."""

from __future__ import annotations

import json
import math

import pytest
from conftest import compose

from aloevision.planning import (
    PAPER_TABLE1,
    PlanError,
    copies_for,
    load_stats,
    make_plan,
    plan_mixture,
    plan_training,
    run_plan,
    write_stats,
)

RECIPE_7B = dict(global_batch_size=1024, micro_batch_size=16, gradient_accumulation_steps=2, gpus=32, epochs=1,
                 samples_per_gpu_second=2.0, gpu_hours_estimate=500)
CLUSTER = dict(name="mn5", gpus_per_node=4, nodes=8)


@pytest.fixture(scope="module")
def table1():
    return load_stats(PAPER_TABLE1)[0]


def mixture(name, sources, targets=None, **kw):
    from aloevision.config import CATEGORIES  # noqa: F401  (names used below are the config's categories)

    return {"name": name, "sources": {s: {"name": s} for s in sources}, "targets": targets or {}, **kw}


ALL = ["pubmedvision", "medmax", "mecovqa", "medgrit", "medtrinity", "cambrian", "aloe_text", "magpie"]
MULTIMODAL = ALL[:6]
MEDICAL = ALL[:5] + ["aloe_text"]


def test_table1_stats_file(table1):
    assert len(table1) == 8
    assert sum(s.samples for s in table1) == 3_571_622  # Appendix D's exact total
    for s, printed in zip(table1, (1.26e6, 409e3, 27.5e3, 17.7e3, 330e3, 668e3, 756e3, 100e3)):
        assert abs(s.samples - printed) <= {1.26e6: 5000, 27.5e3: 50, 17.7e3: 50}.get(printed, 500)
    assert round(sum(s.loss_tokens for s in table1) / 1e6, 1) == 640.1


def test_final_reproduces_table1(table1):
    targets = dict(medical_multimodal=0.4184, medical_text=0.2973, general_text=0.1821, general_multimodal=0.1022)
    plan = make_plan(mixture("final", ALL, targets, reference_steps=3487), table1, RECIPE_7B, CLUSTER)
    shares = {c.category: round(100 * c.share, 1) for c in plan.categories}
    assert shares == dict(medical_multimodal=41.8, medical_text=29.7, general_text=18.2, general_multimodal=10.2)
    assert all(s.fraction == 1.0 for s in plan.sources)  # Table 1 is already balanced: nothing dropped
    assert round(plan.samples / 1e6, 2) == 3.57 and plan.samples == 3_571_622
    tr = plan.training
    assert (tr.steps_per_epoch, tr.total_steps, tr.epochs, tr.gpus, tr.nodes) == (3487, 3487, 1.0, 32, 8)
    assert abs(tr.gpu_hours - 500) < 10 and tr.paper_gpu_hours == 500


@pytest.mark.parametrize(
    "name,sources,targets,shares",
    [
        ("multimodal_only", MULTIMODAL, dict(medical_multimodal=0.8037, general_multimodal=0.1963),
         dict(medical_multimodal=80.4, general_multimodal=19.6)),
        ("medical_only", MEDICAL, dict(medical_multimodal=0.5846, medical_text=0.4154),
         dict(medical_multimodal=58.5, medical_text=41.5)),
    ],
)
def test_ablation_mixtures(table1, name, sources, targets, shares):
    plan = make_plan(mixture(name, sources, targets, reference_steps=3487), table1, RECIPE_7B, CLUSTER)
    assert {c.category: round(100 * c.share, 1) for c in plan.categories} == shares
    tr = plan.training
    assert tr.steps_per_epoch < 3487 <= tr.total_steps == math.ceil(round(tr.epochs * tr.steps_per_epoch, 6))
    assert tr.total_steps == 3487 and tr.epochs > 1 and tr.epochs_rule.startswith("fractional")


def test_natural_and_rebalanced(table1):
    # No targets: natural shares, everything kept, the recipe's epochs.
    plan = plan_mixture(mixture("nat", ALL), table1)
    assert plan.samples == 3_571_622 and all(c.requested_share is None for c in plan.categories)
    # Halving general text's natural share: only the other categories can bind, general text is subsampled.
    targets = dict(medical_multimodal=0.45, medical_text=0.32, general_text=0.09, general_multimodal=0.14)
    plan = plan_mixture(mixture("rb", ALL, targets), table1)
    for c in plan.categories:
        assert abs(c.share - targets[c.category]) <= 0.0005 + 1e-9
    fr = plan.fractions()
    assert fr["magpie"] < 0.5 and max(fr.values()) == 1.0 and fr["pubmedvision"] == fr["medmax"]
    # Repetition lets a scarce category be repeated instead of throwing the others away.
    targets = dict(medical_multimodal=0.30, medical_text=0.25, general_text=0.25, general_multimodal=0.20)
    no_rep = plan_mixture(mixture("a", ALL, targets), table1)
    rep = plan_mixture(mixture("b", ALL, targets, max_repeat=2.0), table1)
    assert max(no_rep.fractions().values()) == 1.0 and rep.loss_tokens > no_rep.loss_tokens
    assert 1.0 < max(rep.fractions().values()) <= 2.0
    assert sum(min(f, 1) * s.available_loss_tokens for f, s in zip(rep.fractions().values(), rep.sources)) > \
        sum(min(f, 1) * s.available_loss_tokens for f, s in zip(no_rep.fractions().values(), no_rep.sources))


def test_source_shares(table1):
    targets = dict(medical_multimodal=0.4184, medical_text=0.2973, general_text=0.1821, general_multimodal=0.1022)
    shares = dict(pubmedvision=0.5, medmax=0.2, mecovqa=0.001, medgrit=0.009, medtrinity=0.29)
    plan = plan_mixture(mixture("s", ALL, targets, source_shares=shares), table1)
    by = {s.name: s for s in plan.sources}
    for n, sh in shares.items():
        assert abs(by[n].share - 0.4184 * sh) < 0.001 and by[n].requested_share == pytest.approx(0.4184 * sh)


def test_errors(table1):
    with pytest.raises(PlanError, match=r"must sum to 1 \(they sum to 0\.9990\)"):
        plan_mixture(mixture("x", ALL, dict(medical_multimodal=0.418, medical_text=0.297, general_text=0.182,
                                             general_multimodal=0.102)), table1)
    with pytest.raises(PlanError, match=r"source_shares for category medical_multimodal must sum to 1"):
        plan_mixture(mixture("x", MULTIMODAL, dict(medical_multimodal=0.8, general_multimodal=0.2),
                             source_shares=dict(pubmedvision=0.5, medmax=0.2, mecovqa=0.1, medgrit=0.1, medtrinity=0.2)),
                     table1)
    with pytest.raises(PlanError, match=r"no statistics for source\(s\) \['fracatlas'\]"):
        plan_mixture(mixture("x", ["pubmedvision", "fracatlas"]), table1)
    with pytest.raises(PlanError, match=r"\['magpie'\] are in categories \['general_text'\] that have no target"):
        plan_mixture(mixture("x", MULTIMODAL + ["magpie"], dict(medical_multimodal=0.8, general_multimodal=0.2)), table1)
    # A loss-token budget the data cannot meet names the short source and by how much.
    with pytest.raises(PlanError) as e:
        plan_mixture(mixture("x", ALL, dict(medical_multimodal=0.3, medical_text=0.3, general_text=0.3,
                                            general_multimodal=0.1)), table1, total_loss_tokens=500e6)
    msg = str(e.value)
    assert "magpie (general_text) needs >= 149,750,000 loss tokens" in msg and "short by 33,150,000 (22.1%)" in msg
    assert "aloe_text" not in msg  # 0.3 x 500M = 150M <= 190.3M: not short
    empty = [s if s.name != "magpie" else type(s)(**{**s.__dict__, "loss_tokens": 0.0}) for s in table1]
    with pytest.raises(PlanError, match=r"\['magpie'\] are short: target 18.2% .*short by 100%"):
        plan_mixture(mixture("x", ALL, dict(medical_multimodal=0.4184, medical_text=0.2973, general_text=0.1821,
                                            general_multimodal=0.1022)), empty)
    with pytest.raises(PlanError, match=r"micro batch 16 x gradient accumulation 2 x world size 16 = 512 ≠ configured global batch 1024"):
        plan_training(3.5e6, {**RECIPE_7B, "gpus": 16})


def test_stats_roundtrip_and_budget(tmp_path, table1):
    p = write_stats(tmp_path / "stats.json", table1, measured_by="test")
    again, meta = load_stats(p)
    assert [s.__dict__ for s in again] == [s.__dict__ for s in table1] and meta["measured_by"] == "test"
    plan = plan_mixture(mixture("b", ALL), table1, total_loss_tokens=320.05e6)  # natural shares, half the tokens
    assert plan.loss_tokens == pytest.approx(320.05e6) and all(f == pytest.approx(0.5) for f in plan.fractions().values())


def test_copies_for_is_seeded_nested_and_meets_the_fraction():
    """The selection rule of the mix stage: floor(f) copies plus one more with probability frac(f), by a seeded
    hash of the id (order-free, deterministic, nested in the fraction)."""
    ids = [f"s-{i}" for i in range(4000)]

    def picked(fraction: float, seed: int = 3) -> dict[str, int]:
        return {i: k for i in ids if (k := copies_for(i, "src", fraction, seed))}

    quarter, half = picked(0.25), picked(0.5)
    assert abs(len(quarter) / 4000 - 0.25) < 0.03 and set(quarter.values()) == {1}
    assert set(quarter) < set(half)  # a larger fraction keeps a superset
    assert set(picked(0.25, seed=4)) != set(quarter)  # the seed matters
    assert picked(0.25) == quarter  # deterministic
    assert len(picked(1.0)) == 4000 and set(picked(2.5).values()) == {2, 3}
    assert abs(sum(picked(2.5).values()) / 4000 - 2.5) < 0.05


@pytest.mark.parametrize("name,steps,medtext", [("final", 3487, 29.7), ("medical_only", 3487, 41.5),
                                                 ("multimodal_only", 3487, None)])
def test_stage_plan_from_config(tmp_path, name, steps, medtext):
    """The composed Hydra config (conf/mixture/<name>.yaml + model=qwen2vl_7b) plans from the paper's stats."""
    cfg = compose([f"mixture={name}", "model=qwen2vl_7b", f"plan.stats={PAPER_TABLE1}"], root=tmp_path)
    plan = run_plan(cfg, tmp_path / "run")
    data = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert data["training"]["total_steps"] == steps and data["training"]["global_batch_size"] == 1024
    cats = {c["category"]: c for c in data["categories"]}
    if medtext is not None:
        assert round(100 * cats["medical_text"]["share"], 1) == medtext
    assert {"samples", "loss_tokens", "share", "requested_share"} <= set(cats["medical_multimodal"])
    assert plan.mixture == name and data["stats"]["path"] == str(PAPER_TABLE1)


@pytest.mark.parametrize("model,gpus,per_node", [("qwen2vl_7b", 32, 4), ("qwen2vl_72b", 100, 4)])
def test_zero3_model_states_match_deepspeeds_estimator(model, gpus, per_node):
    """Parameters + gradients + Adam states per GPU under ZeRO-3 = DeepSpeed's own estimator (it runs on CPU)."""
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    from aloevision.planning import MODEL_SPECS, training_memory, zero3_model_states_bytes

    spec = MODEL_SPECS[model]
    _, ds_gpu, ds_largest = estimate_zero3_model_states_mem_needs(
        int(spec.params), spec.largest_layer_params, num_gpus_per_node=per_node, num_nodes=gpus // per_node,
        cpu_offload=False, cpu_offload_params=False, zero_init=True)
    ours = zero3_model_states_bytes(spec.params, spec.largest_layer_params, gpus, "adamw_torch")
    assert ours == pytest.approx(ds_gpu, abs=2)
    m = training_memory(spec, gpus=gpus, micro_batch=1, seq_len=1, optimizer="adamw_torch", gpu_gib=64)
    states = m.parameters_gib + m.gradients_gib + m.optimizer_gib + m.largest_layer_gib
    assert states * 2**30 == pytest.approx(ds_gpu, rel=1e-9) and m.largest_layer_gib * 2**30 == ds_largest
    # 8-bit Adam (the 72B recipe's adamw_bnb_8bit) keeps momentum and variance in one byte each: 6 bytes less.
    eight = zero3_model_states_bytes(spec.params, spec.largest_layer_params, gpus, "adamw_bnb_8bit")
    assert ds_gpu - eight == pytest.approx(6 * spec.params / gpus, rel=1e-6)
