"""One run per output folder: a lock file naming its owner (PID, host), stale locks taken over.

Two runs writing into one folder would compute every slide twice and the last writer of
``status.csv`` would drop the other's rows. :func:`folder_lock` makes the second run stop with one
clear error naming the owner. A lock whose process is gone (same host, PID not running: kill -9,
a crash, a reboot) is stale: the next run takes it over with a warning and removes the temporary
files the killed run left (:func:`h2gnet.io.atomic.remove_orphans`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import DISK_FULL_ERRNOS, disk_full_error, is_disk_full, remove_orphans

LOCK_FILE = ".h2gnet.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _stale(owner: dict | None) -> bool:
    """True when the lock's owner is certainly gone (unreadable lock, or a dead PID on this host)."""
    if owner is None:
        return True
    if owner.get("host") != socket.gethostname():
        return False  # cannot tell for another machine: its owner must remove it
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        return True
    return pid <= 0 or (pid != os.getpid() and not _pid_alive(pid))


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str = "h2gnet") -> Iterator[Path]:
    """Hold ``folder`` for this run: create it, write ``.h2gnet.lock`` (PID, host, start, command),
    remove orphaned temporary files, release on exit (also on errors and Ctrl-C).

    Raises :class:`H2GNetError` naming the folder and the owner when another live run holds it.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise H2GNetError(folder, f"output folder cannot be created ({exc.strerror or exc})") from None
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "command": command}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            owner = _read_owner(path)
            if owner == {}:
                continue  # released meanwhile: try again
            if owner is not None and not _stale(owner):
                raise H2GNetError(folder, f"is in use by PID {owner.get('pid')} on {owner.get('host')} "
                                          f"(`{owner.get('command', '?')}`, since {owner.get('started', '?')}); "
                                          f"wait for it, use another folder, or delete {LOCK_FILE} if that run "
                                          "is gone") from None
            warnings.warn(f"{folder}: taking over the stale lock of "
                          f"{'an unreadable owner' if owner is None else 'PID ' + str(owner.get('pid'))}"
                          " (that run is no longer running)", stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full_error(folder, path) from None
            raise H2GNetError(folder, f"output folder is not writable ({exc.strerror or exc})") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
        except OSError as exc:  # a full disk: leave no empty lock behind, name this folder and its free space
            with contextlib.suppress(OSError):
                path.unlink()
            if is_disk_full(exc, folder):
                raise disk_full_error(folder, path) from None
            raise H2GNetError(path, f"cannot write the lock file ({exc.strerror or exc})") from None
        break
    else:
        raise H2GNetError(folder, f"could not take {LOCK_FILE} (another run keeps taking it)")
    try:
        remove_orphans(folder)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            if _read_owner(path) == me:
                path.unlink()
