"""The checkpoint-on-signal callback with real signals delivered to this process (no Trainer needed): the flag is
set by the handler, the step end asks the Trainer to save and stop, the signal then goes to its previous owner
(submitit's requeue handler in a SLURM job), a second Ctrl-C aborts at once, and the time interval asks for saves."""

from __future__ import annotations

import os
import signal
import time

import pytest
from transformers import TrainerControl

from aloevision.training.interrupt import CheckpointOnSignal, Interrupted


def _step(cb: CheckpointOnSignal) -> TrainerControl:
    return cb.on_step_end(None, None, TrainerControl())


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_signal_saves_stops_and_goes_to_the_previous_handler(sig):
    seen = []
    before = signal.signal(sig, lambda s, f: seen.append(s))  # e.g. submitit's checkpoint_and_try_requeue
    try:
        cb = CheckpointOnSignal().install()
        control = _step(cb)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), sig)
        assert cb.received == sig and seen == []  # only recorded: nothing heavy inside the handler
        control = _step(cb)
        assert control.should_save and control.should_training_stop and cb.stopped_by == sig
        with pytest.raises(Interrupted) as exit_:
            cb.forward()
        assert exit_.value.code == 128 + sig and seen == [sig]
        assert signal.getsignal(sig) is not cb._on_signal  # uninstalled
    finally:
        signal.signal(sig, before)


def test_ctrl_c_saves_then_interrupts_and_a_second_ctrl_c_aborts():
    cb = CheckpointOnSignal().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert cb.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        control = _step(cb)
        assert control.should_save and control.should_training_stop
        with pytest.raises(KeyboardInterrupt):
            cb.forward()
    finally:
        cb.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ranks_agree_through_the_reduction():
    """A rank that did not see the signal stops at the same step as the one that did (MAX over ranks)."""
    other_rank_flags = [signal.SIGUSR2, 0]
    cb = CheckpointOnSignal(reduce=lambda mine: [max(a, b) for a, b in zip(mine, other_rank_flags)])
    control = _step(cb)
    assert control.should_save and control.should_training_stop and cb.stopped_by == signal.SIGUSR2


def test_time_interval_asks_for_a_checkpoint():
    cb = CheckpointOnSignal(interval_s=0.05)
    assert not _step(cb).should_save
    time.sleep(0.06)
    control = _step(cb)
    assert control.should_save and not control.should_training_stop and cb.saves_on_interval == 1
    cb.on_save(None, None, control)
    assert not _step(cb).should_save  # the clock restarts at each save
