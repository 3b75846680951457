"""stage=mix on the demo data: the row tables open (memory-mapped) with `datasets`, their image keys resolve in the
image store, the rows interleave sources, the composition files exist and agree with them, and a mixture with targets
rebalances by loss tokens. (The portable parquet export: tests/stages/test_mix_store.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def _run_dir(root: Path, name: str) -> Path:
    return root / "outputs" / "runs" / name


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_record.json").read_text())


def _categories(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "mix" / "composition.csv") as f:
        return {r["category"]: r for r in csv.DictReader(f) if r["level"] == "category"}


def test_demo_mixture_opens_with_datasets(run_launch, tmp_path):
    from aloevision.image_store import ImageStore
    from aloevision.images import decode_image
    from aloevision.mixture import load_mixture

    run_launch("stage=mix", "wandb.mode=disabled", "hydra.run.dir=outputs/runs/demo")
    run_dir = _run_dir(tmp_path, "demo")
    rec = _record(run_dir)
    data = Path(rec["paths"]["mixture"])
    assert sorted(p.name for p in data.iterdir())[0].startswith("train-00000-of-")
    ds = load_mixture(str(data))
    assert set(ds.column_names) == {"id", "source", "category", "messages", "images"}  # TRL's format + labels
    assert all(f["filename"].startswith(str(data)) for f in ds.cache_files)  # memory-mapped in place, no copy
    row = next(r for r in ds if r["images"])
    store = ImageStore(rec["stages"]["mix"]["image_store"])
    assert decode_image(store.get(row["images"][0])).size[0] > 0 and row["messages"][0]["role"] in ("system", "user")
    # Interleaved: the first rows already mix sources (the demo's rows come from 8 sources, in source order upstream).
    assert len(set(ds["source"][:40])) >= 4
    # composition: files exist and count exactly what was written
    for name in ("mix/composition.md", "mix/composition.csv", "mix/token_allocation.png", "plan.json"):
        assert (run_dir / name).stat().st_size > 0, name
    with open(run_dir / "mix" / "composition.csv") as f:
        rows = list(csv.DictReader(f))
    total = next(r for r in rows if r["level"] == "total")
    assert int(total["samples"]) == len(ds)
    per_source = {r["source"]: int(r["samples"]) for r in rows if r["level"] == "source"}
    assert per_source == {s: ds["source"].count(s) for s in set(ds["source"])}
    # the demo keeps natural shares: every trainable sample once, no requested shares
    assert all(r["requested_share"] == "" for r in rows)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert all(s["fraction"] == 1.0 for s in plan["sources"])
    from omegaconf import OmegaConf

    epochs = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/model/tiny.yaml").recipe.epochs
    assert plan["training"]["total_steps"] == plan["training"]["steps_per_epoch"] * epochs  # the tiny recipe's epochs


def test_targets_rebalance_by_loss_tokens(run_launch, tmp_path):
    run_launch("stage=mix", "wandb.mode=disabled", "hydra.run.dir=outputs/runs/natural")
    run_launch("stage=mix", "mixture=final", "wandb.mode=disabled", "hydra.run.dir=outputs/runs/final")
    natural, final = _categories(_run_dir(tmp_path, "natural")), _categories(_run_dir(tmp_path, "final"))
    plan = json.loads((_run_dir(tmp_path, "final") / "plan.json").read_text())
    # The plan meets the targets exactly (within the tolerance) on the measured demo stats ...
    for c in plan["categories"]:
        assert abs(c["share"] - c["requested_share"]) <= 0.0005 + 1e-9, c
    assert min(s["fraction"] for s in plan["sources"]) < 1  # it had to subsample
    # ... and the selected rows follow it (seeded per-sample selection: a few points of sampling noise on ~100 rows),
    # far from the demo's natural shares.
    for cat, row in final.items():
        assert abs(float(row["share"]) - float(row["requested_share"])) < 0.04, (cat, row)
    # the demo's natural mixture is dominated by the short modality questions (general multimodal) and has almost
    # no medical text; the final mixture's targets move both far
    assert float(natural["general_multimodal"]["share"]) > 0.4 > 0.2 > float(final["general_multimodal"]["share"])
    assert float(natural["medical_text"]["share"]) < 0.1 < 0.2 < float(final["medical_text"]["share"])
    assert int(final["medical_text"]["samples"]) == int(natural["medical_text"]["samples"])  # the scarce one kept whole
