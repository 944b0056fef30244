"""A preemption notice (SLURM's signal through submitit) stops training between two steps, never inside one.

submitit's own handler checkpoints and exits from inside the signal handler, i.e. at whatever line the
training was on: between an epoch's metrics and its checkpoint, say, so that the requeued run starts
over, or inside a library's `finally`, which can turn the exit into an ordinary error, and the job ends
as failed instead of requeued. So a submitit job (a pack, or a single run of launcher=slurm) lets the
signal only leave a notice; training checks it after each step, raises Preempted (a KeyboardInterrupt:
the engine records its runs as interrupted, as for Ctrl-C), and the job hands over to submitit's handler
from there (`handing_over`).

interrupts_held() does the same for Ctrl-C around an epoch's bookkeeping, so that its files and its
W&B step are written together.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Preempted(KeyboardInterrupt):
    """A preemption or timeout notice arrived; the runs resume from their last epoch checkpoint."""


_noticed = False


def _notice(signum, frame) -> None:
    global _noticed
    _noticed = True


def stop_if_noticed() -> None:
    """Called between steps: a plain module-global read, no device work."""
    if _noticed:
        raise Preempted("preempted: resuming from the last epoch checkpoint when requeued")


def notice_signal() -> signal.Signals:
    """The signal submitit's jobs get before preemption or timeout (SUBMITIT_PREEMPT_SIGNAL, USR2 by default)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


@contextmanager
def deferred(signum: int) -> Iterator:
    """Inside, `signum` only leaves a notice; yields the handler it replaced, restored on the way out."""
    global _noticed
    _noticed = False
    previous = signal.signal(signum, _notice)
    try:
        yield previous
    finally:
        signal.signal(signum, previous)


def in_submitit_job() -> bool:
    """Whether this process is a submitit job (submitit sets SUBMITIT_EXECUTOR in the jobs it starts)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def handing_over(train: Callable[[], T], label: str) -> T:
    """Runs train() with the notice signal deferred. On a notice, once train() has stopped between two steps,
    calls the handler that was there (submitit's: checkpoint() and requeue, or end when no requeue is left; it
    exits); where there was none, Preempted goes on up as an interruption."""
    signum = notice_signal()
    with deferred(signum) as submitit_handler:
        try:
            return train()
        except Preempted:
            log.warning("%s: preemption or timeout notice; stopped between two steps, handing over to submitit to "
                        "requeue it", label)
    if callable(submitit_handler):
        submitit_handler(signum, None)
    raise Preempted("preempted outside a submitit job: run the same command again to resume")


@contextmanager
def interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (then act as they would have): an epoch's metrics.csv,
    summary, checkpoint and W&B step are written together, never cut between two of them. A handler, not a
    signal mask: a signal sent to the process may land on any of its threads (torch's, W&B's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # now handled as it would have been: KeyboardInterrupt for Ctrl-C
