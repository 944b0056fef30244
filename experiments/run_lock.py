"""One process trains a run folder at a time: a lock file per run folder, stale locks taken over.

Two launches of the same sweep at once (a second terminal, a resubmitted job) would otherwise both
train every run: twice the compute, epochs logged twice. The lock is `<run folder>/.lock`, created
with O_EXCL (atomic, also on NFS), holding the owner's host, pid and start time; the owner touches
it after every epoch. A lock is stale, and taken over with a warning, when its process is gone
(same host) or it has not been touched for DNM_LOCK_STALE_S seconds (another host; default 6 h). A lock
that cannot be read is one its owner is still writing (it exists from O_EXCL on, its record a moment later)
or one a process killed while writing it left: it is stale only once WRITE_GRACE_S old.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
DEFAULT_STALE_S = 6 * 3600
WRITE_GRACE_S = 10.0


class RunLocked(RuntimeError):
    """Another live process trains this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class RunLock:
    """The lock of one run folder, held by this process between acquire() and release()."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _owner(self) -> dict | None:
        """The lock's record; None when it cannot be one this class wrote (unreadable, half-written, damaged)."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or isinstance(owner["pid"], bool):
            return None
        return owner

    def _stale(self, owner: dict | None) -> bool:
        try:
            idle = time.time() - self.path.stat().st_mtime
        except OSError:
            return True
        if owner is None:
            # Taking over a lock whose owner has not yet written its record would let two processes train the run.
            return idle > WRITE_GRACE_S
        if owner.get("host") == socket.gethostname():
            return not _alive(owner["pid"])
        return idle > float(os.environ.get("DNM_LOCK_STALE_S", DEFAULT_STALE_S))

    def acquire(self) -> None:
        """Takes the lock (a stale one is taken over); RunLocked when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if not self._stale(owner):
                    who = ("its record is being written" if owner is None else
                           f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}")
                    raise RunLocked(f"{self.path.parent} is being trained by another process ({who}); leaving it to "
                                    f"that one (delete {self.path} if that process is gone)") from None
                log.warning("%s: taking over a stale lock (%s)", self.path.parent,
                            "unreadable" if owner is None else f"pid {owner.get('pid')} on {owner.get('host')}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}, f)
            self.held = True
            return
        raise RunLocked(f"{self.path.parent}: another process keeps taking its lock; try again")

    def touch(self) -> None:
        if self.held:
            os.utime(self.path)

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False
