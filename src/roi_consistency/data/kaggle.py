"""Downloads through kagglehub (cache root: $KAGGLEHUB_CACHE): a dataset, or a competition's data for an
account that accepted its rules. Offline, or on any kagglehub failure, the error says what to do instead.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

from roi_consistency.errors import UserError


def reachable(host: str = "api.kaggle.com", port: int = 443, timeout: float = 5.0) -> bool:
    """True if a TCP connection opens within `timeout`. Runs in a thread because DNS lookups ignore
    socket timeouts, and an offline user should hear 'no network' in seconds, not minutes. Behind a
    proxy a direct probe proves nothing, so then we let kagglehub try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1)
    return bool(ok)


def fetch(kind: str, handle: str, what: str, hint: str, dest: str | None = None, copy: bool = False) -> Path:
    """Download the Kaggle `kind` ("dataset" or "competition") `handle` and return its folder. With `dest`,
    the result is also made available there: a symlink by default, a full copy with `copy=True`. `hint`
    says what to do when the download fails."""
    def failed(reason: str) -> UserError:
        return UserError(f"could not download the Kaggle {kind} '{handle}' ({what}): {reason}.\n{hint}")
    if not reachable():
        raise failed("no network connection to api.kaggle.com")
    try:
        import kagglehub
        get = kagglehub.competition_download if kind == "competition" else kagglehub.dataset_download
        path = Path(get(handle))
    except Exception as exc:  # kagglehub raises many types (HTTP, auth, rules, disk); all end the same way
        raise failed(f"{type(exc).__name__}: {exc}") from None
    return path if dest is None else place(path, Path(dest), copy)


def place(path: Path, dest: Path, copy: bool) -> Path:
    """The downloaded folder at dest: a symlink, or a copy made beside it and moved in whole."""
    if dest.exists() or dest.is_symlink():
        if dest.resolve() == path.resolve():
            return dest
        raise UserError(f"--dest {dest} already exists; remove it or choose another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path, tmp, symlinks=True)
        os.replace(tmp, dest)
    else:
        dest.symlink_to(path.resolve(), target_is_directory=True)
    return dest
