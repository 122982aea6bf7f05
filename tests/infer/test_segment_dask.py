"""``segment`` over a cohort on a Dask LocalCluster (127.0.0.1): identical outputs, a worker killed mid-run."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import deadline
from h2gnet.cli import main
from h2gnet.cohort import Engine, EngineConfig
from h2gnet.infer.segment import SegmentConfig, segment_many

pytest.importorskip("torch")  # the models are trained here; segmenting itself needs only ONNX Runtime
pytest.importorskip("distributed")


@pytest.mark.slow
def test_two_workers_write_byte_identical_outputs(mini_cohort: Path, patch_run: Path, tmp_path: Path) -> None:
    slides = [str(mini_cohort / f"s{i}.tiff") for i in range(4)]
    model = str(patch_run / "model.onnx")
    with deadline(240):
        assert main(["-q", "segment", *slides, "--patch-model", model, "--no-refine", "-o",
                     str(tmp_path / "local")]) == 0
        assert main(["-q", "segment", *slides, "--patch-model", model, "--no-refine", "-o",
                     str(tmp_path / "dask"), "--workers", "2"]) == 0
    for i in range(4):
        for suffix in (".mask.tiff", ".geojson"):
            a, b = tmp_path / "local" / f"s{i}{suffix}", tmp_path / "dask" / f"s{i}{suffix}"
            assert a.read_bytes() == b.read_bytes(), b.name
    rows = list(csv.DictReader(io.StringIO((tmp_path / "dask" / "status.csv").read_text())))
    assert sorted(r["slide"] for r in rows) == sorted(slides) and {r["status"] for r in rows} == {"done"}


@pytest.mark.slow
def test_killing_a_worker_loses_no_slide(mini_cohort: Path, patch_run: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "six"
    cohort.mkdir()
    slides = []
    for i in range(6):  # six slides: copies of the mini cohort's four
        slides.append(str(shutil.copy(mini_cohort / f"s{i % 4}.tiff", cohort / f"c{i}.tiff")))
    out = tmp_path / "out"
    cfg = SegmentConfig(patch_model=patch_run / "model.onnx", progress=False)
    killed: list[int] = []

    def kill_a_busy_worker(engine: Engine, pids: dict[str, int]) -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end and not killed:
            busy = [addr for addr, keys in engine.client.processing().items() if keys and addr in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])
            time.sleep(0.02)

    with deadline(240), Engine(EngineConfig(workers=2, retries=1)) as engine:
        pids = engine.worker_pids()
        assert len(pids) == 2 and os.getpid() not in pids.values()
        killer = threading.Thread(target=kill_a_busy_worker, args=(engine, pids), daemon=True)
        killer.start()
        status = segment_many(slides, out, cfg, engine=engine)
        killer.join(5)
    assert killed, "no worker was busy to kill"
    assert [status[s]["status"] for s in slides] == ["done"] * 6, status
    rows = list(csv.DictReader(io.StringIO((out / "status.csv").read_text())))
    assert sorted(r["slide"] for r in rows) == sorted(slides) and all(r["status"] == "done" for r in rows)
    for i in range(6):
        for suffix in (".mask.tiff", ".geojson", ".heatmap.tiff", ".overlay.png", ".json"):
            assert (out / f"c{i}{suffix}").is_file(), f"c{i}{suffix}"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left"
    # every slide is done exactly once: a rerun finds all six finished and redoes none
    with deadline(60):
        again = segment_many(slides, out, cfg)
    assert {v["status"] for v in again.values()} == {"skipped"}


@pytest.mark.slow
def test_heatmaps_and_evaluation_on_a_worker_match_in_process(mini_cohort: Path, patch_run: Path,
                                                              tmp_path: Path) -> None:
    from h2gnet.evaluation.predictions import evaluate_predictions
    from h2gnet.infer.heatmap import heatmap_cohort, load_heatmap
    from h2gnet.infer.runtime import OnnxModel
    from h2gnet.io.manifest import read_manifest

    entries = read_manifest(mini_cohort / "manifest.csv")
    model = OnnxModel(patch_run / "model.onnx", "patch-classifier")
    cfg = SegmentConfig(patch_model=patch_run / "model.onnx", progress=False)
    slides = [str(e.slide) for e in entries]
    assert not heatmap_cohort(entries, tmp_path / "heat-local", model, progress=False)
    segment_many(slides, tmp_path / "pred", cfg)
    local_rows = evaluate_predictions(entries, tmp_path / "pred", progress=False)
    with deadline(240), Engine(EngineConfig(workers=1)) as engine:
        assert not heatmap_cohort(entries, tmp_path / "heat-dask", model, progress=False, engine=engine)
        dask_rows = evaluate_predictions(entries, tmp_path / "pred", progress=False, engine=engine)
    assert json.dumps(dask_rows) == json.dumps(local_rows)  # NaN precision on an empty prediction too
    for e in entries:
        a, _ = load_heatmap(tmp_path / "heat-local" / f"{e.key}.heatmap.tiff")
        b, _ = load_heatmap(tmp_path / "heat-dask" / f"{e.key}.heatmap.tiff")
        assert (a.array == b.array).all()
    assert "done" in (tmp_path / "heat-dask" / "status.csv").read_text()
