"""Paper tables from run records on disk: one incomplete run, a missing metric, a missing run, duplicates, a broken
record, the paper's values and differences, and every output format."""

import csv
import json

import pytest

from aloevision.report.build import build_group_report
from aloevision.report.runs import collect_runs, load_runs_from_disk, load_runs_from_wandb, varied_choices
from aloevision.report.tables import build_table, paper_results, tables_for, to_latex, to_markdown
from aloevision.report.wandb_report import save_report

B8 = ["pathmmu", "omnimedvqa", "gmai_mmbench", "probmed", "slake", "mmmu", "multimedqa", "mmlu"]


def write_record(root, folder, *, group, choices, metrics, status="finished", job_type="all", finished="2026-01-01",
                 stages=None, config=None):
    d = root / folder
    d.mkdir(parents=True)
    rec = {"run_id": folder, "name": folder.replace("/", "-"), "group": group, "job_type": job_type, "status": status,
           "started": "2026-01-01T00:00:00", "finished": finished if status == "finished" else None,
           "choices": choices, "overrides": [f"{k}={v}" for k, v in choices.items()], "config": config or {},
           "metrics": metrics, "stages": stages or {}, "paths": {"run_dir": str(d)}}
    (d / "run_record.json").write_text(json.dumps(rec))
    return d


def base_choices(**kw):
    return {"mixture": "final", "model": "tiny", "leakage": "phash", "filter": "none", "eval": "demo", **kw}


def metrics(offset, drop=()):
    m = {f"eval/{b}": 40.0 + offset + i for i, b in enumerate(B8) if b not in drop}
    m["train/loss"] = 1.23
    return m


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "outputs"
    g = "ablation_mixture"
    write_record(root, "multirun/ablation_mixture/0", group=g, choices=base_choices(mixture="final"),
                 metrics=metrics(0))
    # an older failed attempt of the same row: the finished one is used
    write_record(root, "multirun/ablation_mixture/old0", group=g, choices=base_choices(mixture="final"),
                 metrics={"eval/pathmmu": 1.0}, status="failed")
    write_record(root, "multirun/ablation_mixture/1", group=g, choices=base_choices(mixture="multimodal_only"),
                 metrics=metrics(10, drop=("mmlu",)))  # a metric is missing
    write_record(root, "multirun/ablation_mixture/2", group=g, choices=base_choices(mixture="medical_only"),
                 metrics={"eval/pathmmu": 30.0}, status="running")  # incomplete run
    write_record(root, "runs/ablation_mixture/report", group=g, choices=base_choices(), metrics={},
                 job_type="report")
    write_record(root, "runs/other/0", group="other", choices=base_choices(), metrics=metrics(5))
    broken = root / "runs/broken"
    broken.mkdir(parents=True)
    (broken / "run_record.json").write_text("{not json")
    return root


def test_collect_from_disk(sweep):
    got = load_runs_from_disk(sweep, "ablation_mixture")
    assert len(got.runs) == 5 and len(got.skipped) == 1 and "broken" in got.skipped[0]
    assert varied_choices([r for r in got.runs if r.job_type != "report"]) == ["mixture"]
    assert load_runs_from_disk(sweep / "nope").message.endswith("does not exist")


def test_table7_from_runs(sweep):
    runs = load_runs_from_disk(sweep, "ablation_mixture").runs
    assert tables_for("ablation_mixture", runs) == ["table7"]
    t = build_table("table7", runs)
    assert [r.label for r in t.rows] == ["mixture=final", "mixture=multimodal_only", "mixture=medical_only"]
    final, mm, med = t.rows
    # The row names its run and which model its numbers measure.
    assert final.status == "finished" and final.run == "multirun-ablation_mixture-0 (tiny, trained here)"
    assert final.measured["pathmmu"] == 40.0 and final.paper["pathmmu"] == 61.8
    assert final.diff("pathmmu") == pytest.approx(40.0 - 61.8)
    assert mm.measured["mmlu"] is None and mm.diff("mmlu") is None and mm.paper["mmlu"] == 61.8
    assert med.status == "running" and med.measured["pathmmu"] == 30.0 and med.measured["slake"] is None
    assert any("medical_only" in n and "running" in n for n in t.notes)
    assert any("missing mmlu" in n for n in t.notes)

    md = to_markdown(t)
    assert "| **mixture=medical_only** [running] | 30.0 | — |" in md
    assert "| paper: Final | 61.8 | 75.9 |" in md
    assert "| Δ (ours − paper) | -21.8 |" in md
    # A missing metric is never shown as zero.
    mm_line = next(line for line in md.splitlines() if line.startswith("| **mixture=multimodal_only**"))
    assert mm_line.rstrip().endswith("| — |") and " 0.0 " not in mm_line
    tex = to_latex(t)
    assert r"\toprule" in tex and r"mixture=multimodal\_only" in tex and "$\\Delta$" in tex


def test_missing_run_row_and_unexpected_value(tmp_path):
    root = tmp_path / "o"
    write_record(root, "a", group="ablation_leakage", choices=base_choices(leakage="phash"), metrics=metrics(0))
    write_record(root, "b", group="ablation_leakage", choices=base_choices(leakage="radius4"), metrics=metrics(1))
    t = build_table("table8", load_runs_from_disk(root).runs)
    labels = {r.label: r for r in t.rows}
    assert list(labels) == ["leakage=phash", "leakage=off", "leakage=radius4"]
    assert labels["leakage=off"].status == "missing" and labels["leakage=off"].paper_name == "With Leakage"
    assert all(v is None for v in labels["leakage=off"].measured.values())
    assert labels["leakage=radius4"].paper == {}  # not a paper row: no comparison invented
    assert "no run with leakage=off" in t.notes


def test_recipe_tables_3_10_4(tmp_path):
    root = tmp_path / "o"
    m = {"eval/careqa_vision/mcq": 50.0, "eval/careqa_vision/open": 30.0, "eval/careqa_vision/nursing_mcq": 40.0,
         "eval/heart/classification/base": 55.0, "eval/heart/detection/leg": 20.0, "eval/pathmmu": 60.0}
    write_record(root, "r", group="aloe_vision_7b", choices=base_choices(model="qwen2vl_7b"), metrics=m)
    runs = load_runs_from_disk(root).runs
    assert tables_for("aloe_vision_7b", runs) == ["table3", "table10", "table4"]
    t3 = build_table("table3", runs)
    (row,) = t3.rows
    assert row.paper_name == "Aloe-Vision-7B" and row.paper["careqa_vision/mcq"] == 56.36
    assert row.measured["careqa_vision/mcq"] == 50.0 and row.measured["omnimedvqa"] is None
    t4 = build_table("table4", runs)
    assert t4.rows[0].paper_name == "Aloe-Vision-7B-S1" and t4.rows[0].paper["heart/detection/leg"] == 34.4
    t10 = build_table("table10", runs, paper="Aloe-Vision-7B-AR")
    assert t10.rows[0].paper["careqa_vision/medicine_mcq"] == 69.11


def test_paper_values_match_paper_facts():
    tables = paper_results()["tables"]
    assert tables["table7"]["rows"]["Medical-only"]["probmed"] == 53.8
    assert tables["table8"]["rows"]["With Leakage"]["multimedqa"] == 59.6
    assert tables["table9"]["rows"]["Without Filtering"]["pathmmu"] == 62.2
    assert tables["table4"]["rows"]["Aloe-Vision-7B-S2"]["heart/classification/pmt"] == 43.8


def test_build_group_report_writes_all_formats(sweep, tmp_path):
    out = tmp_path / "report"
    res = build_group_report("ablation_mixture", sweep, out, source="disk")
    assert res["tables"] == "table7" and res["runs"] == 4 and res["skipped_records"] == 1
    for kind in ("md", "tex", "csv", "png"):
        assert (out / f"table7.{kind}").is_file()
    assert (out / "table7.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "table7.csv").open()))
    assert len(rows) == 3 * 8
    mm = next(r for r in rows if r["row"] == "mixture=multimodal_only" and r["benchmark"] == "mmlu")
    assert mm["measured"] == "" and mm["diff"] == "" and mm["paper"] == "61.8" and "metric missing" in mm["status"]
    fin = next(r for r in rows if r["row"] == "mixture=final" and r["benchmark"] == "mmlu")
    assert float(fin["measured"]) == 47.0 and float(fin["diff"]) == pytest.approx(47.0 - 65.9)
    assert res["wandb_report"].startswith("not requested")


def test_wandb_paths_skip_offline(sweep):
    assert save_report("g", ["eval/pathmmu"], project="p", mode="offline") == "skipped (offline)"
    got = load_runs_from_wandb("g", project="p", mode="offline")
    assert got.runs == [] and "offline" in got.message
    # auto: W&B offline here -> falls back to the records on disk and says so
    auto = collect_runs("ablation_mixture", sweep, source="auto", wandb_cfg={"mode": "offline"})
    assert auto.source == "disk" and len(auto.runs) == 5 and "offline" in auto.message
    with pytest.raises(ValueError, match="report.source"):
        collect_runs("g", sweep, source="s3")


def test_demo_sweep_extra_benchmarks_and_nested_choices(tmp_path):
    """The demo sweep's runs carry demo benchmarks (no paper column) and nested source@ choices that follow the
    mixture: the table still has the paper's rows, plus the demo benchmarks as extra columns without comparison."""
    root = tmp_path / "o"
    for i, mix in enumerate(["final", "multimodal_only", "medical_only"]):
        ch = base_choices(mixture=mix, **{f"source@mixture.sources.s{i}": f"s{i}"})
        write_record(root, str(i), group="ablation_mixture", choices=ch,
                     metrics={"eval/demo_mcq": 10.0 * i, "eval/demo_yesno/question": 5.0, "eval/slake": 20.0})
    runs = load_runs_from_disk(root).runs
    t = build_table("table7", runs)
    assert t.varied == ["mixture"] and not any("differ" in n for n in t.notes)
    assert t.columns[-1:] == ("demo_mcq",)  # sub-keys (with "/") are not columns
    assert [r.measured["demo_mcq"] for r in t.rows] == [0.0, 10.0, 20.0]
    assert t.rows[0].paper.get("demo_mcq") is None and t.rows[0].diff("slake") == pytest.approx(20.0 - 65.4)
    md = to_markdown(t)
    assert "| demo_mcq |" in md.splitlines()[2] or md.splitlines()[2].endswith("| demo_mcq |")
    assert not any("missing demo_mcq" in n for n in t.notes)


def test_trained_run_beats_eval_only_and_finished_beats_failed(tmp_path):
    """An eval-only run of the untrained base model (more metrics, later) must not stand for the trained model; of
    two trained runs the finished one is used; every row says which run and model it came from."""
    root = tmp_path / "o"
    g = "ablation_mixture"
    ev = {f"eval/{b}": 10.0 for b in B8}
    write_record(root, "trained", group=g, choices=base_choices(mixture="final"),
                 metrics={"train/global_step": 5, "eval/pathmmu": 50.0}, stages={"train": {}})
    write_record(root, "base_eval", group=g, choices=base_choices(mixture="final"), metrics=ev, job_type="eval",
                 finished="2026-02-01")
    write_record(root, "trained_failed", group=g, choices=base_choices(mixture="medical_only"),
                 metrics={"train/global_step": 3}, status="failed", stages={"train": {}}, finished="2026-03-01")
    write_record(root, "trained_ok", group=g, choices=base_choices(mixture="medical_only"),
                 metrics={"train/global_step": 5, "eval/pathmmu": 0.0}, stages={"train": {}})
    t = build_table("table7", load_runs_from_disk(root).runs)
    rows = {r.label: r for r in t.rows}
    fin, med = rows["mixture=final"], rows["mixture=medical_only"]
    assert fin.run == "trained (tiny, trained here)" and fin.measured["pathmmu"] == 50.0
    assert med.run == "trained_ok (tiny, trained here)" and med.status == "finished"
    assert med.measured["pathmmu"] == 0.0  # a measured zero is a value, not missing
    assert "| **mixture=medical_only** | 0.0 |" in to_markdown(t)
    assert any(n.startswith("mixture=final: run trained") for n in t.notes)


def test_unknown_group_fails_listing_the_groups(sweep, tmp_path):
    from aloevision.config import ConfigError

    with pytest.raises(ConfigError) as e:
        build_group_report("ablation_mixtrue", sweep, tmp_path / "r", source="disk")
    msg = str(e.value)
    # The report jobs are not counted as runs of a group.
    assert "ablation_mixtrue" in msg and "ablation_mixture (4 runs)" in msg and "other (1 run)" in msg


def test_zero_is_drawn_as_zero(tmp_path):
    """The chart labels every measured bar with its value: 0.0 is visible (a missing value reads n/a)."""
    from aloevision.report.tables import to_png

    root = tmp_path / "o"
    write_record(root, "a", group="ablation_mixture", choices=base_choices(mixture="final"),
                 metrics={"eval/pathmmu": 0.0, "eval/slake": 42.0, "train/loss": 1.0})
    t = build_table("table7", load_runs_from_disk(root).runs)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = []
    orig = plt.Figure.savefig

    def grab(fig, *a, **k):
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        return orig(fig, *a, **k)

    plt.Figure.savefig = grab
    try:
        to_png(t, tmp_path / "t.png")
    finally:
        plt.Figure.savefig = orig
    assert "0.0" in texts and "42.0" in texts and "n/a" in texts
