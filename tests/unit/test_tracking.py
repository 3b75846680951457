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


def test_one_step_axis_every_training_step_present(session_root, tmp_path):
    """Tables, images and HTML never advance W&B's step: every training step is in the history from 1, at its own
    step (W&B drops a row logged below its counter, which cut the demo's curve to steps 69..245)."""
    import numpy as np
    from PIL import Image

    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(png)
    t = _tracker(tmp_path / "job")
    t.table("ingest/report", ["source", "n"], [["a", 1]])  # before training, as the data stages do
    t.image("mix/token_allocation", png)
    t.log({"score/computed": 3})  # a stage counter without a step
    for step in range(1, 13):
        t.log({"train/loss": 1.0 / step, "train/learning_rate": 1e-4}, step=step)
        if step % 4 == 0:
            t.table(f"eval/t{step}", ["a"], [[step]])
            t.image(f"img/{step}", png)
    t.table("eval/predictions", ["id"], [["q1"]])
    t.summary({"eval/x": 1.0})
    t.finish()
    run = read_run(find_run_log(tmp_path / "job"))
    steps = {h["_step"]: h for h in run["history"]}
    assert sorted(h["_step"] for h in run["history"] if "train/loss" in h) == list(range(1, 13))
    assert all(steps[s]["train/loss"] == 1.0 / s for s in range(1, 13))
    assert max(steps) == 12  # nothing after training pushed the axis on
    assert any(k.startswith("ingest/report") for k in steps[0]) and steps[0]["score/computed"] == 3
    assert any(k.startswith("eval/predictions") for k in steps[12]) and any(k.startswith("img/4") for k in steps[4])


def test_requeue_resumes_the_same_run_and_whole_run_metrics(session_root, tmp_path):
    """A rerun of the same folder (requeue / rerun) continues the same W&B run id; the steps it re-trains after its
    last checkpoint are not logged twice, the axis continues, and train/train_loss covers every step."""
    t = _tracker(tmp_path / "job")
    for step in range(1, 6):
        t.log({"train/loss": float(step)}, step=step)
    t.finish("interrupted", error=KeyboardInterrupt())
    first = json.loads((tmp_path / "job" / RUN_RECORD).read_text())
    assert first["status"] == "interrupted" and first["error"] == "KeyboardInterrupt"

    t2 = _tracker(tmp_path / "job")  # the checkpoint was at step 3: steps 4..8 are trained again / anew
    assert t2.record["run_id"] == first["run_id"] and t2.attempt == 2
    for step in range(4, 9):
        t2.log({"train/loss": float(step) + 0.5}, step=step)
    t2.summary({"train/train_loss": 99.0})
    t2.finish()
    rec = json.loads((tmp_path / "job" / RUN_RECORD).read_text())
    assert rec["status"] == "finished" and rec["attempts"] == 2 and "error" not in rec
    assert rec["previous_attempts"][0]["status"] == "interrupted"
    # steps 1..5 from the first attempt, 6..8 from the second
    assert rec["metrics"]["train/train_loss"] == (1 + 2 + 3 + 4 + 5 + 6.5 + 7.5 + 8.5) / 8
    assert rec["metrics"]["train/train_loss_this_attempt"] == 99.0
    logs = sorted((tmp_path / "job" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and all(p.name == f"run-{first['run_id']}.wandb" for p in logs)  # one W&B run, 2 parts
    second = read_run(logs[-1])
    assert [h["_step"] for h in second["history"] if "train/loss" in h] == [6, 7, 8]


def test_secrets_never_reach_a_file(session_root, tmp_path, monkeypatch):
    """A secret planted in the environment, in a config value (a shell setup line) and in an override appears in no
    file of the run folder or its W&B run; settings whose names contain 'token' keep their values."""
    env_secret, cfg_secret, ovr_secret = "hf_" + "e" * 30, "s3cr3t-in-setup-line", "0v3rr1d3-s3cr3t"
    monkeypatch.setenv("HF_TOKEN", env_secret)
    run_dir = tmp_path / "job"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- wandb.api_key={ovr_secret}\n- cluster.setup=[export "
                                                        f"HF_TOKEN={env_secret}]\n")
    t = Tracker(run_dir,
                config={"cluster": {"setup": [f"export HF_TOKEN={env_secret}", f"export MY_KEY={cfg_secret}"]},
                        "eval": {"max_new_tokens": 32}, "model": {"tiny": {"tokenizer_vocab_size": 1024}},
                        "wandb": {"api_key": ovr_secret}},
                choices={"model": "tiny"}, overrides=[f"wandb.api_key={ovr_secret}", "eval.max_new_tokens=32"],
                wandb_cfg={"mode": "offline", "project": "aloe-test"}, group="g", job_type="all",
                name="n", tags=["t"])
    t.table("x", ["line"], [[f"export HF_TOKEN={env_secret}"]])
    t.stage_report("ingest", {"note": f"MY_KEY={cfg_secret}"})
    t.finish("failed", error=RuntimeError(f"could not log in with {ovr_secret}"))
    read_run(find_run_log(run_dir))  # finished writing
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "overrides.yaml" for p in files)
    for p in files:
        data = p.read_bytes()
        for s in (env_secret, cfg_secret, ovr_secret):
            assert s.encode() not in data, f"{s} in {p}"
    rec = json.loads((run_dir / RUN_RECORD).read_text())
    assert rec["config"]["eval"]["max_new_tokens"] == 32
    assert rec["config"]["model"]["tiny"]["tokenizer_vocab_size"] == 1024
    assert rec["overrides"] == ["wandb.api_key=***", "eval.max_new_tokens=32"]
    assert rec["config"]["cluster"]["setup"] == ["export HF_TOKEN=***", "export MY_KEY=***"]
    assert rec["error"] == "RuntimeError: could not log in with ***"


def test_scrub_by_key_and_value():
    from aloevision.tracking import scrub, scrub_text

    out = scrub({"hf_token": "abc123", "max_new_tokens": 64, "tokenizer_vocab_size": 1024, "WANDB_API_KEY": "k" * 40,
                 "setup": ["export OPENAI_API_KEY=sk-" + "a" * 30, "module load cuda"], "url": "https://u:pw@host/x",
                 "note": "token hf_" + "Z" * 25 + " end"})
    assert out["hf_token"] == "***" and out["WANDB_API_KEY"] == "***"
    assert out["max_new_tokens"] == 64 and out["tokenizer_vocab_size"] == 1024
    assert out["setup"] == ["export OPENAI_API_KEY=***", "module load cuda"]
    assert out["url"] == "https://***@host/x" and out["note"] == "token *** end"
    assert scrub_text("eval.max_new_tokens=64 model.tiny.tokenizer_vocab_size=8") == (
        "eval.max_new_tokens=64 model.tiny.tokenizer_vocab_size=8")


def test_credentials_without_network_fall_back_offline_fast(monkeypatch, caplog):
    import time

    from aloevision.tracking import resolve_mode

    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: like a compute node offline
    t0 = time.monotonic()
    assert resolve_mode("auto") == "offline" and resolve_mode("online") == "offline"
    assert time.monotonic() - t0 < 10
    assert "unreachable; logging offline" in caplog.text


def test_run_identity_from_choices():
    from aloevision.tracking import run_identity, run_tag

    choices = {"mixture": "final", "model": "tiny", "filter": "demo", "leakage": "phash", "eval": "demo",
               "cluster": "local"}
    ovr = ["mixture=final", "train.max_steps=2", "paths.cache_dir=/x/y", "wandb.api_key=abc", "+experiment=e"]
    assert run_tag(choices, ovr) == "mixture=final,train.max_steps=2"
    folder = run_tag(choices, ovr, folder=True)
    assert folder == "mixture-final+train.max_steps-2"
    # A run folder is passed back as an override value (train.init_from=<run folder>): Hydra must take it unquoted.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    o = OverridesParser.create().parse_override(f"train.init_from=/o/runs/g/2026-01-01_00-00-00_{folder}_all")
    assert o.value().endswith(f"{folder}_all") and not o.is_sweep_override()
    ident = run_identity(stage="all", stages_run=["ingest", "mix", "train", "eval"], group="ablation_mixture",
                         choices=choices, overrides=ovr, job_num=0, sweep_dir="/o/multirun/g/2026-01-01_00-00-00")
    assert ident["name"] == "0: mixture=final,train.max_steps=2 · all"
    assert ident["job_type"] == "ingest+mix+train+eval" and ident["group"] == "ablation_mixture"
    assert {"stage=all", "mixture=final", "sweep=2026-01-01_00-00-00"} <= set(ident["tags"])
    demo = run_identity(stage="plan", stages_run=["plan"], group="demo", choices={**choices, "mixture": "demo"},
                        overrides=[])
    assert demo["name"] == "demo · plan" and demo["job_type"] == "plan"


def test_summary_lists_full_paths_and_unscored_benchmarks():
    from pathlib import Path

    from omegaconf import OmegaConf

    from aloevision.summary import summary_lines

    run = Path("/very/long/outputs/multirun/ablation_mixture/2026-01-01_00-00-00/0_mixture-final+train.max_steps-2")
    rec = {"status": "failed", "error": "ValueError: boom", "group": "ablation_mixture",
           "metrics": {"eval/demo_mcq": 50.0},
           "paths": {"run_dir": str(run), "model": str(run / "model")},
           "wandb": {"mode": "offline", "id": "abc", "dir": str(run / "wandb/offline-run-1-abc")},
           "stages": {"eval": {"harness_status": {"demo_mcq": "builtin: 10 items", "demo_open": "builtin: 5 items"}},
                      "eval_judges_demo_open": {"unscored": 5, "items": 5}}}
    lines = summary_lines(OmegaConf.create({"group": "g", "stage": "all"}), rec, run)
    assert lines[0] == "aloevision · group ablation_mixture · stage all · failed"
    assert "error: ValueError: boom" in lines[1]
    text = "\n".join(lines)
    for path in (run, run / "run_record.json", run / "model", run / "wandb/offline-run-1-abc"):
        assert any(line.rstrip().endswith(str(path)) for line in lines), path  # whole, one per line
    assert "wandb sync " + str(run / "wandb/offline-run-1-abc") in text
    flat = " ".join(text.split())
    assert "eval/demo_open: no score (builtin: 5 items; judges could not grade 5 of 5 answers)" in flat


def test_end_status_interrupted_failed_and_submitit_requeue(session_root, tmp_path):
    import logging

    from submitit.core.job_environment import SignalHandler

    from aloevision.tracking import Terminated, close_tracker, status_of

    assert status_of(None) == "finished" and status_of(KeyboardInterrupt()) == "interrupted"
    assert status_of(Terminated("signal SIGTERM")) == "interrupted" and status_of(ValueError("x")) == "failed"
    assert status_of(SystemExit("Config error: ...")) == "failed"
    handler = SignalHandler.__new__(SignalHandler)
    handler._logger = logging.getLogger("submitit-test")
    try:
        handler._exit()  # what submitit does after requeuing a preempted / timed-out job
    except SystemExit as e:
        requeued = e
    assert status_of(requeued) == "interrupted"
    t = _tracker(tmp_path / "job", mode="disabled")
    close_tracker(t, requeued)
    rec = json.loads((tmp_path / "job" / RUN_RECORD).read_text())
    assert rec["status"] == "interrupted" and "requeued" in rec["error"]
    # A stage that stops on a signal and returns normally (training after saving its checkpoint) marks it.
    t = _tracker(tmp_path / "job2", mode="disabled")
    t.mark_interrupted("SIGTERM at step 40: checkpoint-40 saved")
    close_tracker(t, None)
    rec = json.loads((tmp_path / "job2" / RUN_RECORD).read_text())
    assert rec["status"] == "interrupted" and rec["error"] == "SIGTERM at step 40: checkpoint-40 saved"
