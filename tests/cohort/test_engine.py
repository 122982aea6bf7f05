"""The per-slide engine: in-process and on a Dask LocalCluster (127.0.0.1), status table, stale parts."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from conftest import deadline
from h2gnet.cli import main
from h2gnet.cohort import Engine, EngineConfig, SlideTask, StatusTable
from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import stale_parts, write_text


def _write_task(cache: dict, out: str, text: str) -> tuple[str, str]:
    """A task that counts its calls per process (in ``cache``) and writes ``text`` to ``out``."""
    cache["calls"] = cache.get("calls", 0) + 1
    if text == "bad":
        raise H2GNetError(out, "bad input")
    if text == "boom":
        raise RuntimeError("unexpected")
    if text == "die":  # a crashing decoder, the out-of-memory killer
        os.kill(os.getpid(), signal.SIGKILL)
    write_text(out, text)
    return "done", text


def _tasks(tmp_path: Path, texts: list[str]) -> list[SlideTask]:
    return [SlideTask(f"slide{i}", (str(tmp_path / f"s{i}.txt"), t), (str(tmp_path / f"s{i}.txt"),))
            for i, t in enumerate(texts)]


def test_in_process_outcomes_status_and_shared_cache(tmp_path: Path) -> None:
    # a stale temporary file of a killed writer is removed before its slide is redone
    stale = tmp_path / ".s0.0123456789ab.part.txt"
    stale.write_text("half")
    assert stale_parts(tmp_path / "s0.txt") == [stale]
    status = StatusTable(tmp_path / "status.csv")
    engine = Engine()
    with engine:
        out = engine.run(_write_task, _tasks(tmp_path, ["a", "bad", "c", "boom"]), progress=False,
                         on_end=lambda o: status.record(o.key, o.status, o.seconds, o.error))
    assert [o.status for o in out.values()] == ["done", "failed", "done", "failed"]
    assert out["slide3"].error == "RuntimeError: unexpected"  # any error of one slide is its failure
    assert "bad input" in out["slide1"].error and out["slide0"].value == "a"
    assert engine.cache["calls"] == 4  # one cache for the whole run
    assert not stale.exists() and (tmp_path / "s0.txt").read_text() == "a"
    again = StatusTable(tmp_path / "status.csv").rows
    assert again["slide1"]["status"] == "failed" and again["slide2"]["status"] == "done"


def test_worker_folder_probe_names_what_is_wrong(tmp_path: Path) -> None:
    from h2gnet.cohort.engine import _probe_folder

    (tmp_path / ".probe").write_bytes(b"")
    assert _probe_folder(str(tmp_path), ".probe") is None
    assert "does not see it" in _probe_folder(str(tmp_path), ".other-probe")  # another machine's folder
    if os.geteuid() != 0:  # root writes anywhere
        tmp_path.chmod(0o500)
        try:
            assert "cannot write it" in _probe_folder(str(tmp_path), ".probe")
        finally:
            tmp_path.chmod(0o700)


def test_config_is_validated() -> None:
    with pytest.raises(H2GNetError, match="not both"):
        EngineConfig(workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(H2GNetError, match=r"workers: must be an integer in \[0, 4096\] \(got -1\)"):
        EngineConfig(workers=-1)


@pytest.mark.slow
def test_local_cluster_failures_and_unexpected_errors(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    with deadline(120), Engine(EngineConfig(workers=2, retries=0)) as engine:
        assert len(engine.worker_pids()) == 2
        engine.check_output_folder(tmp_path)
        out = engine.run(_write_task, _tasks(tmp_path, ["a", "bad", "boom", "d"]), progress=False)
    assert engine.client is None  # closed
    assert [o.status for o in out.values()] == ["done", "failed", "failed", "done"]
    assert "bad input" in out["slide1"].error and "RuntimeError: unexpected" in out["slide2"].error
    assert (tmp_path / "s3.txt").read_text() == "d"


@pytest.mark.slow
def test_a_slide_that_kills_its_worker_fails_and_the_others_go_on(tmp_path: Path) -> None:
    dask = pytest.importorskip("dask")
    status = StatusTable(tmp_path / "status.csv")
    # the scheduler runs in this process: no second chance for a task whose worker died
    with deadline(120), dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            Engine(EngineConfig(workers=2, retries=0)) as engine:
        # six slides on 2 one-thread workers: queued on the scheduler, so the dying worker holds no other
        out = engine.run(_write_task, _tasks(tmp_path, ["a", "die", "c", "d", "e", "f"]), progress=False,
                         on_end=lambda o: status.record(o.key, o.status, o.seconds, o.error))
    assert [o.status for o in out.values()] == ["done", "failed", "done", "done", "done", "done"]
    assert "worker died" in out["slide1"].error
    rows = StatusTable(tmp_path / "status.csv").rows
    assert rows["slide1"]["status"] == "failed" and "worker died" in rows["slide1"]["error"]
    assert (tmp_path / "s5.txt").read_text() == "f"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path, capsys) -> None:
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{_free_port()}"
    with deadline(60), pytest.raises(H2GNetError, match="cannot reach the Dask scheduler") as err:
        Engine(EngineConfig(scheduler=address, connect_timeout=2)).__enter__()
    assert address in str(err.value)
    slide = tmp_path / "x.tiff"
    slide.write_bytes(b"")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    with deadline(60):
        code = main(["-q", "segment", str(slide), "--patch-model", str(model), "--no-refine", "-o",
                     str(tmp_path / "out"), "--scheduler", address, "--connect-timeout", "2"])
    assert code == 2
    err_text = capsys.readouterr().err
    assert address in err_text and "cannot reach the Dask scheduler" in err_text
