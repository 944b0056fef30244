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

terminate_as_interrupt() makes SIGTERM to the command itself a Ctrl-C.

stop_with_parent() leaves the same notice in a joblib worker (launcher=joblib) whose sweep driver is gone:
loky passes no signal on to its workers, so a driver stopped with SIGTERM or SIGKILL would otherwise leave
them training their runs to the end, holding the cores a restarted sweep needs.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Preempted(KeyboardInterrupt):
    """A preemption or timeout notice arrived; the runs resume from their last epoch checkpoint."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's stop) to a command's own process: stopped as for Ctrl-C."""


PREEMPTED = "preempted: resuming from the last epoch checkpoint when requeued"
_noticed: str | None = None  # why training stops at the next step, once a notice has come
_parent_watched = False
_parent_gone = False


def _notice(signum, frame) -> None:
    global _noticed
    _noticed = PREEMPTED


def stop_if_noticed() -> None:
    """Called between steps: a plain module-global read, no device work."""
    if _noticed:
        raise Preempted(_noticed)


def stop_with_parent(poll_s: float = 1.0) -> bool:
    """In a process that multiprocessing started (a loky worker of launcher=joblib), a daemon thread watches the
    parent (the sweep's driver); once it has ended, training stops at its next step, as for a preemption notice,
    and the runs are recorded as interrupted, to resume when the sweep is run again. Nothing is added to the step.
    The thread polls the parent pid every `poll_s` seconds: an orphan is handed to another parent (init or a
    subreaper), and loky's workers have no parent sentinel to wait on. Once per process; False (nothing started)
    in a process of its own."""
    global _parent_watched
    if multiprocessing.parent_process() is None or _parent_watched:
        return _parent_watched
    _parent_watched = True
    threading.Thread(target=_watch_parent, args=(os.getppid(), poll_s), daemon=True, name="dnm-parent-watch").start()
    return True


def parent_gone() -> bool:
    """Whether stop_with_parent's watch has seen the parent end: nothing is left to hand this process's result to."""
    return _parent_gone


def _watch_parent(pid: int, poll_s: float) -> None:
    global _noticed, _parent_gone
    while os.getppid() == pid:
        time.sleep(poll_s)
    _parent_gone = True
    _noticed = (f"the sweep's driver process (pid {pid}) is gone: run the sweep again to resume from the last "
                "epoch checkpoint")
    log.warning("%s; stopping between two steps", _noticed)


def terminate_as_interrupt() -> None:
    """SIGTERM raises Terminated, so a command killed with it records its runs as interrupted, as for Ctrl-C,
    instead of ending at once with their summaries still saying "running". For the command's own process
    only: a submitit job's SIGTERM is submitit's, and a joblib worker is stopped by its pool."""
    def _terminated(signum, frame):
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, _terminated)


def notice_signal() -> signal.Signals:
    """The signal submitit's jobs get before preemption or timeout (SUBMITIT_PREEMPT_SIGNAL, USR2 by default)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


@contextmanager
def deferred(signum: int) -> Iterator:
    """Inside, `signum` only leaves a notice; yields the handler it replaced, restored on the way out."""
    global _noticed
    _noticed = None
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
