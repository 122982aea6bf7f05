"""Run folders: tensors-only checkpoints (no code from a run folder), resume, refusals."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from h2gnet.errors import H2GNetError  # noqa: E402
from h2gnet.train.config import PatchTrainConfig  # noqa: E402
from h2gnet.train.run_state import (  # noqa: E402
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    TrainingRun,
    load_checkpoint,
    read_log,
    save_checkpoint,
)


class _Payload:
    """A pickle that writes a marker file when it is loaded: what a hostile run folder would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _cfg(**kw) -> PatchTrainConfig:
    return PatchTrainConfig(manifest="m.csv", index_dir="index", **kw)


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(torch.randn(8, 3)).sum()
    loss.backward()
    optimizer.step()
    return model, optimizer


def _trained_run(run: Path, epochs: int = 2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model, optimizer = _model_and_optimizer()
    state = TrainingRun(run, _cfg())
    state.begin()
    progress = state.resume(model, optimizer)
    for loss in (0.5, 0.7)[:epochs]:
        state.end_epoch(model, optimizer, progress, {"train_loss": 1.0, "val_loss": loss})
    return model, optimizer


def test_checkpoint_round_trip_is_tensors_and_json(tmp_path: Path) -> None:
    model, optimizer = _trained_run(tmp_path / "run")
    run = tmp_path / "run"
    raw = torch.load(run / LAST_CHECKPOINT, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in raw.values())
    beside = json.loads((run / "checkpoint_last.json").read_text())
    assert beside["epoch"] == 2 and beside["best_epoch"] == 1 and beside["best_val_loss"] == 0.5
    assert beside["optimizer"]["param_groups"][0]["lr"] == 1e-3
    model2, optimizer2 = _model_and_optimizer()
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    progress = TrainingRun(run, _cfg(epochs=3)).resume(model2, optimizer2)  # epochs may change on resume
    assert (progress.epoch, progress.best_epoch, progress.best_val_loss) == (2, 1, 0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    s1, s2 = optimizer.state_dict(), optimizer2.state_dict()
    assert s1["param_groups"] == s2["param_groups"] and s1["state"].keys() == s2["state"].keys()
    for i in s1["state"]:
        assert all(torch.equal(s1["state"][i][k], s2["state"][i][k]) for k in s1["state"][i])
    assert [r["epoch"] for r in read_log(run)] == ["1", "2"]


@pytest.mark.parametrize("name", [LAST_CHECKPOINT, BEST_CHECKPOINT])
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_planted_malicious_checkpoint_runs_no_code(tmp_path: Path, name: str, how: str) -> None:
    run = tmp_path / "run"
    _trained_run(run)
    marker = tmp_path / "pwned.txt"
    if how == "torch.save":
        torch.save({"model": _Payload(marker), "epoch": 1}, run / name)
    else:
        (run / name).write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    model, optimizer = _model_and_optimizer()
    with pytest.raises(H2GNetError, match="never runs code") as err:
        state = TrainingRun(run, _cfg())
        state.resume(model, optimizer)
        state.load_best(model)
    assert name in str(err.value)
    assert not marker.exists()


def test_resumed_run_continues_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    def run(folder: Path, epochs: list[int]) -> torch.nn.Module:
        model = None
        for i, n in enumerate(epochs):  # each item: one process that runs n epochs and stops
            torch.manual_seed(0 if i == 0 else 99)  # a later process: another RNG state until resumed
            model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            state = TrainingRun(folder, _cfg(epochs=sum(epochs)))
            state.begin()
            progress = state.resume(model, optimizer)
            for _ in range(n):
                loss = model(torch.randn(16, 3)).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                state.end_epoch(model, optimizer, progress, {"val_loss": loss.item()})
        assert model is not None
        return model

    straight, resumed = run(tmp_path / "a", [3]), run(tmp_path / "b", [1, 2])
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_legacy_checkpoint_is_read_weights_only(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    path = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
                "best_val_loss": 0.25}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and set(state["model"]) == set(model.state_dict())


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(100)}, "epoch": 1})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(H2GNetError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_run_folder_refusals(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(H2GNetError, match="is a file"):
        TrainingRun(a_file, _cfg())
    run = tmp_path / "run"
    _trained_run(run)
    with pytest.raises(H2GNetError, match="other settings.*lr"):
        TrainingRun(run, _cfg(lr=1e-3))
    (run / CONFIG_FILE).write_text("{not json")
    with pytest.raises(H2GNetError, match=r"config\.json: is not valid JSON"):
        TrainingRun(run, _cfg())
    TrainingRun(run, _cfg(), overwrite=True).begin()  # --overwrite starts again
    assert not (run / LAST_CHECKPOINT).exists() and not read_log(run)


def test_a_failed_start_does_not_block_the_corrected_rerun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    TrainingRun(run, _cfg(lr=0.5)).begin()  # wrote config.json, then failed before the first epoch
    state = TrainingRun(run, _cfg())  # other settings, but nothing to resume: accepted
    state.begin()
    assert json.loads((run / CONFIG_FILE).read_text())["lr"] == 1e-4


def test_progress_defaults() -> None:
    model, optimizer = _model_and_optimizer()
    progress = TrainingRun(Path("/nonexistent/run"), _cfg()).resume(model, optimizer)
    assert progress.epoch == 0 and math.isinf(progress.best_val_loss)
