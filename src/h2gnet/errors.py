"""One exception type for bad input: it names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class H2GNetError(Exception):
    """A user-facing error: ``path`` (may be None) and a one-line ``problem``.

    The CLI prints ``error: <path>: <problem>`` and exits with status 2;
    it never shows a traceback for these.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def failure_reason(exc: BaseException, path: str | Path | None = None) -> str:
    """One line saying why a unit of work (one slide) failed, for status tables and logs.

    :class:`H2GNetError` keeps its message; anything else (a bug, ``MemoryError``, a
    library's exception on a malformed file) becomes ``Type: message`` on one line,
    so one slide's failure is recorded and the run goes on with the others. ``path`` (the slide)
    prefixes the reason of exceptions that do not name a file themselves.
    """
    if isinstance(exc, H2GNetError):
        return str(exc)
    if isinstance(exc, MemoryError):
        text = "out of memory (MemoryError): the slide needs more memory than is free"
    else:
        detail = " ".join(str(exc).split())[:300]
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return f"{path}: {text}" if path is not None else text
