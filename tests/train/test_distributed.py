"""Training on several processes (DDP, gloo on 127.0.0.1): one step equals one big batch; torchrun runs."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from h2gnet.train import distributed  # noqa: E402
from h2gnet.train.distributed import DistContext, rank_seed, split_steps  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_context_without_torchrun(monkeypatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.distributed_run() as ctx:
        assert ctx == DistContext() and ctx.is_main and not ctx.distributed
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, ctx) is model and distributed.unwrap(model) is model
    assert distributed.all_sum([1.0, 2.0], ctx) == [1.0, 2.0]


def test_rank_seeds_and_step_shares() -> None:
    assert rank_seed(7, 0) == 7  # a one-process run draws today's stream
    seeds = {rank_seed(7, r) for r in range(8)}
    assert len(seeds) == 8 and rank_seed(7, 1) == rank_seed(7, 1) != rank_seed(8, 1)
    shares = [split_steps(5, DistContext(rank=r, world_size=2)) for r in (0, 1)]
    assert shares == [3, 2]


def _step_worker(rank: int, world: int, port: int, init: dict, x: torch.Tensor, y: torch.Tensor,
                 out: str) -> None:
    """One DDP training step of the patch trainer on this rank's share of (x, y); rank 0 saves the weights."""
    from h2gnet.train.patch_classifier import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.distributed_run() as ctx:
        model = _tiny_net()
        model.load_state_dict(init)
        ddp = distributed.wrap(model, ctx)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-2)
        share = len(x) // world
        train_step(ddp, optimizer, x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share], None)
        if ctx.is_main:
            torch.save(distributed.unwrap(ddp).state_dict(), out)


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))


@pytest.mark.slow
def test_one_ddp_step_of_two_ranks_equals_one_batch_of_eight(tmp_path: Path, torch_one_thread) -> None:
    from h2gnet.train.patch_classifier import train_step

    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 16, 16, generator=gen), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    init = _tiny_net().state_dict()
    single = _tiny_net()
    optimizer = torch.optim.Adam(single.parameters(), lr=1e-2)
    train_step(single, optimizer, x, y, None)

    out = tmp_path / "rank0.pt"
    ctx = torch.multiprocessing.start_processes(_step_worker, args=(2, _free_port(), init, x, y, str(out)),
                                                nprocs=2, join=False, start_method="spawn")
    end = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < end, "the 2-process step did not finish in 120 s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    ddp_weights = torch.load(out, weights_only=True)
    changed = False
    for name, w in single.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], w, rtol=1e-5, atol=1e-6)
        changed |= not torch.equal(w, init[name])
    assert changed  # the step moved the weights: the comparison is not between two untouched models


@pytest.mark.slow
def test_torchrun_two_processes_train_and_export(mini_cohort: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    run = tmp_path / "ddp-run"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "h2gnet", "-q", "train-patch", str(mini_cohort / "manifest.csv"),
           "--index", str(mini_cohort / "index"), "-o", str(run), "--epochs", "2", "--steps", "2", "--val-steps", "2",
           "--batch-size", "4", "--input-size", "64", "--workers", "0", "--threads", "1"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model: ") == 1  # only rank 0 reports
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: np.random.rand(2, 3, 64, 64).astype(np.float32)})[0]
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-4)
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 3 and "world_size" in log[0]  # header + 2 epochs, written once (rank 0)
    # resume: a third epoch on top of the two, still with 2 processes
    result = subprocess.run([*cmd[:cmd.index("--epochs") + 1], "3", *cmd[cmd.index("--epochs") + 2:]], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((run / "log.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_torchrun_two_processes_train_refine(mini_cohort: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    run = tmp_path / "ddp-refine"
    script = tmp_path / "refine.py"  # the library call (the CLI has no --filters for a tiny network)
    script.write_text(
        "import sys\n"
        "from h2gnet.train.refiner import RefineTrainConfig, train_refiner\n"
        f"cfg = RefineTrainConfig(manifest={str(mini_cohort / 'manifest.csv')!r}, heatmaps=None, arch='unet-lr',\n"
        "                        input_size=256, epochs=2, batch_size=1, accumulation=2,\n"
        "                        filters=(4, 8, 8, 8, 8, 8, 8, 16),\n"
        "                        threads=1, progress=False)\n"
        f"metrics = train_refiner({str(run)!r}, cfg)\n"
        "print('val dice', metrics['val_dice'])\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(script)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("val dice") == 2  # both ranks return the metrics rank 0 wrote
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.random.rand(1, 3, 256, 256).astype(np.float32)})[0]
    assert out.shape[0] == 1 and np.isfinite(out).all()
    rows = list(csv.DictReader(io.StringIO((run / "log.csv").read_text())))
    assert [r["world_size"] for r in rows] == ["2", "2"]  # two epochs, written once (rank 0), world size 2
