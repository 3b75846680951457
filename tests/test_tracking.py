"""What a job logs: one offline W&B run (read back from its binary log) and the plain run record beside it."""

import json

from aloevision.tracking import RUN_RECORD, Tracker
from aloevision.utils.wandb_log import find_run_log, read_run


def _tracker(run_dir, **kw):
    return Tracker(
        run_dir,
        config={"seed": 0, "wandb": {"api_key": "sekrit-value"}, "hf_token": "hf_abc", "model": {"name": "tiny"}},
        choices={"mixture": "demo", "model": "tiny", "leakage": "phash", "filter": "none"},
        overrides=["mixture=demo"],
        wandb_cfg={"mode": kw.pop("mode", "auto"), "project": "aloe-test"},
        group="ablation_mixture",
        job_type="all",
    )


def test_offline_run_content_and_run_record(session_root, tmp_path):
    t = _tracker(tmp_path / "job0")
    assert t.record["wandb"]["mode"] == "offline"  # no credentials: offline, no prompt
    t.log({"train/loss": 2.0}, step=1)
    t.log({"train/loss": 1.25}, step=2)
    t.table("ingest/report", ["source", "rows_in", "rows_out"], [["medmax", 10, 8], ["magpie", 5, 5]])
    t.summary({"eval/demo_mcq": 62.5})
    t.stage_report("ingest", {"medmax": {"rows_in": 10, "rows_out": 8}})
    t.finish()

    run = read_run(find_run_log(tmp_path / "job0"))
    assert run["run"]["group"] == "ablation_mixture" and run["run"]["job_type"] == "all"
    # The choices people filter and group by sit at the top level of the W&B config.
    assert {run["config"][k] for k in ("mixture", "model", "leakage", "filter")} == {"demo", "tiny", "phash", "none"}
    assert run["config"]["cfg"]["wandb"]["api_key"] == "***" and run["config"]["cfg"]["hf_token"] == "***"
    assert "sekrit-value" not in json.dumps(run) and "hf_abc" not in json.dumps(run)
    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert losses == [2.0, 1.25]
    assert run["summary"]["eval/demo_mcq"] == 62.5
    tables = list((tmp_path / "job0" / "wandb").glob("offline-run-*/files/media/table/ingest/report_*.table.json"))
    assert len(tables) == 1
    assert json.loads(tables[0].read_text())["data"] == [["medmax", 10, 8], ["magpie", 5, 5]]

    rec = json.loads((tmp_path / "job0" / RUN_RECORD).read_text())
    assert rec["status"] == "finished" and rec["metrics"]["eval/demo_mcq"] == 62.5
    assert rec["stages"]["ingest"]["medmax"]["rows_out"] == 8 and rec["choices"]["mixture"] == "demo"
    assert rec["config"]["hf_token"] == "***"


def test_one_run_per_job_in_one_process(session_root, tmp_path):
    ids = []
    for i in range(2):  # a multirun executes its jobs in one process: each gets its own W&B run
        t = _tracker(tmp_path / f"job{i}")
        t.summary({"eval/x": float(i)})
        t.finish()
        ids.append(t.record["run_id"])
        assert read_run(find_run_log(tmp_path / f"job{i}"))["summary"]["eval/x"] == float(i)
    assert ids[0] != ids[1]


def test_bad_wandb_settings_never_fail_the_job(session_root, tmp_path):
    t = _tracker(tmp_path / "job", mode="sometimes")
    assert t.run is None and t.record["wandb"]["mode"] == "disabled"
    t.summary({"eval/x": 1.0})
    t.finish("finished")
    assert json.loads((tmp_path / "job" / RUN_RECORD).read_text())["metrics"] == {"eval/x": 1.0}
