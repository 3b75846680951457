"""One W&B run per job, and a plain run record beside it.

W&B: project/entity from config; name = the stage(s) and the choices that differ from the defaults; group = the
experiment or sweep; job_type = the stage(s) run; tags that describe the run. The resolved config (secrets scrubbed
by key AND by value) with the choices people filter by (mixture, model, ...) at the top level. With no credentials
it runs offline without asking; with credentials but no route to the server it falls back to offline at once (one
line says so) instead of waiting wandb's 90 s init timeout; any W&B failure is logged and the job goes on.

One step axis: training logs with `step=global_step`; everything else (tables, images, HTML, stage counters) is
attached to the current step without advancing it, so no training step is ever below W&B's counter and dropped.
A requeued or re-run job (same run folder) resumes the same W&B run by id, continues the axis after the last step
it logged, and recomputes whole-run metrics (train/train_loss) over every attempt's steps.

The run record (`run_record.json` in the run folder) holds the resolved config, the choices, final metrics, the
stage reports, the status (running | finished | failed | interrupted) and a failed run's error: the report stage
reads it without W&B.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from aloevision.artifacts import write_json_atomic

log = logging.getLogger(__name__)
RUN_RECORD = "run_record.json"
STEP_LOG = "train_steps.jsonl"  # every step's training scalars, all attempts: whole-run metrics after a resume
MASK = "***"

# ---- secrets ---------------------------------------------------------------------------------------------------
# A key is a credential when its LAST word is one (hf_token, api_key, WANDB_API_KEY, password); settings that merely
# contain the word (max_new_tokens, tokenizer_vocab_size, key_order) are left alone.
SECRET_KEY = re.compile(
    r"(?:^|[_.\-])(?:api_?key|access_?key|secret(?:_?key)?|private_?key|client_?secret|password|passwd|"
    r"credentials?|token|auth_?token|access_?token)$", re.I)
# Environment variables whose values are secrets (their values are masked wherever they appear).
SECRET_ENV = re.compile(r"(TOKEN|_KEY|APIKEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
# Strings that look like credentials whatever their key: Hugging Face, OpenAI/Anthropic, GitHub, Slack, AWS, GitLab.
TOKEN_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|glpat-[A-Za-z0-9_\-]{20,})")
# `NAME=value` / `name: value` / `--name value`-free forms inside any string (shell setup lines, overrides, argv).
ASSIGN = re.compile(r"(?P<name>[A-Za-z_][\w.\-]*)(?P<sep>\s*=\s*|:[ \t]+)(?P<q>['\"]?)(?P<val>[^\s'\"\\,;&|}\]]+)")
URL_AUTH = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<auth>[^/\s:@]+:[^/\s@]+)@", re.I)
NOT_A_VALUE = {"null", "none", "~", "???", "''", '""', "***", "true", "false"}


def _secret_name(name: str) -> bool:
    last = re.split(r"[.@/]", name)[-1].lstrip("+~")
    # Environment-style names: any TOKEN / KEY / SECRET / PASSWORD word (HF_TOKEN, MY_API_KEY, AWS_SECRET_ACCESS_KEY).
    if last.isupper() and re.search(r"(?:^|_)(?:TOKEN|KEY|APIKEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)", last):
        return True
    return bool(SECRET_KEY.search(last))


def env_secrets(environ: dict[str, str] | None = None) -> set[str]:
    """Values of environment variables that hold credentials (masked wherever they show up, e.g. in a setup line)."""
    env = os.environ if environ is None else environ
    out = set()
    for k, v in env.items():
        if SECRET_ENV.search(k) and v and len(v) >= 8 and v.lower() not in NOT_A_VALUE and not v.isdigit():
            if "/" in v and os.path.exists(v):  # a key FILE's path is not the secret (and masking it breaks paths)
                continue
            out.add(v)
    return out


def collect_secrets(obj: Any, found: set[str] | None = None) -> set[str]:
    """Values under credential-like keys anywhere in `obj` (dicts, lists, `key=value` strings)."""
    found = set() if found is None else found
    if isinstance(obj, dict):
        for k, v in obj.items():
            value = str(v)
            if _secret_name(str(k)) and isinstance(v, (str, int, float)) and value.lower() not in NOT_A_VALUE:
                if len(value) >= 4:
                    found.add(value)
            else:
                collect_secrets(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            collect_secrets(v, found)
    elif isinstance(obj, str):
        for m in ASSIGN.finditer(obj):
            if _secret_name(m["name"]) and m["val"].lower() not in NOT_A_VALUE and len(m["val"]) >= 4:
                found.add(m["val"])
    return found


def scrub_text(s: str, secrets: Iterable[str] = ()) -> str:
    """`s` with known secret values, token-looking strings, `*_TOKEN=`/`*_KEY=` assignments and URL passwords masked."""
    for v in sorted(set(secrets), key=len, reverse=True):
        if v and v in s:
            s = s.replace(v, MASK)
    s = TOKEN_VALUE.sub(MASK, s)
    s = URL_AUTH.sub(lambda m: f"{m['scheme']}{MASK}@", s)

    def assign(m: re.Match) -> str:
        if _secret_name(m["name"]) and m["val"].lower() not in NOT_A_VALUE:
            return f"{m['name']}{m['sep']}{m['q']}{MASK}"
        return m.group(0)

    return ASSIGN.sub(assign, s)


def scrub(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of `obj` without secrets: values of credential-like keys, and credential-looking values anywhere
    (environment secrets, token-shaped strings, `NAME_TOKEN=...` inside strings such as `cluster.setup` lines)."""
    if secrets is None:
        secrets = env_secrets() | collect_secrets(obj)
    secrets = set(secrets)
    if isinstance(obj, dict):
        return {k: (MASK if _secret_name(str(k)) and v not in (None, "") and not isinstance(v, (dict, list))
                    else scrub(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str):
        return scrub_text(obj, secrets)
    return obj


TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".jsonl", ".log", ".txt", ".md", ".csv", ".tex", ".html", ".out", ".err",
                 ".sh", ".cfg", ".ini"}
SKIP_DIRS = {"checkpoints", "model", "media"}  # weights and W&B media copies (tables are scrubbed before logging)


def scrub_folder(folder: str | Path, secrets: Iterable[str] = (), max_bytes: int = 64 << 20) -> list[Path]:
    """Rewrite every text file under `folder` (Hydra's .hydra/*.yaml, the job log, W&B's config/metadata/debug logs,
    the run record) with secrets masked. Returns the files changed. Binary files are never edited (W&B's `.wandb`
    log is kept clean at the source: scrubbed config, command line and tags)."""
    changed = []
    root = Path(folder)
    if not root.is_dir():
        return changed
    secrets = set(secrets)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for fn in filenames:
            p = Path(dirpath, fn)
            if p.suffix.lower() not in TEXT_SUFFIXES or p.is_symlink():
                continue
            try:
                if p.stat().st_size > max_bytes:
                    continue
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            new = scrub_text(text, secrets)
            if new != text:
                tmp = p.with_name(f".{p.name}.scrub-{os.getpid()}")
                tmp.write_text(new, encoding="utf-8")
                os.replace(tmp, p)
                changed.append(p)
    return changed


# ---- who the run is --------------------------------------------------------------------------------------------
NAME_GROUPS = ("mixture", "model", "filter", "leakage", "eval")  # choices that change WHAT is trained / measured
TAG_GROUPS = NAME_GROUPS + ("cluster", "experiment")
# Overrides that say where / how things are logged, not what the run is: never in names or folder names.
NOT_IN_NAME = ("paths.", "hydra.", "wandb.", "report.", "cluster.", "plan.", "mix.push_to_hub")
NOT_IN_NAME_KEYS = {"stage", "group", "paths", "wandb", "report", "upstream"}


def default_choices() -> dict[str, str]:
    """The group choices of conf/config.yaml's defaults list (what a plain `python launch.py` runs)."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"
    out: dict[str, str] = {}
    try:
        import yaml

        for item in yaml.safe_load(conf.read_text()).get("defaults", []):
            if isinstance(item, dict):
                for k, v in item.items():
                    if isinstance(v, str) and not str(k).startswith("override"):
                        out[str(k)] = v
    except Exception:  # an installed package without conf/: every choice counts as differing
        pass
    return out


def run_tag(choices: dict[str, str], overrides: Iterable[str], *, max_len: int = 96, folder: bool = False) -> str:
    """`mixture=final,train.max_steps=2`: the group choices that differ from the defaults, then the plain value
    overrides (not paths, logging or cluster settings, never a credential). `folder=True`: the same as
    `mixture-final+train.max_steps-2`, a folder name that Hydra also accepts unquoted as an override value
    (`train.init_from=<run folder>`: `=` and `,` there would be parsed as override syntax)."""
    defaults = default_choices()
    parts = [f"{k}={choices[k]}" for k in NAME_GROUPS if k in choices and str(choices[k]) != defaults.get(k)]
    for o in overrides:
        if "=" not in o or o.startswith(("~", "hydra")):
            continue
        key, val = o.split("=", 1)
        key = key.lstrip("+")
        if (key in NAME_GROUPS or key in TAG_GROUPS or "." not in key and key in NOT_IN_NAME_KEYS or "@" in key
                or (key.startswith(NOT_IN_NAME) and key != "cluster.data_shard") or _secret_name(key)
                or "/" in val or len(val) > 24 or not val):
            continue
        parts.append(f"{key}={val}")
    if folder:
        parts = [p.replace("=", "-", 1) for p in parts]
    tag = ("+" if folder else ",").join(dict.fromkeys(parts))
    tag = re.sub(r"[^\w.+\-]" if folder else r"[^\w=.,+\-]", "-", tag)
    return tag if len(tag) <= max_len else tag[: max_len - 1] + "~"


def run_identity(*, stage: str, stages_run: Iterable[str], group: str, choices: dict[str, str],
                 overrides: Iterable[str], job_num: int | None = None, sweep_dir: str | None = None,
                 extra_tags: Iterable[str] = ()) -> dict[str, Any]:
    """W&B name / group / job_type / tags of a job from its config and Hydra's choices.

    name: the choices that differ (`mixture=final`) and the stage, e.g. `mixture=final · all` (`demo · all`);
    job_type: the stage(s) run (`ingest+mix+train+eval+report` for stage=all); group: the experiment or sweep;
    tags: stage, each choice as `k=v`, `sweep:<folder>` for a multirun job.
    """
    overrides = list(overrides)
    stages_run = [s for s in stages_run] or [stage]
    job_type = "+".join(stages_run) if stage == "all" else stage
    job_type = job_type if len(job_type) <= 64 else job_type[:63] + "~"  # W&B's limit
    tag = run_tag(choices, overrides)
    name = f"{tag or group} · {stage}"
    if job_num is not None:
        name = f"{job_num}: {name}"
    tags = [f"stage={stage}"] + [f"{k}={choices[k]}" for k in TAG_GROUPS if k in choices]
    if sweep_dir:
        tags.append(f"sweep={Path(sweep_dir).name}")
    tags += [str(t) for t in extra_tags]
    tags = [t if len(t) <= 64 else t[:63] + "~" for t in dict.fromkeys(tags)]  # W&B: tags of at most 64 chars
    return {"name": name, "group": group, "job_type": job_type, "tags": tags, "tag": tag}


def hydra_job(with_sweep_dir: bool = False) -> dict[str, Any]:
    """Choices, overrides, job number and sweep folder of the running Hydra job ({} outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:  # composed outside a Hydra app (tests)
        return {}
    from omegaconf import OmegaConf

    def get(path: str, default: Any = None) -> Any:
        try:  # the sweep's launcher resolves the sweep folder before job.num / output_dir exist
            v = OmegaConf.select(hc, path, default=default, throw_on_missing=False)
            return default if v is None else v
        except Exception:
            return default

    choices = {k: str(v) for k, v in (get("runtime.choices", {}) or {}).items()
               if not str(k).startswith("hydra/") and v is not None}
    choices.pop("base_config", None)
    multirun = get("mode") == RunMode.MULTIRUN
    num = get("job.num")
    return {"choices": choices, "overrides": [str(o) for o in (get("overrides.task", []) or [])],
            "job_num": int(num) if multirun and num is not None and str(num).isdigit() else None,
            # (resolving the sweep folder resolves `${group}`: only once the job runs, never from a resolver)
            "sweep_dir": str(get("sweep.dir")) if multirun and with_sweep_dir else None, "multirun": multirun}


def default_group() -> str:
    """`group` when no experiment preset sets it: `demo` for the demo's choices, `sweep` for a multirun, else
    `custom` (a run with other choices is not filed under the demo)."""
    job = hydra_job()
    if not job:
        # A multirun's launcher resolves the sweep folder (`.../multirun/${group}/...`) before any job, without a
        # Hydra config to ask: the command line says whether this is a multirun.
        argv = sys.argv[1:]
        if Path(sys.argv[0]).name == "launch.py" and ({"-m", "--multirun", "hydra.mode=MULTIRUN"} & set(argv)):
            return "sweep"
        return "demo"
    if job["multirun"]:
        return "sweep"
    defaults = default_choices()
    differs = [k for k in NAME_GROUPS if k in job["choices"] and job["choices"][k] != defaults.get(k)]
    return "custom" if differs else "demo"


def folder_tag() -> str:
    """`_mixture-final` for the run folder name (empty for the defaults): the resolver `${aloe.run_tag:}`."""
    job = hydra_job()
    if not job:
        return ""
    tag = run_tag(job["choices"], job["overrides"], max_len=80, folder=True)
    return f"_{tag}" if tag else ""


# ---- W&B mode ----------------------------------------------------------------------------------------------------
def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text() or (
            bool(os.environ.get("WANDB_BASE_URL")) and _host(os.environ["WANDB_BASE_URL"]) in netrc.read_text())
    except OSError:
        return False


def _host(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).split("/")[0].split(":")[0]


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the W&B server? (Compute nodes often have no internet.)"""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = _host(url)
    port = int(url.rsplit(":", 1)[1].split("/")[0]) if re.search(r":\d+(/|$)", url.split("://", 1)[-1]) else (
        80 if url.startswith("http://") else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        if not wandb_has_credentials():
            return "offline"
        if not wandb_reachable():
            log.warning("W&B: credentials found but %s is unreachable; logging offline (upload later with "
                        "`wandb sync`)", os.environ.get("WANDB_BASE_URL", "api.wandb.ai"))
            return "offline"
        return "online"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"wandb.mode={mode!r}: use auto, online, offline or disabled")
    if mode == "online" and not wandb_reachable():
        log.warning("W&B: wandb.mode=online but %s is unreachable; logging offline (upload later with `wandb sync`)",
                    os.environ.get("WANDB_BASE_URL", "api.wandb.ai"))
        return "offline"
    return mode


# ---- the tracker -------------------------------------------------------------------------------------------------
class Tracker:
    """W&B run + run record for one job. `finish(status)` closes both (status finished | failed | interrupted)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict,
        choices: dict[str, str],
        overrides: list[str],
        wandb_cfg: dict,
        group: str,
        job_type: str,
        name: str | None = None,
        tags: list[str] | None = None,
        enabled: bool = True,
    ):
        """`enabled=False` (non-main ranks of a multi-process job): no W&B run, no run record; rank 0 owns both."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Every value that must never be written: credentials in the environment, in the config and in overrides.
        self.secrets = env_secrets() | collect_secrets(config) | collect_secrets(list(overrides)) | collect_secrets(
            list(sys.argv))
        previous = self._previous_record() if enabled else {}
        self.attempt = int(previous.get("attempts", 0)) + 1
        # The one step axis. A resumed job continues after the last step it logged (W&B keeps a resumed run's
        # counter there; anything logged below it would be dropped).
        self.resume_floor = max([int((previous.get("wandb") or {}).get("last_step") or 0)]
                                + [int(r.get("step") or 0) for r in self.step_history()]) if previous else 0
        self.step = self.resume_floor + 1 if self.resume_floor else 0
        self.record: dict[str, Any] = {
            # The same run id across requeues / reruns of this folder: W&B resumes the run instead of opening another.
            "run_id": previous.get("run_id") or _new_run_id(),
            "name": name or self.run_dir.name,
            "group": group,
            "job_type": job_type,
            "status": "running",
            "started": previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S"),
            "attempts": self.attempt,
            "choices": choices,
            "overrides": scrub(list(overrides), self.secrets),
            "command": scrub_text(" ".join(sys.argv), self.secrets),
            "config": scrub(config, self.secrets),
            "metrics": dict(previous.get("metrics") or {}) if previous else {},
            "stages": dict(previous.get("stages") or {}) if previous else {},
            "paths": {"run_dir": str(self.run_dir)},
            # Where the job ran: SLURM ids trace a run back to its job (and array task) in sacct / submitit logs.
            "slurm": {k.lower(): os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                                          "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT")
                      if k in os.environ},
            "wandb": {"tags": list(tags or []), "last_step": self.resume_floor},
        }
        if previous:
            self.record["previous_attempts"] = (previous.get("previous_attempts") or []) + [
                {k: previous.get(k) for k in ("status", "started", "finished", "error") if previous.get(k)}]
        self.run = None
        self.interrupt_reason: str | None = None
        if enabled:
            scrub_folder(self.run_dir, self.secrets)  # Hydra's .hydra/*.yaml and config.yaml, written before us
            self._save()  # the run id is on disk before W&B starts: a job killed during init resumes the same run
            self._start_wandb(wandb_cfg, group, job_type, name, tags)
        self._save()

    def _previous_record(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / RUN_RECORD).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    # ---- W&B -------------------------------------------------------------------------------------------------
    def _start_wandb(self, wcfg: dict, group: str, job_type: str, name: str | None, tags: list[str] | None) -> None:
        try:
            mode = resolve_mode(wcfg.get("mode", "auto"))
        except ValueError as e:
            log.warning("%s; W&B disabled for this job", e)
            mode = "disabled"
        self.record["wandb"]["mode"] = mode
        if mode == "disabled":
            return
        argv = sys.argv
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            wdir = Path(wcfg.get("dir") or self.run_dir)
            wdir.mkdir(parents=True, exist_ok=True)
            top = dict(self.record["choices"])
            all_tags = list(wcfg.get("tags") or []) + list(tags or []) or [f"{k}={v}" for k, v in sorted(top.items())]
            # W&B records the command line (wandb-metadata.json, the run's Overview): it must not carry a secret.
            sys.argv = [scrub_text(a, self.secrets) for a in argv]
            self.run = wandb.init(
                project=wcfg.get("project"),
                entity=wcfg.get("entity"),
                group=group,
                job_type=job_type,
                name=scrub_text(name or self.run_dir.name, self.secrets),
                id=self.record["run_id"],
                resume="allow",
                tags=[scrub_text(t, self.secrets)[:64] for t in dict.fromkeys(all_tags)],
                config={**top, "stage": job_type, "experiment": group, "cfg": self.record["config"]},
                dir=str(wdir),
                mode=mode,
                reinit="finish_previous",  # one W&B run per job, also inside one multirun process
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=60),
            )
            self.record["wandb"].update({"id": self.run.id, "dir": str(Path(self.run.dir).parent)})
            if self.attempt > 1:
                log.info("W&B: resuming run %s (attempt %d), steps continue after %d", self.run.id, self.attempt,
                         self.step)
        except Exception as e:  # W&B must never block or fail the job
            log.warning("W&B could not start (%s); continuing with the run record only", e)
            self.run = None
        finally:
            sys.argv = argv

    def _wandb(self, fn: str, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            getattr(self.run, fn)(*args, **kwargs)
        except Exception as e:
            log.warning("W&B %s failed (%s); continuing", fn, e)

    # ---- logging API -------------------------------------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """`step`: the training step these values belong to (the one axis; must not go back). Without a step the
        values join the current step and never advance it (W&B would otherwise drop every later, lower step)."""
        if step is None:
            self._wandb("log", metrics, step=self.step, commit=False)
            return
        step = int(step)
        if step < self.step or (self.attempt > 1 and step <= self.resume_floor):
            # A resumed job re-trains the steps after its last checkpoint: those steps are already logged.
            return
        self.step = step
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.enabled and scalars:
            with open(self.run_dir / STEP_LOG, "a") as f:
                f.write(json.dumps({"step": step, "attempt": self.attempt, **scalars}) + "\n")
            self.record["wandb"]["last_step"] = step
        self._wandb("log", metrics, step=step)

    def step_history(self) -> list[dict[str, Any]]:
        """Every step's training scalars over all attempts (the first value of a step wins)."""
        rows, seen = [], set()
        try:
            lines = (self.run_dir / STEP_LOG).read_text().splitlines()
        except OSError:
            return rows
        for line in lines:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            if r.get("step") not in seen:
                seen.add(r.get("step"))
                rows.append(r)
        return rows

    def summary(self, metrics: dict[str, Any]) -> None:
        """Final metrics: W&B summary and the run record. After a resume, `train/train_loss` (the Trainer's mean
        over ITS OWN steps) is recomputed over every step of the run."""
        metrics = dict(metrics)
        if self.attempt > 1 and "train/train_loss" in metrics:
            losses = [r["train/loss"] for r in self.step_history() if isinstance(r.get("train/loss"), (int, float))]
            if losses:
                metrics["train/train_loss_this_attempt"] = metrics["train/train_loss"]
                metrics["train/train_loss"] = sum(losses) / len(losses)
                metrics["train/logged_steps"] = len(losses)
        self.record["metrics"].update(metrics)
        if self.run is not None:
            try:
                self.run.summary.update(metrics)
            except Exception as e:
                log.warning("W&B summary failed (%s)", e)
        self._save()

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is None:
            return
        try:
            import wandb

            rows = [[scrub_text(c, self.secrets) if isinstance(c, str) else c for c in r] for r in rows]
            self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=self.step, commit=False)
        except Exception as e:
            log.warning("W&B table %s failed (%s)", key, e)

    def image(self, key: str, path: str | Path, caption: str | None = None) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)}, step=self.step, commit=False)
        except Exception as e:
            log.warning("W&B image %s failed (%s)", key, e)

    def mark_interrupted(self, reason: str) -> None:
        """A stage that stops early on a signal and returns normally (e.g. training saving a checkpoint on SIGTERM)
        says so here: the job is then recorded `interrupted`, with `reason`, not `finished`."""
        self.interrupt_reason = reason

    def stage_report(self, stage: str, report: dict[str, Any]) -> None:
        self.record["stages"][stage] = scrub(report, self.secrets)
        self._save()

    def add_paths(self, **paths: str) -> None:
        self.record["paths"].update({k: str(v) for k, v in paths.items()})
        self._save()

    def finish(self, status: str = "finished", error: BaseException | str | None = None) -> None:
        """Close the run: status finished | failed | interrupted; a failed or interrupted run records why."""
        self.record["status"] = status
        self.record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if error is not None:
            msg = error if isinstance(error, str) else (f"{type(error).__name__}: {error}".rstrip(": ")
                                                        if str(error) else type(error).__name__)
            self.record["error"] = scrub_text(msg, self.secrets)[:4000]
        else:
            self.record.pop("error", None)
        self._save()
        if self.run is not None:
            try:
                if error is not None:
                    self.run.summary.update({"error": self.record["error"]})
                self.run.finish(exit_code={"finished": 0, "interrupted": 255}.get(status, 1))
            except Exception as e:
                log.warning("W&B finish failed (%s)", e)
            self.run = None
        if self.enabled:
            # Everything in the run folder (W&B's own files included) once more, now that every writer is done.
            scrub_folder(self.run_dir, self.secrets)
            sweep_file = self.run_dir.parent / "multirun.yaml"
            if sweep_file.is_file():
                scrub_folder_file(sweep_file, self.secrets)

    def _save(self) -> None:
        if not self.enabled:
            return
        write_json_atomic(self.run_dir / RUN_RECORD, self.record)


def scrub_folder_file(path: Path, secrets: Iterable[str]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    new = scrub_text(text, secrets)
    if new != text:
        tmp = path.with_name(f".{path.name}.scrub-{os.getpid()}")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, path)


def _new_run_id() -> str:
    import secrets as _s

    return "".join(_s.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))


# ---- a job's tracker from its config -----------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, preemption, a timeout's kill) raised in the main thread: an interruption, like Ctrl-C."""


def status_of(exc: BaseException | None) -> str:
    """finished | interrupted (Ctrl-C, SIGTERM) | failed (anything else, a SystemExit with a message included)."""
    if exc is None:
        return "finished"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "finished"
    if _from_submitit(exc):  # SLURM preemption / timeout: submitit requeued the job (sys.exit(-1)) or gave up
        return "interrupted"
    return "failed"


def _from_submitit(exc: BaseException) -> bool:
    """Raised by submitit's signal handler (requeue after preemption / timeout, or UncompletedJobError)?"""
    if type(exc).__name__ == "UncompletedJobError":
        return True
    tb = exc.__traceback__
    while tb is not None:
        if "/submitit/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def start_tracker(cfg, run_dir: str | Path, stages_run: Iterable[str], *, enabled: bool = True) -> Tracker:
    """The job's Tracker with its identity (name, group, job_type, tags) computed from the config and Hydra."""
    from omegaconf import OmegaConf

    job = hydra_job(with_sweep_dir=True)
    # A report run files itself under the group it reports on (its table sits beside the runs in W&B).
    group = cfg.report.group if cfg.stage == "report" and cfg.report.group else cfg.group
    ident = run_identity(stage=cfg.stage, stages_run=stages_run, group=group, choices=job.get("choices", {}),
                         overrides=job.get("overrides", []), job_num=job.get("job_num"),
                         sweep_dir=job.get("sweep_dir"))
    return Tracker(run_dir, config=OmegaConf.to_container(cfg, resolve=True), choices=job.get("choices", {}),
                   overrides=job.get("overrides", []), wandb_cfg=OmegaConf.to_container(cfg.wandb, resolve=True),
                   group=group, job_type=ident["job_type"], name=ident["name"], tags=ident["tags"], enabled=enabled)


def close_tracker(tracker: Tracker, exc: BaseException | None) -> None:
    """Record how the job ended: finished, interrupted (with the signal) or failed (with the error)."""
    status = status_of(exc)
    if status == "finished" and tracker.interrupt_reason:
        status, exc = "interrupted", tracker.interrupt_reason
    if status == "interrupted" and isinstance(exc, SystemExit):
        exc = "SLURM preemption / timeout: submitit requeued the job (it resumes in this folder)"
    tracker.finish(status, error=None if status == "finished" else exc)


def sweep_job_dirs(sweep_dir: str | Path) -> list[Path]:
    """A sweep's job folders in job order: `<n>` or `<n>_<choices that differ>` (e.g. `0_mixture-final`)."""
    found = []
    for p in Path(sweep_dir).iterdir():
        num = p.name.split("_", 1)[0]
        if p.is_dir() and num.isdigit():
            found.append((int(num), p))
    return [p for _, p in sorted(found)]
