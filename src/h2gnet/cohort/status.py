"""``status.csv``: one row per slide (done / failed with the error / skipped), rewritten as each slide ends."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import write_text

FIELDS = ("slide", "status", "seconds", "error")


def read_status(path: str | Path) -> dict[str, dict[str, str]]:
    """The rows of a status table (slide as given -> its row), read only; a later row of the same slide wins.

    >>> rows = read_status("results/status.csv")  # doctest: +SKIP
    >>> rows["slides/a.svs"].get("status")  # doctest: +SKIP
    'done'

    An unreadable or malformed table is an :class:`H2GNetError` naming the file, its problem the reason.
    """
    path = Path(path)
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise ValueError(f"columns {reader.fieldnames}, expected {', '.join(FIELDS)}")
        rows = {}
        for r in reader:
            if None in r or not r["slide"]:
                raise ValueError(f"line {reader.line_num} is malformed")
            rows[r["slide"]] = {k: r.get(k) or "" for k in FIELDS}
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise H2GNetError(path, str(exc)) from None
    return rows


class StatusTable:
    """The status table of an output folder; rows of earlier runs are kept (keyed by slide as given)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, str]] = {}
        if self.path.exists():
            self.rows = self._read()

    def _read(self) -> dict[str, dict[str, str]]:
        """The rows of an earlier run; a corrupt table is set aside (``status.csv.corrupt``) with a warning
        and a new one started: the outputs themselves say which slides are done."""
        try:
            return read_status(self.path)
        except H2GNetError as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
            warnings.warn(f"{self.path}: unreadable ({exc.problem}); moved to {aside.name}, starting a new one",
                          stacklevel=3)
            return {}

    def record(self, slide: str, status: str, seconds: float = 0.0, error: str = "") -> dict[str, str]:
        """Set one slide's row (``seconds``: wall time of its task) and rewrite the file atomically."""
        row = {"slide": slide, "status": status, "seconds": f"{seconds:.2f}", "error": error}
        self.rows[slide] = row
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        write_text(self.path, buf.getvalue())
        return row
