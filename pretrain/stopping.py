"""Stopping a run on a signal without losing the step it paid for.

SIGTERM (as sent by `timeout`, batch schedulers and torchrun) or a first Ctrl-C asks the loop to
finish the current step, save it and raise `Stopped`, whose `signum` gives the exit code
128 + signal number (pretrain/__main__.py); a second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("pretrain")  # the training loop's logger: one name for all its lines


class Stopped(KeyboardInterrupt):
    """The run stopped early on a signal, after saving its checkpoint: `--resume` continues it."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


class StopRequest:
    """SIGTERM or a first SIGINT asks the loop to stop at the end of the current step (so that
    it can save the step it paid for); a second SIGINT interrupts at once. Handlers can only be
    installed from the main thread: elsewhere (a notebook's worker thread) signals keep their
    usual meaning and only the periodic checkpoints protect the run."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: stopping after this step and saving a checkpoint (Ctrl-C again to "
                    "interrupt at once)", signal.Signals(signum).name)

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int):
    """DataLoader workers share the run's process group: Ctrl-C reaches them too, and so does
    SIGTERM from `timeout`, Slurm or `pkill -f`; a worker that exits on either would fail the
    step the main process is finishing to save. The main process stops them when it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
