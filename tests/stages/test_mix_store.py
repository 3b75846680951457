"""Mixtures reference images in the shared image store: two mixtures (natural shares and `mixture=final`) store
each image once and cost only their row tables; training batches from referenced images equal those from embedded
images (token ids, labels, pixel values, grids); the portable export loads with plain `datasets` streaming, holds
the same rows with the same image bytes in several shards, and trains with plain TRL (streaming, its own
collator)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest


def _record(root: Path, name: str) -> dict:
    return json.loads((root / "outputs" / "runs" / name / "run_record.json").read_text())


def _two_mixtures(run_launch, tmp_path):
    run_launch("stage=mix", "wandb.mode=disabled", "hydra.run.dir=outputs/runs/natural")
    run_launch("stage=export", "mixture=final", "export.max_shard_bytes=200000", "wandb.mode=disabled",
               "hydra.run.dir=outputs/runs/final")
    return _record(tmp_path, "natural"), _record(tmp_path, "final")


def _batch_equal(a: dict, b: dict) -> None:
    import torch

    assert set(a) == set(b)
    for k in ("input_ids", "labels", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # two launches (~30 s with the session's upstream artifacts cached, ~70 s cold)
def test_mixtures_share_the_store_and_train_like_embedded_images(run_launch, tmp_path, tiny_path):
    from omegaconf import OmegaConf

    from aloevision.image_store import ImageStore
    from aloevision.images import read_image_bytes
    from aloevision.ingestion import iter_samples
    from aloevision.mixture import load_mixture
    from aloevision.model.loading import load_processor_for
    from aloevision.training.collator import build_training_collator

    natural, final = _two_mixtures(run_launch, tmp_path)
    mixes = [Path(r["stages"]["mix"]["artifact"]) for r in (natural, final)]
    assert mixes[0] != mixes[1]
    store = ImageStore(natural["stages"]["mix"]["image_store"])
    assert final["stages"]["mix"]["image_store"] == str(store.root)
    # The second mixture stored no image: the images stage's artifacts were reused (cached) by its job.
    assert final["stages"]["upstream"]["images"]["built"] == 0
    dss = [load_mixture(m) for m in mixes]
    keys = [{k for ims in ds["images"] for k in ims} for ds in dss]
    assert keys[1] <= keys[0] and len(keys[0]) > 50
    # Each image once: no key twice in the store, and every key the mixtures name is there.
    assert len(store) == store.distinct() and not store.missing(keys[0])
    image_bytes = sum(len(store.get(k)) for k in keys[0])
    rows = [sum(f.stat().st_size for f in (m / "data").iterdir()) for m in mixes]
    # A mixture costs its row table only (no image bytes in it): much less than the images it names.
    assert all(r < 0.5 * image_bytes for r in rows), (rows, image_bytes)
    print(f"\ndistinct image bytes {image_bytes:,}; row tables {rows[0]:,} + {rows[1]:,}; "
          f"store {store.stored_bytes():,} ({len(store)} images)")
    # Nothing else was written beside the rows: no datasets cache, no scratch.
    for m in mixes:
        assert sorted(p.name for p in m.iterdir() if p.is_dir()) == ["data"]
        assert all(p.suffix == ".arrow" for p in (m / "data").iterdir())

    # Training batches: referenced images (through the store) == the same rows with the source's image bytes
    # embedded (what the mixture held before) == the export's rows (embedded, decoded by `datasets`).
    model_cfg = OmegaConf.create(natural["config"]["model"])
    processor = load_processor_for(model_cfg, tiny_path)
    max_len = int(model_cfg.max_length)
    by_store = build_training_collator(processor, max_len, image_store=store)
    embedded = build_training_collator(processor, max_len)
    ds = dss[1]
    refs = {}
    for art in final["stages"]["upstream"]["ingest"]["artifacts"]:
        for s in iter_samples(art):
            refs[s.id] = s.images
    picked = [i for i, ims in enumerate(ds["images"]) if ims][:4] + [i for i, ims in enumerate(ds["images"])
                                                                     if not ims][:2]
    rows_ref = [ds[i] for i in picked]
    rows_emb = [{**r, "images": [{"bytes": read_image_bytes(ref), "path": None} for ref in refs[r["id"]]]}
                for r in rows_ref]
    for lo in range(0, len(picked), 3):
        _batch_equal(by_store(rows_ref[lo:lo + 3]), embedded(rows_emb[lo:lo + 3]))

    # The export: plain datasets, streaming, several shards under the cap, the same rows and image bytes.
    from datasets import Image, load_dataset

    export = final["stages"]["export"]
    files = sorted(glob.glob(str(Path(export["artifact"]) / "data" / "*.parquet")))
    assert len(files) >= 3 and all(Path(f).stat().st_size <= 200000 for f in files)
    stream = load_dataset("parquet", data_files=files, split="train", streaming=True)
    raw = stream.cast_column("images", [Image(decode=False)])
    exported = {r["id"]: r for r in raw}
    assert set(exported) == set(ds["id"]) and len(exported) == len(ds)
    for r in ds.select(range(min(len(ds), 40))):
        assert [im["bytes"] for im in exported[r["id"]]["images"]] == [store.get(k) for k in r["images"]]
        assert exported[r["id"]]["messages"] == r["messages"]
    by_id = {r["id"]: r for r in stream if r["id"] in set(r2["id"] for r2 in rows_ref)}
    _batch_equal(by_store(rows_ref[:3]), embedded([by_id[r["id"]] for r in rows_ref[:3]]))

    # Plain TRL on the streamed export, with its own collator: what a user outside the project runs. (The processor
    # comes through the project's loader only because this machine lacks torchvision; with it, AutoProcessor gives
    # the same one.)
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from aloevision.model.processor import load_processor

    args = SFTConfig(output_dir=str(tmp_path / "plain"), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                     report_to=[], save_strategy="no", max_length=1024, logging_steps=1, bf16=False,
                     disable_tqdm=True)
    trainer = SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(tiny_path), args=args,
                         train_dataset=stream, processing_class=load_processor(tiny_path))
    result = trainer.train()
    assert trainer.state.global_step == 2 and result.training_loss > 0
