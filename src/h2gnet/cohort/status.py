"""``status.csv``: one row per slide (done / failed with the error / skipped), rewritten as each slide ends."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from h2gnet.io.atomic import write_text

FIELDS = ("slide", "status", "seconds", "error")


class StatusTable:
    """The status table of an output folder; rows of earlier runs are kept (keyed by slide as given)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, str]] = {}
        if self.path.exists():
            self.rows = {r["slide"]: {k: r.get(k) or "" for k in FIELDS}
                         for r in csv.DictReader(io.StringIO(self.path.read_text()))}

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
