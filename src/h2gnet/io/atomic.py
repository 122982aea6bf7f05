"""Write-to-temporary-then-rename, so no output is ever half-written."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from h2gnet.errors import H2GNetError


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
        tmp_path = parent / f".{final.stem}.{secrets.token_hex(6)}.part{final.suffix}"
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise H2GNetError(parent, f"cannot write here ({exc.strerror or exc})") from None
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
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
