"""Run folders shared by both training stages: config, CSV log, checkpoints, resume, metrics.

A run folder holds ``config.json`` (the settings), ``log.csv`` (one row per epoch), the checkpoints
``checkpoint_last.pt`` / ``checkpoint_best.pt`` and, at the end, ``model.onnx`` and ``metrics.json``.

Checkpoints hold **tensors only** and are read with ``torch.load(weights_only=True)``, so a run folder
written by someone else can never run code here (a pickle with a ``__reduce__`` payload is refused with an
error). The last checkpoint also holds PyTorch's RNG state (a byte tensor), so a resumed run draws what an
uninterrupted one would (the data streams are seeded per epoch). Everything that is not a tensor (the epoch,
the best validation loss, the optimiser's hyper-parameters) is JSON: stored in the checkpoint as a UTF-8 byte
tensor, so one atomic file is the whole state even after a kill mid-save, and written beside it as
``checkpoint_*.json`` for people and tools.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import pickle
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from h2gnet import __version__
from h2gnet.conventions import METRICS_FILE
from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import atomic_path, write_text
from h2gnet.io.lock import folder_lock

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
#: Config fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"epochs", "total_steps", "workers", "progress", "threads", "patience"}
#: Key of the JSON state (UTF-8 bytes as a uint8 tensor) inside a checkpoint.
STATE_KEY = "__state_json__"


# -- checkpoints: tensors only ----------------------------------------------------------------
def _split(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of ``obj`` with every tensor moved into ``tensors`` (replaced by its key)."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):  # optimiser state: param ids
            return {"__int_keys__": {str(k): _split(v, f"{key}/{k}", tensors) for k, v in obj.items()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a checkpoint holds tensors and JSON values, not {type(obj).__name__} ({key})")


def _join(obj: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    """Inverse of :func:`_split`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            if obj["__tensor__"] not in tensors:
                raise H2GNetError(path, f"is incomplete: tensor {obj['__tensor__']!r} is missing")
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__int_keys__"}:
            return {int(k): _join(v, tensors, path) for k, v in obj["__int_keys__"].items()}
        if set(obj) == {"__tuple__"}:
            return tuple(_join(v, tensors, path) for v in obj["__tuple__"])
        return {k: _join(v, tensors, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors, path) for v in obj]
    return obj


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write ``state`` (tensors in dicts/lists of JSON values) as a tensors-only checkpoint,
    and its JSON part beside it (``NAME.json``). A kill mid-write never corrupts the previous one."""
    tensors: dict[str, torch.Tensor] = {}
    meta = _split(state, "", tensors)
    text = json.dumps(meta, indent=1)
    tensors[STATE_KEY] = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)
    write_text(path.with_suffix(".json"), text + "\n")


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, loading tensors only (no code runs).

    Checkpoints of earlier versions (a plain dict of tensors and numbers) are read too, still weights-only.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise H2GNetError(path, "no such checkpoint") from None
    except pickle.UnpicklingError:
        raise H2GNetError(path, "holds Python objects, not only tensors; h2gnet never runs code from a "
                                "checkpoint: delete it (or use --overwrite) to restart") from None
    except Exception as exc:  # a truncated checkpoint from a hard kill, or not a checkpoint at all
        raise H2GNetError(path, f"unreadable checkpoint ({type(exc).__name__}); delete it to restart") \
            from None
    if not isinstance(data, dict):
        raise H2GNetError(path, "is not an h2gnet checkpoint")
    if STATE_KEY not in data:  # earlier format: everything in one dict, loaded weights-only above
        if "model" not in data or "epoch" not in data:
            raise H2GNetError(path, "is not an h2gnet checkpoint")
        return data
    raw = data.pop(STATE_KEY)
    if not all(isinstance(v, torch.Tensor) for v in data.values()) or raw.dtype != torch.uint8:
        raise H2GNetError(path, "is not an h2gnet checkpoint")
    try:
        meta = json.loads(bytes(raw.numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise H2GNetError(path, "has a corrupt state record; delete it to restart") from None
    state = _join(meta, data, path)
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise H2GNetError(path, "is not an h2gnet checkpoint")
    return state


# -- the run folder ---------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a run stands: epochs done, best validation loss so far and its epoch."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0


class TrainingRun:
    """One training run's folder, for both trainers: check, resume, per-epoch log and checkpoints, metrics.

    Creating it only reads (a bad folder fails before any work); :meth:`begin` writes ``config.json``.
    A folder whose checkpoint was made with other settings is refused unless ``overwrite``.
    """

    def __init__(self, run_dir: str | Path, config: Any, *, overwrite: bool = False) -> None:
        self.dir = Path(run_dir)
        self.overwrite = overwrite
        #: True on the ranks > 0 of a torchrun training: they resume and follow the progress, rank 0 writes
        self.read_only = False
        self.config = json.loads(json.dumps({**asdict(config), "h2gnet_version": __version__}, default=str))
        if self.dir.exists() and not self.dir.is_dir():
            raise H2GNetError(self.dir, "is a file; a run folder is needed")
        self._last: dict | None = None
        last = self.dir / LAST_CHECKPOINT
        if overwrite or not last.exists():
            return  # nothing to resume: a config.json left by a failed start is simply replaced
        cfg_path = self.dir / CONFIG_FILE
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise H2GNetError(self.dir, f"has a checkpoint but no {CONFIG_FILE}; use another output folder "
                                        "or --overwrite") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise H2GNetError(cfg_path, f"is not valid JSON ({exc}); use another output folder or "
                                        "--overwrite") from None
        if not isinstance(old, dict):
            raise H2GNetError(cfg_path, "is not a run configuration (a JSON object)")
        ignored = RESUMABLE_CHANGES | {"h2gnet_version"}
        # a setting added after the run was made (absent from its config.json) had its default then
        defaults = json.loads(json.dumps({f.name: f.default for f in fields(config) if f.default is not MISSING},
                                         default=str))
        diff = sorted(k for k in self.config if k not in ignored
                      and old.get(k, defaults.get(k)) != self.config[k])
        if diff:
            raise H2GNetError(self.dir, f"holds a run with other settings ({', '.join(diff)}); "
                                        "use another output folder or --overwrite")
        self._last = load_checkpoint(last)

    @contextlib.contextmanager
    def held(self, command: str, *, writer: bool = True) -> Iterator[None]:
        """Hold the run folder for this run (``.h2gnet.lock``, :func:`h2gnet.io.lock.folder_lock`): a second
        training into the same folder stops with an error naming this one. Only the ``writer`` takes it (rank 0
        of a torchrun training holds it for all ranks)."""
        if not writer:
            yield
            return
        new = not self.dir.exists()
        try:
            with folder_lock(self.dir, command):
                yield
        except BaseException:
            if new and self.dir.is_dir() and not any(self.dir.iterdir()):
                self.dir.rmdir()  # refused before any work (a bad --init, say): leave no empty run folder behind
            raise

    def begin(self) -> None:
        """Create the folder and write ``config.json`` (with ``overwrite``, first drop the old run's files)."""
        if self.read_only:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise H2GNetError(self.dir, f"cannot create the run folder ({exc.strerror or exc})") from None
        if self.overwrite:
            for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
                (self.dir / name).unlink(missing_ok=True)
                (self.dir / name).with_suffix(".json").unlink(missing_ok=True)
            (self.dir / LOG_FILE).unlink(missing_ok=True)
        write_text(self.dir / CONFIG_FILE, json.dumps(self.config, indent=2, default=str))

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
        """Load the last checkpoint into ``model`` and ``optimizer``; the progress to continue from."""
        if self._last is None:
            return Progress()
        ckpt = self._last
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise H2GNetError(self.dir / LAST_CHECKPOINT,
                              f"does not fit this model ({str(exc).splitlines()[0]})") from None
        if isinstance(ckpt.get("torch_rng"), torch.Tensor):  # dropout etc. continue as if never interrupted
            torch.set_rng_state(ckpt["torch_rng"])
        epoch = int(ckpt["epoch"])
        progress = Progress(epoch, float(ckpt["best_val_loss"]), int(ckpt.get("best_epoch", epoch)))
        if not self.read_only:
            truncate_log(self.dir, epoch)
        return progress

    def end_epoch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                  row: dict) -> bool:
        """Record one finished epoch: the best checkpoint if ``row["val_loss"]`` improved, a log row
        (``epoch``, ``row``…, ``best``), then the last checkpoint. Updates ``progress``; True if improved."""
        epoch = progress.epoch + 1
        improved = row["val_loss"] < progress.best_val_loss
        progress.epoch = epoch
        if improved:
            progress.best_val_loss, progress.best_epoch = float(row["val_loss"]), epoch
        if self.read_only:
            return improved
        if improved:
            save_checkpoint(self.dir / BEST_CHECKPOINT, {"model": model.state_dict(), "epoch": epoch})
        append_log(self.dir, {"epoch": epoch, **row, "best": int(improved)})
        save_checkpoint(self.dir / LAST_CHECKPOINT, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                     "torch_rng": torch.get_rng_state(), **asdict(progress)})
        return improved

    def load_best(self, model: torch.nn.Module) -> int:
        """Load the best checkpoint's weights into ``model``; returns its epoch."""
        best = load_checkpoint(self.dir / BEST_CHECKPOINT)
        model.load_state_dict(best["model"])
        return int(best["epoch"])

    def write_metrics(self, metrics: dict) -> None:
        """``metrics.json``: the run's final figures."""
        if self.read_only:
            return
        write_text(self.dir / METRICS_FILE, json.dumps(metrics, indent=2))


# -- log ----------------------------------------------------------------------------------------
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


def read_log(run_dir: str | Path) -> list[dict]:
    """The rows of a run's ``log.csv`` (strings), oldest first; empty if there is none."""
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


def set_threads(threads: int | None) -> None:
    """Limit PyTorch's intra-op threads (None: PyTorch's default)."""
    if threads:
        torch.set_num_threads(int(threads))
