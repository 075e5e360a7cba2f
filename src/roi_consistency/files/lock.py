"""One run per checkpoint path: `train` holds a lock file beside --save while it runs, so a second run
writing the same checkpoint is refused instead of the two overwriting each other's epochs.

The lock holds the owner's pid and host. A lock whose process is gone (on this host) is taken over,
with a note; one from another host cannot be checked from here, so it is refused with how to clear it.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from roi_consistency.errors import UserError


def lock_path(save: str | Path) -> Path:
    return Path(f"{save}.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    def __init__(self, save: str | Path):
        self.path, self.held = lock_path(save), False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._take_over_or_refuse()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another run started at the same moment
            raise UserError(f"--save {self.path.with_suffix('')}: another run just took {self.path}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        self.held = True
        return self

    def _take_over_or_refuse(self) -> None:
        try:
            pid_text, host = self.path.read_text().split()[:2]
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, host = None, socket.gethostname()  # unreadable: left half-written by a killed process
        save = str(self.path)[: -len(".lock")]
        if pid is not None and host != socket.gethostname():
            raise UserError(f"--save {save}: a run on {host} (pid {pid}) holds {self.path}; if it is not running, "
                            "delete that file")
        if pid is not None and _alive(pid):
            raise UserError(f"--save {save}: another run (pid {pid}) is writing this checkpoint; wait for it, or "
                            "pick another --save")
        print(f"note: taking over {self.path}, left by a run that is no longer running"
              + (f" (pid {pid})" if pid is not None else ""), file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
