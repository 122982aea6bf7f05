"""Write-to-temporary-then-rename, so no output is ever half-written.

A full disk (``ENOSPC``/``EDQUOT``, or a library's own wording of a failed write such as PyTorch's
"unexpected pos") becomes one :class:`H2GNetError` naming the folder, the free space and how much the
file had needed so far; the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from h2gnet.errors import H2GNetError

#: errno values that mean "the device (or the quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: How libraries that swallow the errno word a failed write (PyTorch's zip writer, ...).
WRITE_FAILED_MARKERS = ("unexpected pos", "file write failed", "iostream error", "no space left")
#: Free space below which an unexplained write failure is reported as a full disk, bytes.
LOW_SPACE = 64 << 20
#: Name prefix and infix of temporary files (``.NAME.<hex>.part.SUFFIX``): a later run removes orphans.
TEMP_PREFIX = "."
TEMP_INFIX = ".part"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the device holding ``folder`` (None when it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(folder: str | Path, final: str | Path, written: int = 0) -> H2GNetError:
    """The one-line error for a write that ran out of space: folder, file, space needed and free."""
    free = free_bytes(folder)
    need = f"it needed more than {_size(written)}" if written else "it needed more space"
    have = f"{_size(free)} free" if free is not None else "free space unknown"
    return H2GNetError(folder, f"no space left on the device while writing {Path(final).name}: {need}, {have}; "
                               "free some space (or choose another folder) and run again")


def disk_full_from(exc: OSError) -> H2GNetError:
    """The error for a full disk reported by an ``OSError`` that escaped every writer: its file and folder when
    the error names them, else no folder at all (rather than the current folder's free space, another disk's)."""
    if exc.filename is None:
        return H2GNetError(None, f"no space left on the device ({exc.strerror or exc}) while writing a file this "
                                 "error does not name; free some space (or choose another folder) and run again")
    final = Path(os.fsdecode(exc.filename))
    return disk_full_error(final.parent, final)


def is_disk_full(exc: BaseException, folder: str | Path) -> bool:
    """True when ``exc`` (from a write into ``folder``) means the disk or quota is full."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, (OSError, RuntimeError)):
        text = str(exc).lower()
        if any(marker in text for marker in WRITE_FAILED_MARKERS):
            free = free_bytes(folder)
            return free is None or free < LOW_SPACE or "no space" in text
    return False


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any exception the temporary file is removed and ``final`` is untouched.
    The temporary name keeps ``final``'s suffix so libraries that look at it
    (tifffile, OpenCV) pick the right format.
    """
    final = Path(final)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide the permissions (mkstemp would force 0600)
        tmp_path = parent / f"{TEMP_PREFIX}{final.stem}.{secrets.token_hex(6)}{TEMP_INFIX}{final.suffix}"
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(parent, final) from None
        raise H2GNetError(parent, f"cannot write here ({exc.strerror or exc})") from None
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException as exc:
        written = 0
        with contextlib.suppress(OSError):
            written = tmp_path.stat().st_size
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if is_disk_full(exc, parent):
            raise disk_full_error(parent, final, written) from None
        if isinstance(exc, IsADirectoryError) or (isinstance(exc, OSError) and final.is_dir()):
            raise H2GNetError(final, "is a folder where this output file should be written; move it away") from None
        raise


def write_text(final: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``final``."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(final: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``final``."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def stale_parts(final: str | Path) -> list[Path]:
    """Temporary files :func:`atomic_path` left beside ``final`` (a process killed mid-write)."""
    final = Path(final)
    pattern = re.compile(rf"^\.{re.escape(final.stem)}\.[0-9a-f]{{12}}\.part{re.escape(final.suffix)}$")
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.glob(f".{glob.escape(final.stem)}.*.part*") if pattern.match(p.name))


def remove_stale_parts(finals: Iterable[str | Path]) -> None:
    """Delete the temporary files a killed writer of ``finals`` left (before a slide is redone)."""
    for final in finals:
        for part in stale_parts(final):
            with contextlib.suppress(OSError):
                part.unlink()
def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove temporary files of :func:`atomic_path` left in ``folder`` by a killed run (kill -9, power
    loss); returns what was removed. Call it only while holding the folder (:mod:`h2gnet.io.lock`)."""
    removed = []
    for path in Path(folder).glob(f"{TEMP_PREFIX}*{TEMP_INFIX}*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                path.unlink()
                removed.append(path)
    for path in Path(folder).glob(".h2gnet-write-test-*"):
        with contextlib.suppress(OSError):
            path.unlink()
    return removed
