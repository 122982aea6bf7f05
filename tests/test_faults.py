"""Fault tests: one slide's failure of any kind is that slide's (item 2 of issue 16), a full disk is one
clear error and leaves no incomplete output set (item 4), two runs into one folder (item 8)."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import pytest

from conftest import phantom_image, tumour_geojson, write_pyramid_tiff
from h2gnet.cli import main
from h2gnet.errors import H2GNetError

pytest.importorskip("onnx")
from tiny_models import tiny_patch_model, tiny_refiner


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three small annotated slides (a, b, c), a manifest and a tiny patch model."""
    root = tmp_path_factory.mktemp("faults")
    rows = ["slide,annotation,grade,split"]
    for i, name in enumerate("abc"):
        write_pyramid_tiff(root / f"{name}.tiff", phantom_image(1024, 768, seed=i)[0], 0.5, (1, 4))
        tumour_geojson(root / f"{name}.geojson", (512, 384), 110)
        rows.append(f"{name}.tiff,{name}.geojson,2,test")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    tiny_patch_model(root / "patch.onnx")
    return root


def _status(out: Path) -> dict[str, dict]:
    with open(out / "status.csv", newline="") as fh:
        return {Path(r["slide"]).stem: r for r in csv.DictReader(fh)}


# -- item 2: any exception in one slide's work is that slide's failure -----------------------------
def test_segment_memory_error_fails_one_slide_only(cohort: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import h2gnet.infer.segment as seg

    real = seg.tissue_for

    def exploding(slide, *a, **k):
        if slide.name == "b":
            raise MemoryError("Unable to allocate 11.0 GiB")
        return real(slide, *a, **k)

    monkeypatch.setattr(seg, "tissue_for", exploding)
    out = tmp_path / "out"
    code = main(["-q", "segment", str(cohort / "a.tiff"), str(cohort / "b.tiff"), str(cohort / "c.tiff"),
                 "--no-refine", "--patch-model", str(cohort / "patch.onnx"), "-o", str(out)])
    assert code == 1
    status = _status(out)
    assert status["a"]["status"] == status["c"]["status"] == "done"
    assert status["b"]["status"] == "failed" and "MemoryError" in status["b"]["error"]
    assert not list(out.glob("b.*")) and (out / "c.json").is_file()
    assert "Traceback" not in capsys.readouterr().err


def test_index_cohort_malformed_geometry_fails_one_slide_only(cohort: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": [1, 2, 3], "properties": {}}]}))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,annotation,grade,split\n{cohort / 'a.tiff'},{bad},2,train\n"
                        f"{cohort / 'b.tiff'},{cohort / 'b.geojson'},2,train\n")
    code = main(["-q", "patches", str(manifest), "-o", str(tmp_path / "idx")])
    err = capsys.readouterr().err
    assert code == 1 and "bad.geojson" in err and "Traceback" not in err
    assert (tmp_path / "idx" / "b.patches.parquet").is_file()
    assert not (tmp_path / "idx" / "a.patches.parquet").exists()


def test_heatmap_cohort_unexpected_error_fails_one_slide_only(cohort: Path, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    import h2gnet.infer.heatmap as hm

    real = hm.compute_heatmap

    def exploding(slide, *a, **k):
        if slide.name == "a":
            raise ValueError("a library's own error on a malformed input")
        return real(slide, *a, **k)

    monkeypatch.setattr(hm, "compute_heatmap", exploding)
    code = main(["-q", "heatmap", str(cohort / "manifest.csv"), "--patch-model", str(cohort / "patch.onnx"),
                 "-o", str(tmp_path / "heat")])
    err = capsys.readouterr().err
    assert code == 1 and "a.tiff: ValueError: a library's own error" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "heat").glob("*.tiff")) == ["b.heatmap.tiff", "c.heatmap.tiff"]


def test_evaluate_one_bad_annotation_scores_the_others(cohort: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    assert main(["-q", "segment", str(cohort / "manifest.csv"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(pred)]) == 0
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1e6, 0], [0, 1e6], [0, 0]]]}))
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,annotation,grade,split\n" + "".join(
        f"{cohort / f'{n}.tiff'},{bad if n == 'b' else cohort / f'{n}.geojson'},2,test\n" for n in "abc"))
    capsys.readouterr()
    code = main(["-q", "evaluate", str(manifest), "--predictions", str(pred), "-o", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 1 and "bad.geojson" in err
    with open(tmp_path / "ev" / "slides.csv", newline="") as fh:
        assert sorted(r["slide"] for r in csv.DictReader(fh)) == ["a", "c"]


def test_keyboard_interrupt_still_stops_the_cohort(cohort: Path, tmp_path: Path, monkeypatch) -> None:
    import h2gnet.infer.segment as seg

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(seg, "segment_slide", interrupted)
    assert main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(tmp_path / "out")]) == 130


# -- item 4: a full disk ---------------------------------------------------------------------------
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_one_clear_error_and_no_incomplete_set(cohort: Path, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    import h2gnet.infer.segment as seg
    from h2gnet.io.atomic import atomic_path

    def geojson_on_full_disk(path, *a, **k):  # the writer runs out of space half-way through the file
        with atomic_path(path) as tmp:
            tmp.write_text('{"type": "FeatureCollection", "features": [')
            _enospc()

    monkeypatch.setattr(seg, "write_geojson", geojson_on_full_disk)
    out = tmp_path / "out"
    code = main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(out)])
    assert code == 1
    error = _status(out)["a"]["error"]
    assert "no space left" in error and str(out) in error and "a.geojson" in error and "needed more than" in error
    assert sorted(p.name for p in out.iterdir()) == ["status.csv"]  # no mask without its JSON, no .part
    monkeypatch.undo()
    assert main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(out)]) == 0  # space freed: the rerun completes the set
    assert {"a.mask.tiff", "a.geojson", "a.json"} <= {p.name for p in out.iterdir()}


def test_full_disk_in_pytorch_save_names_the_disk(tmp_path: Path, monkeypatch) -> None:
    from h2gnet.io import atomic

    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 1024)
    with (pytest.raises(H2GNetError, match="no space left on the device while writing model.pt") as info,
          atomic.atomic_path(tmp_path / "run" / "model.pt") as tmp):
        tmp.write_bytes(b"x" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4160 vs 4054")
    assert str(tmp_path / "run") in str(info.value) and "needed more than 4.1 KB" in str(info.value)
    assert list((tmp_path / "run").iterdir()) == []


def test_full_disk_at_the_cli_top_level_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from h2gnet import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "y.png"))

    monkeypatch.setattr(cli, "_cmd_synth", full)
    assert main(["synth", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and str(tmp_path / "x") in err[0]


# -- item 8: two runs into one folder ----------------------------------------------------------------
def test_second_run_into_a_held_folder_is_refused(cohort: Path, tmp_path: Path, capsys) -> None:
    import socket
    import subprocess
    import sys

    from h2gnet.io.lock import LOCK_FILE

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                 "started": "now", "command": "segment"}))
        code = main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                     str(cohort / "patch.onnx"), "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"PID {holder.pid}" in err and "in use" in err and str(out) in err
        assert not (out / "a.json").exists() and not (out / "status.csv").exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_and_orphans_of_a_killed_run_are_taken_over(cohort: Path, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from h2gnet.io.lock import LOCK_FILE

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID is no longer running: a run killed with kill -9
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    orphan = out / ".a.mask.0123456789ab.part.tiff"
    orphan.write_bytes(b"half a mask")
    (out / "status.csv").write_text("slide,status,seconds,error\nsomewhere/z.tiff,done,1.00,\n")
    with pytest.warns(UserWarning, match=f"stale lock of PID {dead.pid}"):
        code = main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                     str(cohort / "patch.onnx"), "-o", str(out)])
    assert code == 0 and not orphan.exists() and not (out / LOCK_FILE).exists()
    assert set(_status(out)) == {"a", "z"}  # the earlier run's rows are kept


def test_lock_held_on_another_host_is_respected(tmp_path: Path) -> None:
    from h2gnet.io.lock import LOCK_FILE, folder_lock

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "heatmap"}))
    with pytest.raises(H2GNetError, match="PID 1 on elsewhere.example"), folder_lock(tmp_path):
        pass


# -- item 9: the outputs of an earlier run --------------------------------------------------------------
def test_corrupt_status_csv_is_set_aside(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "status.csv").write_bytes(b"\x00\xffgarbage,,\n\"unterminated")
    with pytest.warns(UserWarning, match="status.csv: unreadable"):
        assert main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                     str(cohort / "patch.onnx"), "-o", str(out)]) == 0
    assert _status(out)["a"]["status"] == "done" and (out / "status.csv.corrupt").exists()


def test_folder_named_like_the_summary_does_not_mark_the_slide_done(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a.json").mkdir(parents=True)
    code = main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(out)])
    assert code == 1 and _status(out)["a"]["status"] == "failed"  # not 'skipped: already done'
    # and a summary whose outputs are gone is not 'done' either
    out2 = tmp_path / "out2"
    args = ["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model", str(cohort / "patch.onnx"),
            "-o", str(out2)]
    assert main(args) == 0
    (out2 / "a.mask.tiff").unlink()
    assert main(args) == 0 and _status(out2)["a"]["status"] == "done" and (out2 / "a.mask.tiff").exists()


# -- item 3 and 7: wrong results are never marked done ---------------------------------------------------
@pytest.mark.parametrize("kind,message", [("nan", "non-finite"), ("raw", "not probabilities")])
def test_model_with_bad_outputs_fails_the_slide(cohort: Path, tmp_path: Path, kind: str, message: str) -> None:
    model = tiny_patch_model(tmp_path / f"{kind}.onnx", nan=kind == "nan", raw=kind == "raw")
    out = tmp_path / "out"
    assert main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model", str(model),
                 "-o", str(out)]) == 1
    row = _status(out)["a"]
    assert row["status"] == "failed" and message in row["error"] and f"{kind}.onnx" in row["error"]
    assert sorted(p.name for p in out.iterdir()) == ["status.csv"]


def test_cached_heatmap_of_another_slide_is_refused(cohort: Path, tmp_path: Path) -> None:
    heat = tmp_path / "heat"
    assert main(["-q", "heatmap", str(cohort / "manifest.csv"), "--patch-model", str(cohort / "patch.onnx"),
                 "-o", str(heat)]) == 0
    other = tmp_path / "big.tiff"  # another scan named like slide a, of another size
    write_pyramid_tiff(other, phantom_image(1280, 768)[0], 0.5, (1, 4))
    (tmp_path / "cached").mkdir()
    (heat / "b.heatmap.tiff").replace(tmp_path / "cached" / "big.heatmap.tiff")
    out = tmp_path / "out"
    assert main(["-q", "segment", str(other), "--no-refine", "--patch-model", str(cohort / "patch.onnx"),
                 "--heatmaps", str(tmp_path / "cached"), "-o", str(out)]) == 1
    assert "another slide" in _status(out)["big"]["error"]


def test_canvas_limit_refuses_before_work_and_can_be_raised(cohort: Path, tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    monkeypatch.setenv("H2GNET_MAX_CANVAS_GB", "2")  # restored after the test (the CLI option sets it)
    args = ["tissue", str(cohort / "a.tiff"), "-o", str(tmp_path / "m.png")]
    assert main(["-q", "--max-canvas-gb", "1e-6", *args]) == 2
    err = capsys.readouterr().err
    assert "a.tiff" in err and "GB limit" in err and "--max-canvas-gb" in err
    assert not (tmp_path / "m.png").exists()
    assert main(["-q", "--max-canvas-gb", "1", *args]) == 0


def test_refiner_returning_nan_fails_the_slide(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "segment", str(cohort / "a.tiff"), "--patch-model", str(cohort / "patch.onnx"),
                 "--refine-model", str(tiny_refiner(tmp_path / "r.onnx", nan=True)), "-o", str(out)]) == 1
    row = _status(out)["a"]
    assert row["status"] == "failed" and "r.onnx" in row["error"] and "non-finite" in row["error"]
    assert sorted(p.name for p in out.iterdir()) == ["status.csv"]


def test_a_working_refiner_segments(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "segment", str(cohort / "a.tiff"), "--patch-model", str(cohort / "patch.onnx"),
                 "--refine-model", str(tiny_refiner(tmp_path / "r.onnx")), "-o", str(out)]) == 0
    assert (out / "a.json").is_file() and (out / "a.mask.tiff").is_file()


# -- issue 25 item 4: messages tried with bad inputs and faults ------------------------------------------
def test_full_disk_while_taking_the_lock_names_the_folder_and_leaves_no_lock(cohort: Path, tmp_path: Path,
                                                                             monkeypatch, capsys) -> None:
    """Was: ``error: .: no space ... while writing ?`` with another disk's free space, and a 0-byte lock."""
    import types

    from h2gnet.io import lock

    monkeypatch.setattr(lock, "json", types.SimpleNamespace(dump=_enospc, loads=json.loads))
    out = tmp_path / "out"
    code = main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {out}: no space left on the device while writing {lock.LOCK_FILE}")
    assert not (out / lock.LOCK_FILE).exists()  # no empty lock left for the next run to stumble on
    assert not (out / "a.json").exists()


def test_full_disk_error_without_a_file_name_names_no_other_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    from h2gnet import cli

    monkeypatch.setattr(cli, "_cmd_synth", _enospc)  # an OSError that names no file
    monkeypatch.chdir(tmp_path)
    assert main(["synth", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device" in err[0]
    assert not err[0].startswith("error: .:") and "writing ?" not in err[0] and "free;" not in err[0]


def test_output_name_taken_by_a_folder_is_named_not_a_raw_oserror(cohort: Path, tmp_path: Path) -> None:
    """Was ``IsADirectoryError: [Errno 21] ...`` in status.csv for any output but the summary."""
    out = tmp_path / "out"
    (out / "a.mask.tiff").mkdir(parents=True)
    code = main(["-q", "segment", str(cohort / "a.tiff"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(out)])
    error = _status(out)["a"]["error"]
    assert code == 1 and error == f"{out / 'a.mask.tiff'}: is a folder where the slide's mask should be written; " \
                                  "move it away"
    assert not (out / "a.json").exists() and not (out / "a.geojson").exists()


def test_atomic_write_onto_a_folder_is_one_clear_error(tmp_path: Path) -> None:
    from h2gnet.io.atomic import write_text

    (tmp_path / "x.json").mkdir()
    with pytest.raises(H2GNetError, match="is a folder where this output file should be written") as info:
        write_text(tmp_path / "x.json", "{}")
    assert info.value.path == str(tmp_path / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temporary file left


def _held_by_a_live_process(folder: Path, command: str):
    import socket
    import subprocess
    import sys

    from h2gnet.io.lock import LOCK_FILE

    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (folder / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                "started": "now", "command": command}))
    return holder


def test_second_evaluate_into_a_held_folder_is_refused(cohort: Path, tmp_path: Path, capsys) -> None:
    predictions = tmp_path / "pred"
    assert main(["-q", "segment", str(cohort / "manifest.csv"), "--no-refine", "--patch-model",
                 str(cohort / "patch.onnx"), "-o", str(predictions)]) == 0
    out = tmp_path / "evaluation"
    holder = _held_by_a_live_process(out, "evaluate")
    try:
        capsys.readouterr()
        code = main(["-q", "evaluate", str(cohort / "manifest.csv"), "--predictions", str(predictions),
                     "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"PID {holder.pid}" in err and "in use" in err and str(out) in err
        assert not (out / "slides.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match="stale lock"):  # the holder is gone: its lock is taken over
        assert main(["-q", "evaluate", str(cohort / "manifest.csv"), "--predictions", str(predictions),
                     "-o", str(out)]) == 0
    assert (out / "slides.csv").exists() and not (out / ".h2gnet.lock").exists()


def test_second_training_into_a_held_run_folder_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from h2gnet.train.config import PatchTrainConfig
    from h2gnet.train.patch_classifier import train_patch_classifier
    from h2gnet.train.run_state import TrainingRun

    run = tmp_path / "run"
    holder = _held_by_a_live_process(run, "train-patch")
    try:
        cfg = PatchTrainConfig(manifest=str(tmp_path / "m.csv"), index_dir=str(tmp_path / "index"))
        with pytest.raises(H2GNetError, match=f"PID {holder.pid} .*train-patch"):
            train_patch_classifier(run, cfg)  # refused before the manifest or the index is read
        assert sorted(p.name for p in run.iterdir()) == [".h2gnet.lock"]
        with pytest.raises(H2GNetError, match="is in use"), TrainingRun(run, cfg).held("train-refine"):
            pass
        with TrainingRun(run, cfg).held("train-patch", writer=False):  # ranks > 0 of torchrun take no lock
            pass
    finally:
        holder.kill()
        holder.wait()


def test_refiner_output_of_another_size_is_said(cohort: Path, tmp_path: Path) -> None:
    """Was stretched back to the input's grid silently."""
    half = tiny_refiner(tmp_path / "half.onnx", halve=True)
    with pytest.warns(UserWarning, match=rf"{half}: the refiner returned a 16×16 px output for its 32×32 px input"):
        code = main(["-q", "segment", str(cohort / "a.tiff"), "--patch-model", str(cohort / "patch.onnx"),
                     "--refine-model", str(half), "-o", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "a.mask.tiff").exists()
