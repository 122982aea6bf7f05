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
