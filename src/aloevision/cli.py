"""What launch.py runs once Hydra has composed the config: a quiet console, secrets kept out of every file and log
line, SIGTERM as an interruption, the pipeline, the summary."""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig

from aloevision.config import ConfigError

log = logging.getLogger(__name__)
STEP_LOGGER = "aloevision.steps"  # per-step training logs: the job's log file and W&B, not the console

# Library warnings a user cannot act on, filtered once at start (each used to repeat per batch / per process).
QUIET_WARNINGS = (
    r".*TOKENIZERS_PARALLELISM.*",
    r".*Using a slow image processor.*",
    r".*use_fast.*",
    r".*`torch_dtype` is deprecated.*",
    r".*torch.utils.checkpoint: the use_reentrant parameter.*",
    r".*None of the inputs have requires_grad=True.*",
    r".*The attention mask is not set.*",
    r".*Setting `pad_token_id` to `eos_token_id`.*",
    r".*generation flags are not valid.*",
    r".*pin_memory.*no accelerator is found.*",
    r".*Could not find a config file.*",
    r".*PyTorch-Lightning.*",
    r".*`max_length` is ignored when `padding`=`True`.*",  # 27x per demo eval (HEART batches)
)
QUIET_LOGGERS = ("transformers.tokenization_utils_base", "transformers.generation.utils", "transformers.modeling_utils",
                 "transformers.configuration_utils", "datasets", "urllib3", "PIL", "matplotlib", "filelock",
                 "huggingface_hub", "accelerate", "torch.distributed.elastic", "trl")


def quiet_libraries() -> None:
    """Filter library noise once, before any library is used (warnings that repeat per step or per process)."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|accelerate|datasets)\b.*")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import os

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "DS_ACCELERATOR" not in os.environ:  # DeepSpeed's "Setting accelerator to CPU ... unable to detect" line
        try:
            import torch

            if not torch.cuda.is_available():
                os.environ["DS_ACCELERATOR"] = "cpu"
        except Exception:
            pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # transformers missing: nothing to quiet
        pass


def scrub_log_records() -> None:
    """Every log record is created with secrets masked: Hydra's "Launching ... #0 : <overrides>" line, our own lines
    and library lines, on the console and in the log files. A record factory survives Hydra re-creating handlers."""
    from aloevision.tracking import collect_secrets, env_secrets, scrub_text

    secrets = env_secrets() | collect_secrets(list(sys.argv))
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_aloevision_scrub", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:
            return record
        clean = scrub_text(msg, secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        return record

    factory._aloevision_scrub = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class _NotSteps(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith((STEP_LOGGER, "aloevision.summary"))


def install_log_filters() -> None:
    """Per-step training lines and the summary's log copy kept off the console (they stay in the job's log file)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) and not any(isinstance(f, _NotSteps) for f in handler.filters):
            handler.addFilter(_NotSteps())


def quiet_training_progress() -> None:
    """The Trainer's progress bar stays; its per-step `{'loss': ...}` lines go to the log file (and W&B through the
    tracker) instead of stdout. `transformers.trainer.DEFAULT_PROGRESS_CALLBACK` is the library's hook for this."""
    try:
        import transformers.trainer as hf_trainer
        from transformers.trainer_callback import ProgressCallback
    except Exception:
        return

    class LogFileProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                logging.getLogger(STEP_LOGGER).info(
                    "step %d: %s", state.global_step,
                    {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"})

    hf_trainer.DEFAULT_PROGRESS_CALLBACK = LogFileProgress


def install_sigterm() -> None:
    """SIGTERM (scancel, a preemption, the kill after a timeout) raises in the main thread like Ctrl-C, so the run is
    recorded `interrupted` and cleanup runs. A handler someone else installed (submitit, the train stage) stays."""
    from aloevision.tracking import Terminated

    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            def _raise(signum, frame):
                raise Terminated(f"signal {signal.Signals(signum).name}")

            signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        pass


def scrub_hydra_files(cfg: DictConfig) -> None:
    """Hydra writes .hydra/{config,hydra,overrides}.yaml (and a sweep's multirun.yaml) before the job starts, with
    every override as typed: mask secrets there before anything else (also when the job then fails validation)."""
    from omegaconf import OmegaConf

    from aloevision.tracking import collect_secrets, env_secrets, scrub_folder, scrub_folder_file

    try:
        run_dir = Path(cfg.paths.output_dir)
    except Exception:
        return
    secrets = env_secrets() | collect_secrets(list(sys.argv)) | collect_secrets(
        OmegaConf.to_container(cfg, resolve=False))
    scrub_folder(run_dir / ".hydra", secrets)
    if (run_dir.parent / "multirun.yaml").is_file():
        scrub_folder_file(run_dir.parent / "multirun.yaml", secrets)


def run_from_hydra(cfg: DictConfig) -> None:
    from aloevision import pipeline
    from aloevision.summary import print_summary

    quiet_libraries()
    scrub_log_records()
    logging.getLogger("aloevision").setLevel(logging.INFO)
    install_log_filters()
    logging.getLogger(STEP_LOGGER).setLevel(logging.INFO)
    install_sigterm()
    scrub_hydra_files(cfg)
    if cfg.stage in ("all", "train"):
        quiet_training_progress()
    pipeline.set_cpu_threads(cfg)
    try:
        results = pipeline.run(cfg)
    except ConfigError as e:
        raise SystemExit(f"Config error: {e}") from None
    except KeyboardInterrupt as e:
        print_summary(cfg, {}, ended=f"interrupted ({e or 'Ctrl-C'})")
        raise SystemExit(130) from None
    except Exception as e:
        print_summary(cfg, {}, ended=f"failed: {type(e).__name__}: {e}")
        raise
    print_summary(cfg, results)
