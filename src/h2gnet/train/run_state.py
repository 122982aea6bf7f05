"""Run folders shared by both training stages: config, CSV log, checkpoints, resume."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from h2gnet import __version__
from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import atomic_path, write_text

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
#: Config fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"epochs", "workers", "progress", "threads", "patience"}


def prepare_run(run_dir: Path, config: Any, *, overwrite: bool = False) -> dict | None:
    """Create ``run_dir`` or check it for resumption; returns the last checkpoint, if any.

    A folder holding a run with a different configuration is refused (unless
    ``overwrite``), so a resumed run never mixes settings silently.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / CONFIG_FILE
    new = json.loads(json.dumps({**asdict(config), "h2gnet_version": __version__}, default=str))
    if cfg_path.exists() and not overwrite:
        old = json.loads(cfg_path.read_text())
        diff = sorted(k for k in new if k not in RESUMABLE_CHANGES | {"h2gnet_version"} and old.get(k) != new[k])
        if diff:
            raise H2GNetError(run_dir, f"holds a run with other settings ({', '.join(diff)}); "
                                       "use another output folder or --overwrite")
    elif overwrite:
        for name in (LAST_CHECKPOINT, BEST_CHECKPOINT, LOG_FILE):
            (run_dir / name).unlink(missing_ok=True)
    write_text(cfg_path, json.dumps(new, indent=2, default=str))
    last = run_dir / LAST_CHECKPOINT
    if last.exists():
        try:
            return torch.load(last, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated checkpoint from a hard kill
            raise H2GNetError(last, f"unreadable checkpoint ({type(exc).__name__}); delete it to restart") from None
    return None


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write a checkpoint (a kill mid-write never corrupts the previous one)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def append_log(run_dir: Path, row: dict) -> None:
    """Append one epoch's row to ``log.csv`` (header written with the first row)."""
    path = run_dir / LOG_FILE
    existing = path.read_text() if path.exists() else ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(row.keys()), lineterminator="\n")
    if not existing:
        writer.writeheader()
    writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, existing + out.getvalue())


def read_log(run_dir: Path) -> list[dict]:
    """The rows of a run's ``log.csv`` (empty when there is none)."""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text())))


def truncate_log(run_dir: Path, epochs_done: int) -> None:
    """Drop log rows past the last checkpointed epoch (after a kill between log and checkpoint)."""
    rows = read_log(run_dir)
    kept = [r for r in rows if int(r["epoch"]) <= epochs_done]
    if len(kept) != len(rows):
        (run_dir / LOG_FILE).unlink()
        for r in kept:
            append_log(run_dir, r)


def config_from_dict(cls: type, data: dict) -> Any:
    """A config dataclass from a dict, keeping only its fields."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))
