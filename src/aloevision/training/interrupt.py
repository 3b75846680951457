"""Checkpoint before the job is lost: on SLURM's pre-timeout signal, on preemption / Ctrl-C, and on a time interval.

* SLURM sends `--signal=USR2@<signal_delay_s>` (submitit's flag, set from `hydra.launcher.signal_delay_s` in
  conf/cluster/*) to every task some minutes before the time limit; SIGTERM on preemption / scancel; SIGINT is
  Ctrl-C; SIGUSR1 for a plain `sbatch --signal=USR1@...` script. The handler only records the signal (nothing heavy
  inside a signal handler); at the end of the current optimizer step every rank agrees (an all-reduce of the flag, so
  no rank enters the checkpoint's collectives alone), the Trainer writes a normal checkpoint and stops.
* Afterwards `forward()` hands the signal to whoever had it before us: under submitit that is its handler, which
  requeues the job (rank 0) and exits; the requeued job lands in the same run folder and resumes from the checkpoint
  (tests/e2e/test_resume.py). Without a previous handler the process exits with 128 + signal number (130 for Ctrl-C).
* `interval_s`: a checkpoint whenever that long has passed since the last one (the 72B's 500 steps at ~90 s/step
  would be 12.5 h apart; a 24 h limit would lose up to that much).
A second Ctrl-C stops at once (KeyboardInterrupt), for a user who does not want to wait for the step to end.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Callable

from transformers import TrainerCallback

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
    """Training stopped on a signal after writing its checkpoint (an exit, not a failure of the code)."""


class CheckpointOnSignal(TrainerCallback):
    def __init__(self, *, interval_s: float | None = None, distributed: bool = False,
                 reduce: Callable[[list[int]], list[int]] | None = None):
        self.interval_s = interval_s
        self.distributed = distributed
        self._reduce = reduce
        self.received: int | None = None  # the first signal seen on this rank
        self.stopped_by: int | None = None  # the signal all ranks stopped for (set at a step end)
        self.saves_on_interval = 0
        self._last_save = time.monotonic()
        self._previous: dict[int, Any] = {}

    # -- the handler ------------------------------------------------------------------------------------------------
    def install(self) -> "CheckpointOnSignal":
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave the signals alone
                break
        return self

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT == self.received:
            raise KeyboardInterrupt  # second Ctrl-C: do not wait
        if self.received is None:
            self.received = signum
            log.warning("caught %s: writing a checkpoint at the end of this step, then stopping",
                        signal.Signals(signum).name)

    # -- the agreement at each step end ---------------------------------------------------------------------------
    def _agree(self, flags: list[int]) -> list[int]:
        if self._reduce is not None:
            return self._reduce(flags)
        if not self.distributed:
            return flags
        import torch
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(flags, dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(x) for x in t.tolist()]

    def on_step_end(self, args, state, control, **kwargs):
        due = int(bool(self.interval_s) and time.monotonic() - self._last_save >= float(self.interval_s))
        sig, due = self._agree([int(self.received or 0), due])
        if sig:
            self.stopped_by = sig
            self.received = self.received or sig  # a rank that missed the signal stops with the others
            control.should_save = True
            control.should_training_stop = True
        elif due:
            self.saves_on_interval += 1
            log.info("checkpoint: %.0f min since the last one (train.save_interval_min)", float(self.interval_s) / 60)
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self._last_save = time.monotonic()
        return control

    # -- after the Trainer returned -----------------------------------------------------------------------------
    def forward(self) -> None:
        """Give the signal to its previous owner (submitit: requeue + exit), else exit 128 + signum."""
        sig = self.stopped_by
        prev = self._previous.get(sig)
        self.uninstall()
        if sig == signal.SIGINT:
            raise KeyboardInterrupt
        if callable(prev):
            prev(sig, None)  # submitit: requeues (rank 0) and sys.exit(-1); other ranks return
        raise Interrupted(128 + int(sig))
